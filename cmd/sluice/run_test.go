package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkShimSocket: a listening socket passes; a socket file nobody
// listens on (a gateway gone), a missing path and no socket at all are
// refused with the reason, before the program runs.
func TestCheckShimSocket(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.sock")
	l, err := net.Listen("unixpacket", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := checkShimSocket(live); err != nil {
		t.Fatalf("a listening socket: %v", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ls, err := net.Listen("unixpacket", stale)
	if err != nil {
		t.Fatal(err)
	}
	ls.(*net.UnixListener).SetUnlinkOnClose(false)
	ls.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("the stale socket file is gone: %v", err)
	}
	for _, c := range []struct{ path, want string }{
		{stale, "cannot be reached"},
		{filepath.Join(dir, "missing.sock"), "cannot be reached"},
		{"", "no shim socket"},
	} {
		if err := checkShimSocket(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.path, err, c.want)
		}
	}
}
