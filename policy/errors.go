package policy

import "fmt"

// Error is the type of this package's sentinel errors; they are constants so
// that callers can test them with errors.Is.
type Error string

func (e Error) Error() string { return string(e) }

// Sentinel errors. A *ParseError wraps ErrSyntax; a *CompileError wraps one
// of the others (and, for parameters, filter.ErrParam too).
const (
	ErrSyntax          = Error("policy: syntax error")
	ErrUnknownFilter   = Error("policy: unknown filter")
	ErrBadParam        = Error("policy: bad filter parameter")
	ErrUnknownMetric   = Error("policy: unknown metric")
	ErrBadValue        = Error("policy: bad value")
	ErrUnknownGroup    = Error("policy: unknown group")
	ErrUnknownFileType = Error("policy: unknown file type")
	ErrUnknownField    = Error("policy: unknown file attribute")
	ErrBadPolicy       = Error("policy: invalid policy")
	ErrRegistry        = Error("policy: invalid registry entry")
)

// CompileError is a policy that parses but does not make sense with the
// registry: an unknown filter, parameter, metric, group or file type, a bad
// value, TRANSIENT without WHEN. Line and Col point at the offending word.
type CompileError struct {
	Line int   `json:"line"`
	Col  int   `json:"col"`
	Err  error `json:"-"`
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("line %d, col %d: %v", e.Line, e.Col, e.Err)
}

// Unwrap returns the cause (which wraps a sentinel).
func (e *CompileError) Unwrap() error { return e.Err }

// compileErr makes a CompileError at p whose message is the formatted text
// and which matches sentinel (and anything the text wraps with %w).
func compileErr(p Pos, sentinel error, format string, args ...any) *CompileError {
	return &CompileError{Line: p.Line, Col: p.Col, Err: &taggedError{err: fmt.Errorf(format, args...), tag: sentinel}}
}

// taggedError reads as its cause and also matches a sentinel, so that
// messages for people are not followed by the sentinel's text.
type taggedError struct {
	err error
	tag error
}

func (e *taggedError) Error() string   { return e.err.Error() }
func (e *taggedError) Unwrap() []error { return []error{e.err, e.tag} }
