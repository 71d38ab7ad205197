package spdkbackend

import (
	"errors"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	for _, c := range []struct {
		in   string
		want URI
	}{
		{"spdk:/var/tmp/spdk.sock?bdev=Nvme0n1", URI{"/var/tmp/spdk.sock", "Nvme0n1"}},
		{"spdk:?bdev=M0", URI{"", "M0"}},
		{"spdk:/run//spdk/../x.sock?bdev=a%20b", URI{"/run/x.sock", "a b"}},
		{"spdk:/s?bdev=lvs/lvol0", URI{"/s", "lvs/lvol0"}},
	} {
		got, err := ParseURI(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"/dev/sdb", "prefix"},
		{"spdk:/s", "no ?bdev"},
		{"spdk:/s?", "no bdev name"},
		{"spdk:/s?bdev=", "no bdev name"},
		{"spdk:rel.sock?bdev=M0", "not an absolute path"},
		{"spdk:/s?bdev=M0&bdev=M1", "2 times"},
		{"spdk:/s?bdev=M0&size=1G", "unknown parameter \"size\""},
		{"spdk:/s?bdev=M%00", "non-printable"},
		{"spdk:/s?bdev=M%zz", "invalid URL escape"},
		{"spdk:/" + strings.Repeat("x", 200) + "?bdev=M0", "at most 107"},
		{"spdk:/s?bdev=" + strings.Repeat("x", 300), "at most 255"},
	} {
		_, err := ParseURI(c.in)
		if !errors.Is(err, ErrBadURI) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseURI(%q) = %v; want ErrBadURI mentioning %q", c.in, err, c.want)
		}
	}
}

// FuzzParseURI: ParseURI never panics; what it accepts formats back into a
// string that parses to the same URI, with an absolute socket path (or
// none) and a printable, non-empty bdev name.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"spdk:/var/tmp/spdk.sock?bdev=Nvme0n1", "spdk:?bdev=M0", "spdk:/s?bdev=a%20b&x=1", "spdk:/a/../b?bdev=%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			if !errors.Is(err, ErrBadURI) {
				t.Fatalf("error %v does not wrap ErrBadURI", err)
			}
			return
		}
		if u.Bdev == "" || (u.Socket != "" && u.Socket[0] != '/') || len(u.Socket) > maxSocketPath {
			t.Fatalf("ParseURI(%q) accepted %+v", s, u)
		}
		again, err := ParseURI(u.String())
		if err != nil || again != u {
			t.Fatalf("round trip of %q: %q parses to %+v, %v; want %+v", s, u.String(), again, err, u)
		}
	})
}
