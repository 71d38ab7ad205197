package systemd

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ListenFDsStart is the first inherited fd (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS: no process can have more fds open than
// the kernel's fs.nr_open ceiling, so a larger count is garbage.
const maxListenFDs = 1 << 20

// UnknownName is the name of an inherited fd when the manager passed no
// LISTEN_FDNAMES.
const UnknownName = "unknown"

// ListenFDs returns the fds the service manager passed to this process,
// fd 3 on, each named by its LISTEN_FDNAMES entry (os.File.Name), with
// FD_CLOEXEC set. None are ours when LISTEN_PID is unset or names another
// process. It unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES whatever
// it finds. An error means the variables are malformed or name fds that
// are not open: nothing inherited should then be trusted.
func ListenFDs() ([]*os.File, error) {
	pid := os.Getenv("LISTEN_PID")
	fds := os.Getenv("LISTEN_FDS")
	names, namesSet := os.LookupEnv("LISTEN_FDNAMES")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	n, fdNames, err := parseListenEnv(pid, fds, names, namesSet, os.Getpid())
	if err != nil {
		return nil, err
	}
	files := make([]*os.File, 0, n)
	for i := range n {
		fd := ListenFDsStart + i
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("LISTEN_FDS=%d but fd %d (%s): %w", n, fd, fdNames[i], err)
		}
		files = append(files, os.NewFile(uintptr(fd), fdNames[i]))
	}
	return files, nil
}

// parseListenEnv is sd_listen_fds_with_names on the variables' values
// ("" for unset; namesSet tells an empty LISTEN_FDNAMES from none) and our
// pid: how many fds are ours, and their names.
func parseListenEnv(pid, fds, names string, namesSet bool, self int) (int, []string, error) {
	if pid == "" {
		return 0, nil, nil
	}
	p, err := strconv.Atoi(pid)
	if err != nil || p <= 0 {
		return 0, nil, fmt.Errorf("LISTEN_PID %q: not a pid", pid)
	}
	if p != self {
		return 0, nil, nil // passed to an ancestor, not to us
	}
	if fds == "" {
		return 0, nil, nil
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > maxListenFDs {
		return 0, nil, fmt.Errorf("LISTEN_FDS %q: want a count of fds", fds)
	}
	if n == 0 {
		return 0, nil, nil
	}
	if !namesSet {
		out := make([]string, n)
		for i := range out {
			out[i] = UnknownName
		}
		return n, out, nil
	}
	out := strings.Split(names, ":")
	if len(out) != n {
		return 0, nil, fmt.Errorf("LISTEN_FDNAMES %q names %d fds, LISTEN_FDS says %d", names, len(out), n)
	}
	for _, name := range out {
		if err := checkFDName(name); err != nil {
			return 0, nil, fmt.Errorf("LISTEN_FDNAMES: %w", err)
		}
	}
	return n, out, nil
}

// Listener makes an inherited fd a net.Listener of network ("unix",
// "unixpacket" or "tcp"), after checking it is a listening socket of
// that kind. It closes f either way (the listener holds its own dup).
func Listener(f *os.File, network string) (net.Listener, error) {
	defer f.Close()
	if err := checkListening(f, network); err != nil {
		return nil, err
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("inherited %s: %w", f.Name(), err)
	}
	return l, nil
}

// checkListening reads the socket's domain, type and listening state
// (what sd_is_socket checks).
func checkListening(f *os.File, network string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("inherited %s: %w", f.Name(), err)
	}
	var domain, typ, listening int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); serr != nil {
			return
		}
		if typ, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); serr != nil {
			return
		}
		listening, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	}); err != nil {
		return fmt.Errorf("inherited %s: %w", f.Name(), err)
	}
	if serr != nil {
		return fmt.Errorf("inherited %s is not a socket: %w", f.Name(), serr)
	}
	got := sockKind(domain, typ)
	if got != network {
		return fmt.Errorf("inherited %s is a %s socket, want %s", f.Name(), got, network)
	}
	if listening == 0 {
		return fmt.Errorf("inherited %s is a %s socket that does not listen (want ListenStream=/ListenSequentialPacket= with Accept=no)", f.Name(), got)
	}
	return nil
}

// sockKind names a socket domain and type as Go's net package does.
func sockKind(domain, typ int) string {
	switch {
	case domain == unix.AF_UNIX && typ == unix.SOCK_STREAM:
		return "unix"
	case domain == unix.AF_UNIX && typ == unix.SOCK_SEQPACKET:
		return "unixpacket"
	case domain == unix.AF_UNIX && typ == unix.SOCK_DGRAM:
		return "unixgram"
	case (domain == unix.AF_INET || domain == unix.AF_INET6) && typ == unix.SOCK_STREAM:
		return "tcp"
	case (domain == unix.AF_INET || domain == unix.AF_INET6) && typ == unix.SOCK_DGRAM:
		return "udp"
	}
	return fmt.Sprintf("domain %d type %d", domain, typ)
}

// FDStoreFromEnv returns how many fds the manager's fd store takes for
// this service ($FDSTORE, which systemd 254 and later set from
// FileDescriptorStoreMax=), 0 when it does not say; it unsets FDSTORE.
// Earlier managers do not say: a daemon that stores fds only when told
// stores none under them, rather than fds the manager would drop.
func FDStoreFromEnv() int {
	v, _ := os.LookupEnv("FDSTORE")
	os.Unsetenv("FDSTORE")
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
