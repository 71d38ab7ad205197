package filter

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// ParamType is the type of a filter parameter's value. It decides how a
// value written in a policy (`level=3`, `size=64MiB`, `read_min=30MB/s`) is
// parsed and what its canonical form is.
type ParamType uint8

// The parameter types.
const (
	// TypeString is free text; canonical form as given.
	TypeString ParamType = iota + 1
	// TypeEnum is one of ParamSpec.Allowed, case-insensitive; canonical
	// form lower case.
	TypeEnum
	// TypeInt is a decimal integer, bounded by ParamSpec.Min and Max.
	TypeInt
	// TypeSize is a byte count: a number with an optional unit (B, KiB,
	// MiB, GiB, TiB, or the decimal K/KB, M/MB, G/GB, T/TB); canonical
	// form the integer number of bytes.
	TypeSize
	// TypeBandwidth is bytes per second: a size with an optional "/s"
	// (30MB/s, 1GiB/s, 1000000); canonical form integer bytes per second.
	TypeBandwidth
	// TypeIOPS is operations per second: a number with an optional K, M or
	// G multiplier (decimal) and an optional "/s" (5000, 5K, 2.5K/s);
	// canonical form an integer.
	TypeIOPS
)

var paramTypeNames = [...]string{
	TypeString:    "string",
	TypeEnum:      "enum",
	TypeInt:       "int",
	TypeSize:      "size",
	TypeBandwidth: "bandwidth",
	TypeIOPS:      "iops",
}

func (t ParamType) String() string {
	if int(t) < len(paramTypeNames) && paramTypeNames[t] != "" {
		return paramTypeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// MarshalText makes a ParamType a JSON string ("size").
func (t ParamType) MarshalText() ([]byte, error) {
	if int(t) < len(paramTypeNames) && paramTypeNames[t] != "" {
		return []byte(paramTypeNames[t]), nil
	}
	return nil, fmt.Errorf("filter: unknown parameter type %d", uint8(t))
}

// UnmarshalText is the inverse of MarshalText.
func (t *ParamType) UnmarshalText(b []byte) error {
	for i, n := range paramTypeNames {
		if n != "" && n == string(b) {
			*t = ParamType(i)
			return nil
		}
	}
	return fmt.Errorf("filter: unknown parameter type %q", b)
}

// Numeric reports whether values of t are numbers (int, size, bandwidth,
// iops).
func (t ParamType) Numeric() bool {
	return t == TypeInt || t == TypeSize || t == TypeBandwidth || t == TypeIOPS
}

// ParamSpec describes one parameter of a filter: its schema, as `sluice
// filter list` shows it and as the policy compiler checks it.
type ParamSpec struct {
	Name string    `json:"name"`
	Type ParamType `json:"type"`
	// Default is the canonical value used when a policy does not give the
	// parameter; "" means the parameter is optional and absent by default.
	Default string `json:"default,omitempty"`
	// Allowed lists the values of an enum.
	Allowed []string `json:"allowed,omitempty"`
	// Min and Max bound numeric values when Max > 0 (inclusive).
	Min         int64  `json:"min,omitempty"`
	Max         int64  `json:"max,omitempty"`
	Description string `json:"description,omitempty"`
}

// Parse checks one value of this parameter and returns its canonical form.
// The error wraps ErrParam and names the parameter; it never echoes more
// than a short prefix of the value.
func (p ParamSpec) Parse(value string) (string, error) {
	switch p.Type {
	case TypeString:
		if len(value) > maxValueLen {
			return "", paramErr("parameter %s: value longer than %d bytes", p.Name, maxValueLen)
		}
		return value, nil
	case TypeEnum:
		for _, a := range p.Allowed {
			if strings.EqualFold(a, value) {
				return strings.ToLower(a), nil
			}
		}
		return "", paramErr("parameter %s: %s is not one of %s", p.Name, quoteShort(value), strings.Join(p.Allowed, ", "))
	}
	if !p.Type.Numeric() {
		return "", paramErr("parameter %s: unknown type %v", p.Name, p.Type)
	}
	f, err := ParseQuantity(p.Type, value)
	if err != nil {
		return "", fmt.Errorf("parameter %s: %w", p.Name, err)
	}
	if f != math.Trunc(f) {
		return "", paramErr("parameter %s: %s is not a whole number", p.Name, quoteShort(value))
	}
	n := int64(f)
	if p.Max > 0 && (n < p.Min || n > p.Max) {
		return "", paramErr("parameter %s: %s is out of range %s..%s", p.Name, quoteShort(value),
			FormatQuantity(p.Type, p.Min), FormatQuantity(p.Type, p.Max))
	}
	return strconv.FormatInt(n, 10), nil
}

// maxValueLen bounds a parameter value (and so what a registry or a policy
// can make the gateway hold).
const maxValueLen = 256

func quoteShort(s string) string {
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return strconv.Quote(s)
}

// Values holds a filter's parameters in canonical form (see ParamSpec.Parse),
// defaults filled in. Numeric values are decimal integers.
type Values map[string]string

// Int returns a numeric parameter, or 0 when it is absent.
func (v Values) Int(name string) int64 {
	n, _ := strconv.ParseInt(v[name], 10, 64)
	return n
}

// String renders the values as k=v pairs sorted by name.
func (v Values) String() string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(v[k])
	}
	return b.String()
}

func (v Values) clone() Values {
	out := make(Values, len(v))
	for k, x := range v {
		out[k] = x
	}
	return out
}

