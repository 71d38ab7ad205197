package filter

import (
	"errors"
	"strings"
	"testing"
)

func TestParseQuantity(t *testing.T) {
	tests := []struct {
		t    ParamType
		in   string
		want float64
		bad  bool
	}{
		{TypeInt, "3", 3, false},
		{TypeInt, "3K", 0, true},
		{TypeInt, "", 0, true},
		{TypeInt, "-1", 0, true},
		{TypeSize, "4096", 4096, false},
		{TypeSize, "64MiB", 64 << 20, false},
		{TypeSize, "64miB", 64 << 20, false},
		{TypeSize, "64mib", 0, true}, // mebibits
		{TypeSize, "1.5GiB", 1.5 * (1 << 30), false},
		{TypeSize, "10MB", 10e6, false},
		{TypeSize, "64K", 64000, false},
		{TypeSize, "8B", 8, false},
		{TypeSize, "8Mb", 0, true}, // bits
		{TypeSize, "1MiB/s", 0, true},
		{TypeSize, "1XB", 0, true},
		{TypeSize, "1..2", 0, true},
		{TypeSize, ".5K", 0, true},
		{TypeSize, "5.", 0, true},
		{TypeSize, "99999999PiB", 0, true},
		{TypeBandwidth, "30MB/s", 30e6, false},
		{TypeBandwidth, "1GiB/s", 1 << 30, false},
		{TypeBandwidth, "1000", 1000, false},
		{TypeIOPS, "5000", 5000, false},
		{TypeIOPS, "5K", 5000, false},
		{TypeIOPS, "2.5k/s", 2500, false},
		{TypeIOPS, "5KB", 0, true},
		{TypeIOPS, "5KiB", 0, true},
		{TypeEnum, "5", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseQuantity(tc.t, tc.in)
		if tc.bad {
			if err == nil || !errors.Is(err, ErrParam) {
				t.Errorf("ParseQuantity(%v, %q) = %v, %v; want an ErrParam", tc.t, tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseQuantity(%v, %q) = %v, %v; want %v", tc.t, tc.in, got, err, tc.want)
		}
	}
}

func TestFormatQuantityRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		t ParamType
		n int64
		s string
	}{
		{TypeSize, 64 << 20, "64MiB"},
		{TypeSize, 1000, "1000B"},
		{TypeSize, 3 << 10, "3KiB"},
		{TypeBandwidth, 30e6, "30000000B/s"},
		{TypeBandwidth, 1 << 30, "1GiB/s"},
		{TypeIOPS, 5000, "5000"},
		{TypeInt, 7, "7"},
	} {
		s := FormatQuantity(tc.t, tc.n)
		if s != tc.s {
			t.Errorf("FormatQuantity(%v, %d) = %q, want %q", tc.t, tc.n, s, tc.s)
		}
		back, err := ParseQuantity(tc.t, s)
		if err != nil || int64(back) != tc.n {
			t.Errorf("ParseQuantity(%v, %q) = %v, %v; want %d", tc.t, s, back, err, tc.n)
		}
	}
}

func TestValidateParams(t *testing.T) {
	comp, _ := Lookup("compression")
	v, err := comp.Validate(nil)
	if err != nil || v["algo"] != "zstd" || v["level"] != "3" {
		t.Fatalf("defaults: %v, %v", v, err)
	}
	v, err = comp.Validate(map[string]string{"ALGO": "LZ4"})
	if err != nil || v["algo"] != "lz4" {
		t.Fatalf("case-insensitive: %v, %v", v, err)
	}
	for _, tc := range []struct {
		spec   string
		params map[string]string
		want   []string // substrings of the error
	}{
		{"compression", map[string]string{"lvl": "3"}, []string{"compression", `"lvl"`, "algo, level"}},
		{"compression", map[string]string{"level": "99"}, []string{"level", `"99"`, "1..22"}},
		{"compression", map[string]string{"algo": "gzip"}, []string{"algo", `"gzip"`, "zstd, lz4"}},
		{"compression", map[string]string{"level": "x"}, []string{"level", "not a number"}},
		{"cache", map[string]string{"size": "1KiB"}, []string{"size", "1MiB..1TiB"}},
		{"cache", map[string]string{"size": "64MiB/s"}, []string{"size", "not a rate"}},
		{"noop", map[string]string{"x": "1"}, []string{"takes no parameters"}},
		{"bandwidth", nil, []string{"at least one"}},
		{"bandwidth", map[string]string{"read_min": "50MB/s", "read_max": "10MB/s"}, []string{"read_min is above read_max"}},
		{"iops", map[string]string{"max": "5MB"}, []string{"max", "unknown unit"}},
	} {
		s, ok := Lookup(tc.spec)
		if !ok {
			t.Fatalf("no spec %s", tc.spec)
		}
		_, err := s.Validate(tc.params)
		if err == nil || !errors.Is(err, ErrParam) {
			t.Errorf("%s %v: err %v, want ErrParam", tc.spec, tc.params, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s %v: error %q does not mention %q", tc.spec, tc.params, err, w)
			}
		}
	}
	bw, _ := Lookup("bandwidth")
	v, err = bw.Validate(map[string]string{"read_min": "30MB/s"})
	if err != nil || v["read_min"] != "30000000" || len(v) != 1 {
		t.Fatalf("bandwidth: %v, %v", v, err)
	}
}

func TestBuiltinsAreCopies(t *testing.T) {
	b := Builtins()
	if len(b) != 7 {
		t.Fatalf("%d builtins", len(b))
	}
	for i := range b {
		if b[i].Name == "compression" {
			b[i].Params[0].Allowed[0] = "mutated"
			b[i].Name = "mutated"
		}
	}
	for _, s := range Builtins() {
		if s.Name == "mutated" {
			t.Fatal("Builtins returned the table itself")
		}
		for _, p := range s.Params {
			for _, a := range p.Allowed {
				if a == "mutated" {
					t.Fatal("Builtins shares Allowed slices")
				}
			}
		}
	}
	if _, err := New(nil, "compresion", nil); !errors.Is(err, ErrUnknownFilter) || !strings.Contains(err.Error(), "compression") {
		t.Fatalf("unknown filter: %v", err)
	}
}
