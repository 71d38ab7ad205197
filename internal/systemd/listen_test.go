package systemd

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestParseListenEnv: sd_listen_fds_with_names's rules.
func TestParseListenEnv(t *testing.T) {
	const self = 1000
	cases := []struct {
		pid, fds, names string
		namesSet        bool
		want            []string
		err             bool
	}{
		{"", "", "", false, nil, false},       // nothing passed
		{"", "2", "a:b", true, nil, false},    // no LISTEN_PID: not ours
		{"999", "2", "a:b", true, nil, false}, // our parent's
		{"1000", "", "", false, nil, false},   // no LISTEN_FDS
		{"1000", "0", "x", true, nil, false},  // none, names ignored
		{"1000", "2", "api:nbd", true, []string{"api", "nbd"}, false},
		{"1000", "2", "", false, []string{"unknown", "unknown"}, false}, // no names given
		{"1000", "1", "sluice-gateway.socket", true, []string{"sluice-gateway.socket"}, false},
		{"1000", "2", "api", true, nil, true},      // fewer names than fds
		{"1000", "1", "api:nbd", true, nil, true},  // more names
		{"1000", "1", "", true, nil, true},         // an empty name
		{"1000", "2", "api:", true, nil, true},     // an empty name
		{"1000", "1", "a\tb", true, nil, true},     // a control character
		{"x", "1", "api", true, nil, true},         // LISTEN_PID not a number
		{"0", "1", "api", true, nil, true},         // nor a pid
		{"1000", "-1", "", false, nil, true},       // negative count
		{"1000", "two", "", false, nil, true},      // not a count
		{"1000", "99999999", "", false, nil, true}, // more than a process can hold
		{"1000", " 1", "api", true, nil, true},     // no spaces
		{"1000", "1", "api", true, []string{"api"}, false},
	}
	for _, c := range cases {
		n, names, err := parseListenEnv(c.pid, c.fds, c.names, c.namesSet, self)
		if (err != nil) != c.err || n != len(c.want) || !slices.Equal(names, c.want) {
			t.Errorf("LISTEN_PID=%q LISTEN_FDS=%q LISTEN_FDNAMES=%q (set %v): %d %q %v; want %q (error %v)",
				c.pid, c.fds, c.names, c.namesSet, n, names, err, c.want, c.err)
		}
	}
}

// FuzzListenEnv: no input panics; an accepted environment names exactly
// as many fds as it counts, each name valid, and the names given are the
// names returned.
func FuzzListenEnv(f *testing.F) {
	f.Add("1000", "2", "api:nbd", true)
	f.Add("1000", "3", "", false)
	f.Add("999", "1", "x", true)
	f.Add("1000", "1", "a::b", true)
	f.Fuzz(func(t *testing.T, pid, fds, names string, namesSet bool) {
		n, got, err := parseListenEnv(pid, fds, names, namesSet, 1000)
		if err != nil {
			if n != 0 || got != nil {
				t.Fatal("error with fds")
			}
			return
		}
		if n < 0 || n > maxListenFDs || len(got) != n {
			t.Fatalf("%d fds, %d names", n, len(got))
		}
		if p, _ := strconv.Atoi(pid); n > 0 && p != 1000 {
			t.Fatalf("fds for LISTEN_PID %q, not ours", pid)
		}
		for _, name := range got {
			if checkFDName(name) != nil {
				t.Fatalf("invalid name %q accepted", name)
			}
		}
		if n > 0 && namesSet && strings.Join(got, ":") != names {
			t.Fatalf("names %q from %q", got, names)
		}
	})
}

