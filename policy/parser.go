package policy

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// ParseError is a syntax error: where, what was expected, what was found.
type ParseError struct {
	Line     int    `json:"line"`
	Col      int    `json:"col"`
	Found    string `json:"found"`    // the token, quoted, or "end of input"
	Expected string `json:"expected"` // e.g. "TENANT, VOLUME, FILE or GROUP"
	Hint     string `json:"hint,omitempty"`
}

func (e *ParseError) Error() string {
	s := fmt.Sprintf("line %d, col %d: expected %s, found %s", e.Line, e.Col, e.Expected, e.Found)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// Unwrap makes errors.Is(err, ErrSyntax) true.
func (e *ParseError) Unwrap() error { return ErrSyntax }

// Limits on what the parser accepts, so that hostile text costs little.
const (
	MaxPolicyText = 64 << 10 // bytes of text given to Parse or ParseAll
	maxDepth      = 16       // nesting of parentheses in WHEN
	maxTerms      = 64       // comparisons in one WHEN, conditions in one WHERE
	maxActions    = 16       // SETs in one policy
	maxParams     = 32       // k=v in one WITH
)

// Parse parses exactly one policy.
func Parse(text string) (*Policy, error) {
	ps, err := ParseAll(text)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, &ParseError{Line: 1, Col: 1, Expected: "one policy", Found: fmt.Sprintf("%d policies", len(ps))}
	}
	return ps[0], nil
}

// ParseAll parses a sequence of policies (a policy file). Each starts with
// FOR; a ';' after a policy is optional. # starts a comment to the end of
// the line.
func ParseAll(text string) ([]*Policy, error) {
	if len(text) > MaxPolicyText {
		return nil, &ParseError{Line: 1, Col: 1, Expected: fmt.Sprintf("at most %d bytes of policy text", MaxPolicyText),
			Found: fmt.Sprintf("%d bytes", len(text))}
	}
	p := &parser{lex: newLexer(text), src: text}
	p.tok = p.lex.next()
	var out []*Policy
	for p.tok.kind != tEOF {
		if p.tok.kind == tSemi {
			p.advance()
			continue
		}
		pol, err := p.policy()
		if err != nil {
			return nil, err
		}
		out = append(out, pol)
	}
	if len(out) == 0 {
		return nil, p.errorf("FOR", "")
	}
	return out, nil
}

type parser struct {
	lex     *lexer
	src     string
	tok     token // the current, not yet consumed, token
	prevEnd int   // byte offset after the last consumed token
}

func (p *parser) advance() {
	p.prevEnd = p.tok.end
	p.tok = p.lex.next()
}

// errorf reports that the current token is not what was expected.
func (p *parser) errorf(expected, hint string) *ParseError {
	if p.tok.kind == tIllegal && p.tok.err != "" && hint == "" {
		hint = p.tok.err
	}
	return &ParseError{Line: p.tok.pos.Line, Col: p.tok.pos.Col, Expected: expected, Found: p.tok.describe(), Hint: hint}
}

// errorAt reports a bad token t (already consumed).
func errorAt(t token, expected, hint string) *ParseError {
	if t.kind == tIllegal && t.err != "" && hint == "" {
		hint = t.err
	}
	return &ParseError{Line: t.pos.Line, Col: t.pos.Col, Expected: expected, Found: t.describe(), Hint: hint}
}

// isKeyword reports whether the current token is keyword kw.
func (p *parser) isKeyword(kw string) bool {
	return p.tok.kind == tIdent && strings.EqualFold(p.tok.text, kw)
}

// ident consumes a non-keyword identifier, lower-cased.
func (p *parser) ident(expected string) (string, Pos, error) {
	if p.tok.kind != tIdent || keyword(p.tok.text) != "" {
		return "", Pos{}, p.errorf(expected, "")
	}
	s, pos := strings.ToLower(p.tok.text), p.tok.pos
	p.advance()
	return s, pos, nil
}

