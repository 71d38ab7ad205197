package policy

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// tokKind is a token's lexical class.
type tokKind uint8

const (
	tEOF     tokKind = iota
	tIdent           // words and keywords: letter or _, then letters, digits, _ . -
	tNumber          // digit, then digits and dots, then a unit (letters), then an optional "/s"
	tString          // "..." with Go escapes
	tWord            // a target: everything up to white space (only where the parser asks)
	tComma           // ,
	tSemi            // ;
	tLParen          // (
	tRParen          // )
	tOp              // = == != < <= > >=
	tIllegal         // anything else, or a bad string
)

// Pos is a position in policy text: 1-based line and column (in
// characters).
type Pos struct {
	Line int `json:"line"`
	Col  int `json:"col"`
}

// token is one lexeme. text is the source text; val is the value (the
// unquoted string for tString and quoted parts of tWord, else text).
type token struct {
	kind tokKind
	text string
	val  string
	pos  Pos
	off  int // byte offset of the start
	end  int // byte offset after the end
	err  string
}

// lexer scans policy text on demand: the parser asks for the next token
// (next) or, after a target keyword, for a raw target word (word).
type lexer struct {
	src  string
	off  int
	line int
	col  int
}

func newLexer(src string) *lexer { return &lexer{src: src, line: 1, col: 1} }

func (l *lexer) peekByte(i int) byte {
	if l.off+i < len(l.src) {
		return l.src[l.off+i]
	}
	return 0
}

// advance moves over n bytes (which must not split a character), keeping
// line and column.
func (l *lexer) advance(n int) {
	end := l.off + n
	for l.off < end {
		r, size := utf8.DecodeRuneInString(l.src[l.off:])
		l.off += size
		if r == '\n' {
			l.line++
			l.col = 1
		} else {
			l.col++
		}
	}
}

// skipSpace skips white space and # comments.
func (l *lexer) skipSpace() {
	for l.off < len(l.src) {
		c := l.src[l.off]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			l.advance(1)
		case c == '#':
			for l.off < len(l.src) && l.src[l.off] != '\n' {
				l.advance(1)
			}
		default:
			return
		}
	}
}

func (l *lexer) pos() Pos { return Pos{Line: l.line, Col: l.col} }

func (l *lexer) make(kind tokKind, start int, p Pos) token {
	t := token{kind: kind, text: l.src[start:l.off], pos: p, off: start, end: l.off}
	t.val = t.text
	return t
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isIdent(c byte) bool  { return isLetter(c) || isDigit(c) || c == '.' || c == '-' }

// next scans the next token.
func (l *lexer) next() token {
	l.skipSpace()
	p, start := l.pos(), l.off
	if l.off >= len(l.src) {
		return token{kind: tEOF, pos: p, off: start, end: start}
	}
	c := l.src[l.off]
	switch {
	case isLetter(c):
		for l.off < len(l.src) && isIdent(l.src[l.off]) {
			l.advance(1)
		}
		return l.make(tIdent, start, p)
	case isDigit(c):
		for l.off < len(l.src) && (isDigit(l.src[l.off]) || l.src[l.off] == '.') {
			l.advance(1)
		}
		for l.off < len(l.src) && isLetter(l.src[l.off]) {
			l.advance(1)
		}
		if l.peekByte(0) == '/' && l.peekByte(1) == 's' && !isIdent(l.peekByte(2)) {
			l.advance(2)
		}
		return l.make(tNumber, start, p)
	case c == '"':
		val, ok := l.quoted()
		t := l.make(tString, start, p)
		if !ok {
			t.kind, t.err = tIllegal, "unterminated or malformed string"
			return t
		}
		t.val = val
		return t
	case c == ',':
		l.advance(1)
		return l.make(tComma, start, p)
	case c == ';':
		l.advance(1)
		return l.make(tSemi, start, p)
	case c == '(':
		l.advance(1)
		return l.make(tLParen, start, p)
	case c == ')':
		l.advance(1)
		return l.make(tRParen, start, p)
	case c == '=' || c == '<' || c == '>' || c == '!':
		l.advance(1)
		if l.peekByte(0) == '=' {
			l.advance(1)
		}
		t := l.make(tOp, start, p)
		if t.text == "!" {
			t.kind, t.err = tIllegal, "'!' must be followed by '='"
		}
		return t
	}
	_, size := utf8.DecodeRuneInString(l.src[l.off:])
	l.advance(size)
	return l.make(tIllegal, start, p)
}

// quoted scans a Go-syntax double-quoted string at l.off and returns its
// value; ok is false (and the lexer is past what it could scan) if the
// string is unterminated or its escapes are bad.
func (l *lexer) quoted() (string, bool) {
	start := l.off
	l.advance(1)
	for l.off < len(l.src) {
		switch l.src[l.off] {
		case '\\':
			if l.off+1 >= len(l.src) {
				l.advance(1)
				return "", false
			}
			_, size := utf8.DecodeRuneInString(l.src[l.off+1:])
			l.advance(1 + size)
		case '"':
			l.advance(1)
			v, err := strconv.Unquote(l.src[start:l.off])
			return v, err == nil
		case '\n':
			return "", false
		default:
			_, size := utf8.DecodeRuneInString(l.src[l.off:])
			l.advance(size)
		}
	}
	return "", false
}

// word scans a target: characters up to white space, ';' or a comment,
// where "..." parts are Go strings (so a glob can hold spaces). The token's
// val is the word with quoted parts unquoted.
func (l *lexer) word() token {
	l.skipSpace()
	p, start := l.pos(), l.off
	var val strings.Builder
	for l.off < len(l.src) {
		c := l.src[l.off]
		if c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ';' {
			break
		}
		if c == '"' {
			s, ok := l.quoted()
			if !ok {
				t := l.make(tIllegal, start, p)
				t.err = "unterminated or malformed string"
				return t
			}
			val.WriteString(s)
			continue
		}
		_, size := utf8.DecodeRuneInString(l.src[l.off:])
		val.WriteString(l.src[l.off : l.off+size])
		l.advance(size)
	}
	if l.off == start {
		return token{kind: tEOF, pos: p, off: start, end: start}
	}
	t := l.make(tWord, start, p)
	t.val = val.String()
	return t
}

// describe renders a token for "found ..." in errors.
func (t token) describe() string {
	switch t.kind {
	case tEOF:
		return "end of input"
	case tIdent:
		if kw := keyword(t.text); kw != "" {
			return "keyword " + kw
		}
	}
	s := t.text
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return strconv.Quote(s)
}

// Keywords, case-insensitive. They cannot be filter, parameter or metric
// names.
var keywords = [...]string{"FOR", "TENANT", "VOLUME", "FILE", "GROUP", "WHERE", "WHEN", "DO", "SET", "WITH", "AND", "OR", "TRANSIENT"}

// keyword returns the canonical keyword s is, or "".
func keyword(s string) string {
	if len(s) > 9 {
		return ""
	}
	for _, k := range keywords {
		if strings.EqualFold(k, s) {
			return k
		}
	}
	return ""
}