// ValidateParams checks given values against a schema: every name must be a
// parameter (case-insensitive), every value must parse. It returns the
// canonical values with defaults filled in. Errors wrap ErrParam and name
// the parameter.
func ValidateParams(schema []ParamSpec, given map[string]string) (Values, error) {
	out := make(Values, len(schema))
	for name, val := range given {
		p, ok := findParam(schema, name)
		if !ok {
			return nil, paramErr("unknown parameter %s (%s)", quoteShort(name), paramNames(schema))
		}
		c, err := p.Parse(val)
		if err != nil {
			return nil, err
		}
		out[p.Name] = c
	}
	for _, p := range schema {
		if _, ok := out[p.Name]; !ok && p.Default != "" {
			out[p.Name] = p.Default
		}
	}
	return out, nil
}

func findParam(schema []ParamSpec, name string) (ParamSpec, bool) {
	for _, p := range schema {
		if strings.EqualFold(p.Name, name) {
			return p, true
		}
	}
	return ParamSpec{}, false
}

func paramNames(schema []ParamSpec) string {
	if len(schema) == 0 {
		return "it takes no parameters"
	}
	names := make([]string, len(schema))
	for i, p := range schema {
		names[i] = p.Name
	}
	return "parameters: " + strings.Join(names, ", ")
}

// Quantities. Multipliers: K M G T P are decimal (1K = 1000) for every
// numeric type; KiB MiB GiB TiB PiB are binary and only for sizes and
// bandwidths, as are KB MB GB TB PB (decimal) and B. The prefix letter and
// the "i" are case-insensitive; the byte suffix must be an upper-case "B"
// (lower-case "b" would be bits, which are not supported). Rates may end in
// "/s".

type unit struct {
	suffix string
	mult   float64
	bytes  bool // only for sizes and bandwidths
}

var units = [...]unit{
	{"", 1, false},
	{"K", 1e3, false}, {"M", 1e6, false}, {"G", 1e9, false}, {"T", 1e12, false}, {"P", 1e15, false},
	{"B", 1, true},
	{"KB", 1e3, true}, {"MB", 1e6, true}, {"GB", 1e9, true}, {"TB", 1e12, true}, {"PB", 1e15, true},
	{"KiB", 1 << 10, true}, {"MiB", 1 << 20, true}, {"GiB", 1 << 30, true}, {"TiB", 1 << 40, true}, {"PiB", 1 << 50, true},
}

// maxQuantity keeps quantities exact in a float64 and in an int64.
const maxQuantity = 1 << 53

// ParseQuantity parses a numeric value of type t (TypeInt, TypeSize,
// TypeBandwidth or TypeIOPS) into a number: "64MiB" → 67108864, "30MB/s" →
// 3e7, "5K" → 5000. Errors wrap ErrParam.
func ParseQuantity(t ParamType, s string) (float64, error) {
	if !t.Numeric() {
		return 0, paramErr("%v is not a numeric type", t)
	}
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, rest := s[:i], s[i:]
	if num == "" || strings.Count(num, ".") > 1 || num[0] == '.' || num[len(num)-1] == '.' {
		return 0, paramErr("%s is not a number", quoteShort(s))
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, paramErr("%s is not a number", quoteShort(s))
	}
	if t == TypeInt {
		if rest != "" {
			return 0, paramErr("%s: a plain number takes no unit", quoteShort(s))
		}
	} else {
		if strings.HasSuffix(rest, "/s") {
			if t == TypeSize {
				return 0, paramErr("%s: a size is not a rate (drop the /s)", quoteShort(s))
			}
			rest = rest[:len(rest)-2]
		}
		u, ok := lookupUnit(rest)
		if !ok || (u.bytes && t == TypeIOPS) {
			return 0, paramErr("%s: unknown unit %s for %v (%s)", quoteShort(s), quoteShort(rest), t, unitHelp(t))
		}
		f *= u.mult
	}
	if f > maxQuantity {
		return 0, paramErr("%s is too large", quoteShort(s))
	}
	return f, nil
}

func lookupUnit(s string) (unit, bool) {
	if strings.HasSuffix(s, "b") {
		return unit{}, false // bits
	}
	for _, u := range units {
		if strings.EqualFold(u.suffix, s) {
			return u, true
		}
	}
	return unit{}, false
}

func unitHelp(t ParamType) string {
	switch t {
	case TypeIOPS:
		return "use K, M or G, optionally with /s"
	case TypeSize:
		return "use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB"
	}
	return "use B, KiB, MiB, GiB, or KB, MB, GB, optionally with /s"
}

// FormatQuantity renders n of type t for people: sizes and bandwidths in the
// largest binary unit that divides them exactly (64MiB, 30000000B/s → the
// exact bytes when no binary unit fits), iops and ints as plain numbers.
// ParseQuantity(t, FormatQuantity(t, n)) == n.
func FormatQuantity(t ParamType, n int64) string {
	suffix := ""
	if t == TypeBandwidth {
		suffix = "/s"
	}
	if t == TypeSize || t == TypeBandwidth {
		for _, u := range []struct {
			s string
			m int64
		}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
			if n != 0 && n%u.m == 0 {
				return strconv.FormatInt(n/u.m, 10) + u.s + suffix
			}
		}
		return strconv.FormatInt(n, 10) + "B" + suffix
	}
	return strconv.FormatInt(n, 10)
}