func (p *parser) policy() (*Policy, error) {
	start := p.tok
	if !p.isKeyword("FOR") {
		return nil, p.errorf("FOR", "")
	}
	pol := &Policy{Pos: start.pos}
	t, err := p.target()
	if err != nil {
		return nil, err
	}
	pol.Target = t
	if p.isKeyword("WHERE") {
		p.advance()
		for {
			w, err := p.where()
			if err != nil {
				return nil, err
			}
			pol.Where = append(pol.Where, w)
			if !p.isKeyword("AND") {
				break
			}
			if len(pol.Where) >= maxTerms {
				return nil, p.errorf("WHEN or DO", fmt.Sprintf("at most %d WHERE conditions", maxTerms))
			}
			p.advance()
		}
	}
	if p.isKeyword("WHEN") {
		p.advance()
		terms := 0
		e, err := p.or(0, &terms)
		if err != nil {
			return nil, err
		}
		pol.When = e
	}
	if !p.isKeyword("DO") {
		switch {
		case pol.When != nil:
			return nil, p.errorf("AND, OR or DO", "")
		case len(pol.Where) > 0:
			return nil, p.errorf("AND, WHEN or DO", "")
		}
		return nil, p.errorf("WHERE, WHEN or DO", "")
	}
	p.advance()
	for {
		a, err := p.action()
		if err != nil {
			return nil, err
		}
		pol.Actions = append(pol.Actions, a)
		if p.tok.kind != tComma {
			break
		}
		if len(pol.Actions) >= maxActions {
			return nil, p.errorf("end of policy", fmt.Sprintf("at most %d actions", maxActions))
		}
		p.advance()
	}
	if p.isKeyword("TRANSIENT") {
		pol.Transient = true
		p.advance()
	}
	if p.tok.kind != tEOF && p.tok.kind != tSemi && !p.isKeyword("FOR") {
		exp := "',', TRANSIENT, ';' or end of input"
		if pol.Transient {
			exp = "';', FOR or end of input"
		}
		return nil, p.errorf(exp, "")
	}
	pol.Text = p.src[start.off:p.prevEnd]
	return pol, nil
}

// Target names: the store's rule for tenants and volumes; groups the same.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

const nameRule = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"

// target parses TENANT t | VOLUME t/v | FILE t/v:glob | GROUP g. p.tok is
// FOR.
func (p *parser) target() (TargetNode, error) {
	p.advance()
	kwTok := p.tok
	var kind TargetKind
	switch {
	case p.isKeyword("TENANT"):
		kind = TargetTenant
	case p.isKeyword("VOLUME"):
		kind = TargetVolume
	case p.isKeyword("FILE"):
		kind = TargetFile
	case p.isKeyword("GROUP"):
		kind = TargetGroup
	default:
		return TargetNode{}, p.errorf("TENANT, VOLUME, FILE or GROUP", "")
	}
	w := p.lex.word() // the raw target after the keyword
	t := TargetNode{Pos: kwTok.pos, Kind: kind}
	var err error
	switch {
	case w.kind == tEOF || w.kind == tIllegal:
		err = errorAt(w, targetExpect(kind), "")
	case kind == TargetTenant:
		t.Tenant = w.val
		if !namePattern.MatchString(w.val) {
			err = errorAt(w, "a tenant name", nameRule)
		}
	case kind == TargetGroup:
		t.Group = strings.ToLower(w.val)
		if !namePattern.MatchString(w.val) {
			err = errorAt(w, "a group name", nameRule)
		}
	default:
		err = splitVolumeTarget(w, &t)
	}
	if err != nil {
		return TargetNode{}, err
	}
	p.prevEnd = w.end
	p.tok = p.lex.next()
	return t, nil
}

func targetExpect(k TargetKind) string {
	switch k {
	case TargetTenant:
		return "a tenant name"
	case TargetVolume:
		return "TENANT/VOLUME"
	case TargetFile:
		return "TENANT/VOLUME:GLOB"
	}
	return "a group name"
}

// maxGlob bounds a file glob.
const maxGlob = 1024

// splitVolumeTarget splits "t/v" or "t/v:glob" into t.
func splitVolumeTarget(w token, t *TargetNode) error {
	exp := targetExpect(t.Kind)
	tenant, rest, ok := strings.Cut(w.val, "/")
	if !ok {
		return errorAt(w, exp, "")
	}
	volume := rest
	if t.Kind == TargetFile {
		volume, t.Glob, ok = strings.Cut(rest, ":")
		if !ok {
			return errorAt(w, exp, "")
		}
		t.Glob = strings.TrimPrefix(t.Glob, "/")
		if t.Glob == "" || len(t.Glob) > maxGlob {
			return errorAt(w, exp, fmt.Sprintf("the glob must be 1-%d bytes", maxGlob))
		}
		if _, err := path.Match(t.Glob, ""); err != nil {
			return errorAt(w, exp, "malformed glob")
		}
	}
	if !namePattern.MatchString(tenant) {
		return errorAt(w, exp, "tenant: "+nameRule)
	}
	if !namePattern.MatchString(volume) {
		return errorAt(w, exp, "volume: "+nameRule)
	}
	t.Tenant, t.Volume = tenant, volume
	return nil
}

// where parses one file condition.
func (p *parser) where() (WhereNode, error) {
	field, pos, err := p.ident("file_type or file_size")
	if err != nil {
		return WhereNode{}, err
	}
	op, err := p.op()
	if err != nil {
		return WhereNode{}, err
	}
	v, err := p.value("a value")
	if err != nil {
		return WhereNode{}, err
	}
	return WhereNode{Pos: pos, Field: field, Op: op, Value: v}, nil
}

