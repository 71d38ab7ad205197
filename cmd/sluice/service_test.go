package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestSameAddress: an inherited socket matches its flag only where
// clients told the flag's address would reach it.
func TestSameAddress(t *testing.T) {
	wd, _ := os.Getwd()
	cases := []struct {
		got  net.Addr
		want string
		ok   bool
	}{
		{&net.UnixAddr{Name: "/run/sluice/api.sock"}, "/run/sluice/api.sock", true},
		{&net.UnixAddr{Name: filepath.Join(wd, "d/api.sock")}, "d/api.sock", true},
		{&net.UnixAddr{Name: "/run/sluice/api.sock"}, "/run/sluice/nbd.sock", false},
		{&net.UnixAddr{Name: "/run/sluice/api.sock.4242.tmp"}, "/run/sluice/api.sock", true}, // made by listen.Unix, back from the fd store
		{&net.UnixAddr{Name: "/run/sluice/api.sock.x.tmp"}, "/run/sluice/api.sock", false},
		{&net.UnixAddr{Name: "/run/sluice/api.sock..tmp"}, "/run/sluice/api.sock", false},
		{&net.UnixAddr{Name: "/run/sluice/api.sock.4242"}, "/run/sluice/api.sock", false},
		{&net.UnixAddr{Name: "/run/other/nbd.sock.4242.tmp"}, "/run/sluice/api.sock", false},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10809}, "127.0.0.1:10809", true},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10809}, "127.0.0.1:10810", false},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 10809}, "127.0.0.1:10809", false},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 9100}, ":9100", true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9100}, "0.0.0.0:9100", true},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9100}, ":9100", false},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 10809}, "[::1]:10809", true},
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10809}, "not an address", false},
	}
	for _, c := range cases {
		if err := sameAddress(c.got, c.want); (err == nil) != c.ok {
			t.Errorf("socket %s, flag %q: %v, want match %v", c.got, c.want, err, c.ok)
		}
	}
}

// TestMatchInherited: fds are matched by name to the flags' listeners;
// one without a name (no LISTEN_FDNAMES), a duplicate or one for a
// disabled socket is refused, and every fd is closed then.
func TestMatchInherited(t *testing.T) {
	dir := t.TempDir()
	a := &gatewayArgs{APISocket: filepath.Join(dir, "api.sock"), NBDSocket: "none", ShimSocket: "none"}
	// socket makes a listening socket at path and names its fd.
	socket := func(path, name string) *os.File {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		f, err := l.(*net.UnixListener).File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd, err := syscall.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), name)
	}
	for names, want := range map[string]string{
		"unknown": "has no name (no LISTEN_FDNAMES): set FileDescriptorName=",
		"nbd":     "--nbd-socket disables that socket",
		"api,api": `inherited fd 4: a second socket named "api"`,
	} {
		var files []*os.File
		for i, n := range strings.Split(names, ",") {
			path := filepath.Join(t.TempDir(), n)
			if i == 0 && n == "api" {
				path = a.APISocket // the first is where the flag says
			}
			files = append(files, socket(path, n))
		}
		_, _, err := matchInherited(a, files)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", names, err, want)
		}
		for _, f := range files {
			if f.Close() == nil {
				t.Errorf("%s: %s left open", names, f.Name())
			}
		}
	}
}
