package policy

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Rule is a compiled policy: self-contained (group members and file-type
// globs copied in), JSON-serialisable, checked against the registry it was
// compiled with.
type Rule struct {
	ID        uint64     `json:"id"` // assigned by whoever stores the rule; 0 from Compile
	Target    Target     `json:"target"`
	Where     []FileCond `json:"where,omitempty"` // all must hold
	When      *Cond      `json:"when,omitempty"`  // nil: a static rule
	Actions   []Action   `json:"actions"`         // the pipeline, in written order
	Transient bool       `json:"transient,omitempty"`
	Text      string     `json:"text"` // the policy as written
}

// Target is what a rule applies to.
type Target struct {
	Kind     TargetKind `json:"kind"`
	Tenant   string     `json:"tenant,omitempty"`
	Volume   string     `json:"volume,omitempty"`
	FileGlob string     `json:"file_glob,omitempty"`
	Group    string     `json:"group,omitempty"`
	// Members is the group's members at compile time: "tenant" or
	// "tenant/volume".
	Members []string `json:"members,omitempty"`
}

// FileCond is one WHERE condition on a file.
type FileCond struct {
	Field string   `json:"field"` // "file_type" or "file_size"
	Op    CmpOp    `json:"op"`
	Size  int64    `json:"size,omitempty"`  // file_size: bytes
	Set   string   `json:"set,omitempty"`   // file_type: the set's name ("" for a quoted glob)
	Globs []string `json:"globs,omitempty"` // file_type: lower-case globs
}

// Cond is a WHEN condition: a comparison (Metric set) or an AND / OR of
// conditions.
type Cond struct {
	And    []Cond  `json:"and,omitempty"`
	Or     []Cond  `json:"or,omitempty"`
	Metric string  `json:"metric,omitempty"`
	Op     CmpOp   `json:"op,omitempty"`
	Value  float64 `json:"value,omitempty"`
}

// Action is one SET: a filter and its canonical parameters (defaults filled
// in; numbers as decimal integers: sizes in bytes, rates per second).
type Action struct {
	Filter string            `json:"filter"`
	Params map[string]string `json:"params,omitempty"`
}

// Compile parses and compiles exactly one policy.
func Compile(text string, reg *Registry) (Rule, error) {
	p, err := Parse(text)
	if err != nil {
		return Rule{}, err
	}
	return CompilePolicy(p, reg)
}

// CompileAll parses and compiles a policy file; the first error stops it.
func CompileAll(text string, reg *Registry) ([]Rule, error) {
	ps, err := ParseAll(text)
	if err != nil {
		return nil, err
	}
	out := make([]Rule, 0, len(ps))
	for _, p := range ps {
		r, err := CompilePolicy(p, reg)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// CompilePolicy checks a parsed policy against the registry and makes its
// rule. Errors are *CompileError.
func CompilePolicy(p *Policy, reg *Registry) (Rule, error) {
	r := Rule{Transient: p.Transient, Text: p.Text}
	t := p.Target
	r.Target = Target{Kind: t.Kind, Tenant: t.Tenant, Volume: t.Volume, FileGlob: t.Glob, Group: t.Group}
	if t.Kind == TargetGroup {
		members, ok := reg.Groups[t.Group]
		if !ok {
			return Rule{}, compileErr(t.Pos, ErrUnknownGroup, "group %q is not registered (groups: %s)", t.Group, list(sortedKeys(reg.Groups)))
		}
		r.Target.Members = append([]string{}, members...)
	}
	for _, w := range p.Where {
		c, err := compileWhere(w, reg)
		if err != nil {
			return Rule{}, err
		}
		r.Where = append(r.Where, c)
	}
	if p.When != nil {
		c, err := compileExpr(p.When, reg)
		if err != nil {
			return Rule{}, err
		}
		r.When = &c
	}
	if p.Transient && p.When == nil {
		return Rule{}, compileErr(p.Pos, ErrBadPolicy, "TRANSIENT needs a WHEN condition (it means: only while the condition holds)")
	}
	seen := map[string]bool{}
	transforms := 0
	for _, a := range p.Actions {
		act, kind, err := compileAction(a, reg)
		if err != nil {
			return Rule{}, err
		}
		if seen[act.Filter] {
			return Rule{}, compileErr(a.FilterPos, ErrBadPolicy, "filter %s is set twice in one policy", act.Filter)
		}
		seen[act.Filter] = true
		if kind == filter.Transform {
			transforms++
		}
		if transforms > filter.MaxSteps {
			return Rule{}, compileErr(a.Pos, ErrBadPolicy, "more than %d data filters in one policy", filter.MaxSteps)
		}
		r.Actions = append(r.Actions, act)
	}
	return r, nil
}

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func compileWhere(w WhereNode, reg *Registry) (FileCond, error) {
	c := FileCond{Field: w.Field, Op: w.Op}
	switch w.Field {
	case "file_type":
		if w.Op != OpEQ && w.Op != OpNE {
			return c, compileErr(w.Pos, ErrBadValue, "file_type takes = or !=, not %s", w.Op)
		}
		if w.Value.Quoted {
			g := strings.ToLower(strings.TrimPrefix(w.Value.Text, "/"))
			if _, err := path.Match(g, ""); err != nil || g == "" || len(g) > maxGlob {
				return c, compileErr(w.Value.Pos, ErrBadValue, "file_type glob %q is malformed", w.Value.Text)
			}
			c.Globs = []string{g}
			return c, nil
		}
		name := strings.ToLower(w.Value.Text)
		globs, ok := reg.FileTypes[name]
		if !ok {
			return c, compileErr(w.Value.Pos, ErrUnknownFileType, "file type %q is not registered (file types: %s; or give a quoted glob)",
				w.Value.Text, list(sortedKeys(reg.FileTypes)))
		}
		c.Set, c.Globs = name, append([]string{}, globs...)
	case "file_size":
		if w.Value.Quoted {
			return c, compileErr(w.Value.Pos, ErrBadValue, "file_size wants a size like 1MiB, not a string")
		}
		n, err := filter.ParseQuantity(filter.TypeSize, w.Value.Text)
		if err != nil {
			return c, compileErr(w.Value.Pos, ErrBadValue, "file_size: %w", err)
		}
		c.Size = int64(n)
	default:
		return c, compileErr(w.Pos, ErrUnknownField, "%q is not a file attribute (file_type, file_size)", w.Field)
	}
	return c, nil
}

// compileExpr turns a WHEN expression into a Cond, flattening nested ANDs
// and ORs.
func compileExpr(e Expr, reg *Registry) (Cond, error) {
	switch e := e.(type) {
	case *Compare:
		def, ok := reg.Metrics[e.Metric]
		if !ok {
			return Cond{}, compileErr(e.Pos, ErrUnknownMetric, "metric %q is not registered (metrics: %s)", e.Metric, list(sortedKeys(reg.Metrics)))
		}
		if e.Value.Quoted {
			return Cond{}, compileErr(e.Value.Pos, ErrBadValue, "%s wants a number, not a string", e.Metric)
		}
		v, err := filter.ParseQuantity(def.Type, e.Value.Text)
		if err != nil {
			return Cond{}, compileErr(e.Value.Pos, ErrBadValue, "metric %s (%v): %w", e.Metric, def.Type, err)
		}
		return Cond{Metric: e.Metric, Op: e.Op, Value: v}, nil
	case *Logic:
		var terms []Cond
		for _, t := range e.Terms {
			c, err := compileExpr(t, reg)
			if err != nil {
				return Cond{}, err
			}
			switch {
			case e.Op == "AND" && c.And != nil:
				terms = append(terms, c.And...)
			case e.Op == "OR" && c.Or != nil:
				terms = append(terms, c.Or...)
			default:
				terms = append(terms, c)
			}
		}
		if e.Op == "AND" {
			return Cond{And: terms}, nil
		}
		return Cond{Or: terms}, nil
	}
	return Cond{}, fmt.Errorf("unknown expression %T: %w", e, ErrBadPolicy)
}

// compileAction checks a SET against the registry's filter schema.
func compileAction(a ActionNode, reg *Registry) (Action, filter.Kind, error) {
	def, ok := reg.Filters[a.Filter]
	if !ok {
		return Action{}, 0, compileErr(a.FilterPos, ErrUnknownFilter, "filter %q is not registered (filters: %s)", a.Filter, list(sortedKeys(reg.Filters)))
	}
	given := make(map[string]string, len(a.Params))
	for _, p := range a.Params {
		if _, dup := given[p.Name]; dup {
			return Action{}, 0, compileErr(p.Pos, ErrBadParam, "filter %s: parameter %s given twice", a.Filter, p.Name)
		}
		given[p.Name] = p.Value.Text
		// Check one by one so that the error points at the parameter.
		if _, err := filter.ValidateParams(def.Params, map[string]string{p.Name: p.Value.Text}); err != nil {
			return Action{}, 0, compileErr(p.Pos, ErrBadParam, "filter %s: %w", a.Filter, err)
		}
	}
	var vals filter.Values
	var err error
	if spec, ok := filter.Lookup(a.Filter); ok && def.Builtin {
		vals, err = spec.Validate(given) // cross-parameter checks too
	} else {
		vals, err = filter.ValidateParams(def.Params, given)
		if err != nil {
			err = fmt.Errorf("filter %s: %w", a.Filter, err)
		}
	}
	if err != nil {
		return Action{}, 0, compileErr(a.FilterPos, ErrBadParam, "%w", err)
	}
	act := Action{Filter: a.Filter}
	if len(vals) > 0 {
		act.Params = vals
	}
	return act, def.Kind, nil
}

// String prints the rule as a canonical policy, from its compiled form:
// parameters with defaults filled in, sizes and rates as plain numbers,
// groups and file types by name. Compiling it gives the same rule (Text
// aside).
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString("FOR ")
	t := r.Target
	b.WriteString(formatTarget(t.Kind, t.Tenant, t.Volume, t.FileGlob, t.Group))
	for i, w := range r.Where {
		if i == 0 {
			b.WriteString(" WHERE ")
		} else {
			b.WriteString(" AND ")
		}
		b.WriteString(w.Field + " " + string(w.Op) + " ")
		switch {
		case w.Field == "file_size":
			b.WriteString(strconv.FormatInt(w.Size, 10))
		case w.Set != "":
			b.WriteString(w.Set)
		case len(w.Globs) > 0:
			b.WriteString(strconv.Quote(w.Globs[0]))
		}
	}
	if r.When != nil {
		b.WriteString(" WHEN ")
		r.When.write(&b, "")
	}
	b.WriteString(" DO ")
	for i, a := range r.Actions {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("SET " + a.Filter)
		for j, k := range sortedKeys(a.Params) {
			if j == 0 {
				b.WriteString(" WITH ")
			} else {
				b.WriteString(", ")
			}
			b.WriteString(k + "=" + formatParam(a.Params[k]))
		}
	}
	if r.Transient {
		b.WriteString(" TRANSIENT")
	}
	return b.String()
}

// formatParam writes a canonical value so that it scans back as one value.
func formatParam(v string) string {
	if v != "" && (identPattern.MatchString(v) && keyword(v) == "" || isNumber(v)) {
		return v
	}
	return strconv.Quote(v)
}

func isNumber(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return s != ""
}

func (c *Cond) write(b *strings.Builder, parent string) {
	switch {
	case c.Metric != "":
		b.WriteString(c.Metric + " " + string(c.Op) + " " + strconv.FormatFloat(c.Value, 'f', -1, 64))
	case c.And != nil || c.Or != nil:
		op, terms := "AND", c.And
		if c.Or != nil {
			op, terms = "OR", c.Or
		}
		paren := parent == "AND" && op == "OR"
		if paren {
			b.WriteByte('(')
		}
		for i := range terms {
			if i > 0 {
				b.WriteString(" " + op + " ")
			}
			terms[i].write(b, op)
		}
		if paren {
			b.WriteByte(')')
		}
	}
}

// IsCompileError reports whether err is a policy that parsed but did not
// compile (as opposed to a syntax error).
func IsCompileError(err error) bool {
	var ce *CompileError
	return errors.As(err, &ce)
}
