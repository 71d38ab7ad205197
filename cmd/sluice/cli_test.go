package main

import (
	"reflect"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"4096": 4096, "10G": 10 << 30, "10GiB": 10 << 30, "10g": 10 << 30, "512M": 512 << 20,
		"512MiB": 512 << 20, "64K": 64 << 10, "64KiB": 64 << 10, "1T": 1 << 40, "2TiB": 2 << 40,
		"1.5G": 3 << 29, "0": 0, " 8 MiB ": 8 << 20,
	}
	for in, want := range good {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "10X", "10GB ish", "1.1", "99999999999T", "abc"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 4096: "4KiB", 10 << 30: "10GiB", 3 << 19: "1.5MiB", 1000: "1000B"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestInterspersedFlags(t *testing.T) {
	app := newApp()
	cases := []struct{ in, want []string }{
		{
			[]string{"sluice", "volume", "create", "db", "--tenant", "acme", "--size", "10G", "--read-only"},
			[]string{"sluice", "volume", "create", "--tenant", "acme", "--size", "10G", "--read-only", "db"},
		},
		{ // global flags move to the client command, which declares them too
			[]string{"sluice", "--api-socket", "/x", "volume", "info", "a/b", "--json"},
			[]string{"sluice", "volume", "info", "--api-socket", "/x", "--json", "a/b"},
		},
		{
			[]string{"sluice", "--json", "--api-socket=/x", "volume", "list"},
			[]string{"sluice", "volume", "list", "--json", "--api-socket=/x"},
		},
		{
			[]string{"sluice", "volume", "list", "--api-socket", "/x", "--json"},
			[]string{"sluice", "volume", "list", "--api-socket", "/x", "--json"},
		},
		{ // a parent command does not declare them: they stay
			[]string{"sluice", "--api-socket", "/x", "volume"},
			[]string{"sluice", "--api-socket", "/x", "volume"},
		},
		{ // the daemons' own flags are theirs
			[]string{"sluice", "--api-socket", "/x", "gateway", "--data-dir", "d"},
			[]string{"sluice", "--api-socket", "/x", "gateway", "--data-dir", "d"},
		},
		{
			[]string{"sluice", "volume", "resize", "a/b", "--size=2G"},
			[]string{"sluice", "volume", "resize", "--size=2G", "a/b"},
		},
	}
	for _, c := range cases {
		if got := interspersed(app, c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("interspersed(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}
