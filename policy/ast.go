package policy

import (
	"strconv"
	"strings"
)

// Policy is one parsed policy (the AST): what the text says, before the
// registry is consulted. Compile turns it into a Rule.
type Policy struct {
	Pos       Pos
	Target    TargetNode
	Where     []WhereNode // ANDed
	When      Expr        // nil: a static policy
	Actions   []ActionNode
	Transient bool
	Text      string // the policy's source text
}

// TargetKind says what a policy is for.
type TargetKind string

// The target kinds, most specific first.
const (
	TargetFile   TargetKind = "file"
	TargetVolume TargetKind = "volume"
	TargetTenant TargetKind = "tenant"
	TargetGroup  TargetKind = "group"
)

// TargetNode is FOR's operand.
type TargetNode struct {
	Pos    Pos
	Kind   TargetKind
	Tenant string // tenant, volume and file targets
	Volume string // volume and file targets
	Glob   string // file targets
	Group  string // group targets
}

// WhereNode is one file condition: file_type = DOCS, file_size < 1MiB.
type WhereNode struct {
	Pos   Pos
	Field string // lower case
	Op    CmpOp
	Value Value
}

// Value is a literal: an identifier, a number with its unit, or a string.
type Value struct {
	Pos    Pos
	Text   string // the value (strings unquoted)
	Quoted bool   // it was a string literal
}

func (v Value) String() string {
	if v.Quoted {
		return strconv.Quote(v.Text)
	}
	return v.Text
}

// CmpOp is a comparison operator. "=" is read as "==".
type CmpOp string

// The comparison operators.
const (
	OpLT CmpOp = "<"
	OpLE CmpOp = "<="
	OpGT CmpOp = ">"
	OpGE CmpOp = ">="
	OpEQ CmpOp = "=="
	OpNE CmpOp = "!="
)

func parseOp(s string) (CmpOp, bool) {
	switch s {
	case "<", "<=", ">", ">=", "==", "!=":
		return CmpOp(s), true
	case "=":
		return OpEQ, true
	}
	return "", false
}

// compare applies op to a and b.
func (op CmpOp) compare(a, b float64) bool {
	switch op {
	case OpLT:
		return a < b
	case OpLE:
		return a <= b
	case OpGT:
		return a > b
	case OpGE:
		return a >= b
	case OpEQ:
		return a == b
	case OpNE:
		return a != b
	}
	return false
}

// Expr is a WHEN condition: *Compare or *Logic.
type Expr interface {
	exprPos() Pos
	write(b *strings.Builder, parent string)
}

// Compare is metric op value.
type Compare struct {
	Pos    Pos
	Metric string // lower case
	Op     CmpOp
	Value  Value
}

// Logic is terms joined by AND or OR (AND binds tighter).
type Logic struct {
	Pos   Pos
	Op    string // "AND" or "OR"
	Terms []Expr
}

func (c *Compare) exprPos() Pos { return c.Pos }
func (l *Logic) exprPos() Pos   { return l.Pos }

func (c *Compare) write(b *strings.Builder, _ string) {
	b.WriteString(c.Metric + " " + string(c.Op) + " " + c.Value.String())
}

func (l *Logic) write(b *strings.Builder, parent string) {
	paren := parent == "AND" && l.Op == "OR"
	if paren {
		b.WriteByte('(')
	}
	for i, t := range l.Terms {
		if i > 0 {
			b.WriteString(" " + l.Op + " ")
		}
		t.write(b, l.Op)
	}
	if paren {
		b.WriteByte(')')
	}
}

// ActionNode is SET filter [WITH k=v, ...].
type ActionNode struct {
	Pos       Pos    // of SET
	FilterPos Pos    // of the filter name
	Filter    string // lower case
	Params    []ParamNode
}

// ParamNode is one k=v.
type ParamNode struct {
	Pos   Pos
	Name  string // lower case
	Value Value
}

// String prints the policy in canonical form (upper-case keywords, one
// space between tokens); parsing it gives the same AST (positions aside).
func (p *Policy) String() string {
	var b strings.Builder
	b.WriteString("FOR ")
	b.WriteString(p.Target.String())
	for i, w := range p.Where {
		if i == 0 {
			b.WriteString(" WHERE ")
		} else {
			b.WriteString(" AND ")
		}
		b.WriteString(w.Field + " " + string(w.Op) + " " + w.Value.String())
	}
	if p.When != nil {
		b.WriteString(" WHEN ")
		p.When.write(&b, "")
	}
	b.WriteString(" DO ")
	for i, a := range p.Actions {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("SET " + a.Filter)
		for j, pr := range a.Params {
			if j == 0 {
				b.WriteString(" WITH ")
			} else {
				b.WriteString(", ")
			}
			b.WriteString(pr.Name + "=" + pr.Value.String())
		}
	}
	if p.Transient {
		b.WriteString(" TRANSIENT")
	}
	return b.String()
}

// String prints the target as the DSL writes it ("VOLUME acme/db").
func (t TargetNode) String() string {
	return formatTarget(t.Kind, t.Tenant, t.Volume, t.Glob, t.Group)
}

func formatTarget(kind TargetKind, tenant, volume, glob, group string) string {
	switch kind {
	case TargetTenant:
		return "TENANT " + tenant
	case TargetVolume:
		return "VOLUME " + tenant + "/" + volume
	case TargetFile:
		if strings.HasPrefix(glob, "/") {
			glob = "/" + glob // the parser drops one leading "/" (t/v:/a.log is t/v:a.log)
		}
		return "FILE " + tenant + "/" + volume + ":" + quoteGlob(glob)
	case TargetGroup:
		return "GROUP " + group
	}
	return "?"
}

// quoteGlob quotes a glob when it would not scan back as one word.
func quoteGlob(g string) string {
	if g == "" || strings.ContainsAny(g, " \t\r\n;\"#\\") || !isPrintable(g) {
		return strconv.Quote(g)
	}
	return g
}

func isPrintable(s string) bool {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return false
		}
	}
	return true
}