// TestListenFDsNotOurs: variables meant for another process are unset
// and give nothing; malformed ones are an error, also unset, and no fd
// is touched (none is opened or closed: the check comes first).
func TestListenFDsNotOurs(t *testing.T) {
	for _, c := range []struct {
		pid, fds, names string
		err             bool
	}{
		{"1", "2", "a:b", false},
		{fmt.Sprint(os.Getpid()), "2", "a", true},
		{fmt.Sprint(os.Getpid()), "x", "a", true},
	} {
		t.Setenv("LISTEN_PID", c.pid)
		t.Setenv("LISTEN_FDS", c.fds)
		t.Setenv("LISTEN_FDNAMES", c.names)
		files, err := ListenFDs()
		if len(files) != 0 || (err != nil) != c.err {
			t.Errorf("LISTEN_PID=%s LISTEN_FDS=%s LISTEN_FDNAMES=%s: %d files, %v", c.pid, c.fds, c.names, len(files), err)
		}
		for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
			if _, set := os.LookupEnv(v); set {
				t.Errorf("%s still set", v)
			}
		}
	}
}

const childEnv = "SLUICE_SYSTEMD_TEST_CHILD"

// TestListenFDsInherited runs this test binary as a socket-activated
// process: the sockets are made here and passed as fds 3 on, with
// LISTEN_PID set in the child by a shell that then execs it (the child's
// pid is not known before the fork; systemd sets it there the same way).
// TestListenFDsChild, in the child, checks what it inherited.
func TestListenFDsInherited(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer tcp.Close()
	api, err := net.Listen("unix", filepath.Join(dir, "api.sock"))
	must(t, err)
	defer api.Close()
	shim, err := net.Listen("unixpacket", filepath.Join(dir, "shim.sock"))
	must(t, err)
	defer shim.Close()
	plain, err := os.Create(filepath.Join(dir, "plain"))
	must(t, err)
	defer plain.Close()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	must(t, err)
	pairFile := os.NewFile(uintptr(pair[0]), "pair")
	defer pairFile.Close()
	defer unix.Close(pair[1])

	var files []*os.File
	for _, l := range []net.Listener{tcp, api, shim, tcp} {
		f, err := l.(interface{ File() (*os.File, error) }).File()
		must(t, err)
		defer f.Close()
		files = append(files, f)
	}
	files = append(files, plain, pairFile)
	var ids []string
	for _, f := range files {
		st := fstat(t, int(f.Fd()))
		ids = append(ids, fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	}

	cmd := exec.Command(sh, "-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0], "-test.run", "^TestListenFDsChild$", "-test.v")
	cmd.ExtraFiles = files
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(ids, ","),
		"LISTEN_FDS=6", "LISTEN_FDNAMES=nbd-tcp:api:shim:wrong-kind:plain:pair")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestListenFDsChild") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestListenFDsChild is the socket-activated process of
// TestListenFDsInherited (skipped when run on its own).
func TestListenFDsChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("run by TestListenFDsInherited")
	}
	files, err := ListenFDs()
	must(t, err)
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if _, set := os.LookupEnv(v); set {
			t.Errorf("%s still set", v)
		}
	}
	ids := strings.Split(spec, ",")
	var names []string
	for i, f := range files {
		names = append(names, f.Name())
		fd := ListenFDsStart + i
		if int(f.Fd()) != fd {
			t.Errorf("file %d is fd %d", i, f.Fd())
		}
		st := fstat(t, fd)
		if got := fmt.Sprintf("%d:%d", st.Dev, st.Ino); got != ids[i] {
			t.Errorf("fd %d is %s, the parent passed %s", fd, got, ids[i])
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("fd %d: FD_CLOEXEC not set (flags %#x, %v)", fd, flags, err)
		}
	}
	if want := []string{"nbd-tcp", "api", "shim", "wrong-kind", "plain", "pair"}; !slices.Equal(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}

	// The listeners serve: a connection to each is accepted here.
	for i, network := range []string{"tcp", "unix", "unixpacket"} {
		l, err := Listener(files[i], network)
		must(t, err)
		c, err := net.Dial(l.Addr().Network(), l.Addr().String())
		must(t, err)
		s, err := l.Accept()
		must(t, err)
		s.Close()
		c.Close()
		l.Close()
	}
	for i, want := range map[int]string{3: "is a tcp socket, want unix", 4: "is not a socket", 5: "does not listen"} {
		if _, err := Listener(files[i], "unix"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Listener of %s: %v, want an error saying %q", names[i], err, want)
		}
	}
}