func (p *parser) op() (CmpOp, error) {
	if p.tok.kind == tOp {
		if op, ok := parseOp(p.tok.text); ok {
			p.advance()
			return op, nil
		}
	}
	return "", p.errorf("a comparison (<, <=, >, >=, =, !=)", "")
}

// value parses an identifier, a number or a string.
func (p *parser) value(expected string) (Value, error) {
	v := Value{Pos: p.tok.pos, Text: p.tok.val}
	switch {
	case p.tok.kind == tString:
		v.Quoted = true
	case p.tok.kind == tNumber:
	case p.tok.kind == tIdent && keyword(p.tok.text) == "":
	default:
		return Value{}, p.errorf(expected, "")
	}
	p.advance()
	return v, nil
}

// or parses term {OR term}; depth counts parentheses, terms comparisons.
func (p *parser) or(depth int, terms *int) (Expr, error) {
	return p.logic("OR", p.and, depth, terms)
}

// and parses factor {AND factor}.
func (p *parser) and(depth int, terms *int) (Expr, error) {
	return p.logic("AND", p.factor, depth, terms)
}

// logic parses operand {op operand}; a single operand is returned as is.
func (p *parser) logic(op string, operand func(int, *int) (Expr, error), depth int, terms *int) (Expr, error) {
	pos := p.tok.pos
	first, err := operand(depth, terms)
	if err != nil {
		return nil, err
	}
	l := &Logic{Pos: pos, Op: op, Terms: []Expr{first}}
	for p.isKeyword(op) {
		p.advance()
		e, err := operand(depth, terms)
		if err != nil {
			return nil, err
		}
		l.Terms = append(l.Terms, e)
	}
	if len(l.Terms) == 1 {
		return first, nil
	}
	return l, nil
}

func (p *parser) factor(depth int, terms *int) (Expr, error) {
	if p.tok.kind == tLParen {
		if depth >= maxDepth {
			return nil, p.errorf("a metric", fmt.Sprintf("at most %d nested parentheses", maxDepth))
		}
		p.advance()
		e, err := p.or(depth+1, terms)
		if err != nil {
			return nil, err
		}
		if p.tok.kind != tRParen {
			return nil, p.errorf("AND, OR or ')'", "")
		}
		p.advance()
		// (a OR b) inside an AND must stay grouped; flattening is done by
		// the compiler.
		return e, nil
	}
	*terms++
	if *terms > maxTerms {
		return nil, p.errorf("DO", fmt.Sprintf("at most %d comparisons", maxTerms))
	}
	metric, pos, err := p.ident("a metric or '('")
	if err != nil {
		return nil, err
	}
	op, err := p.op()
	if err != nil {
		return nil, err
	}
	v, err := p.value("a number")
	if err != nil {
		return nil, err
	}
	return &Compare{Pos: pos, Metric: metric, Op: op, Value: v}, nil
}

// action parses SET filter [WITH k=v {, k=v}].
func (p *parser) action() (ActionNode, error) {
	if !p.isKeyword("SET") {
		return ActionNode{}, p.errorf("SET", "")
	}
	pos := p.tok.pos
	p.advance()
	name, npos, err := p.ident("a filter name")
	if err != nil {
		return ActionNode{}, err
	}
	a := ActionNode{Pos: pos, FilterPos: npos, Filter: name}
	if !p.isKeyword("WITH") {
		return a, nil
	}
	p.advance()
	for {
		k, kpos, err := p.ident("a parameter name")
		if err != nil {
			return ActionNode{}, err
		}
		if p.tok.kind != tOp || p.tok.text != "=" {
			return ActionNode{}, p.errorf("'='", "")
		}
		p.advance()
		v, err := p.value("a value (a word, a number or a \"string\")")
		if err != nil {
			return ActionNode{}, err
		}
		a.Params = append(a.Params, ParamNode{Pos: kpos, Name: k, Value: v})
		// "," then a parameter continues this WITH; "," then SET starts
		// the next action (the caller sees the comma).
		if p.tok.kind != tComma || p.peekIsSet() {
			return a, nil
		}
		if len(a.Params) >= maxParams {
			return ActionNode{}, p.errorf("SET", fmt.Sprintf("at most %d parameters", maxParams))
		}
		p.advance()
	}
}

// peekIsSet reports whether the token after the current one is SET,
// without consuming anything.
func (p *parser) peekIsSet() bool {
	save := *p.lex
	t := p.lex.next()
	*p.lex = save
	return t.kind == tIdent && strings.EqualFold(t.text, "SET")
}
