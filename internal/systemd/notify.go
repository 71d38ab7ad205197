// Package systemd speaks the two protocols a daemon shares with systemd
// (or any service manager that implements them), without libsystemd:
//
//   - the notify protocol (sd_notify(3)): datagrams of newline-separated
//     VAR=value assignments sent to the unix socket named by NOTIFY_SOCKET
//     (a path, or an abstract name written with a leading '@'), which may
//     carry file descriptors (SCM_RIGHTS) for the manager's fd store;
//   - socket activation and the fd store's return path (sd_listen_fds(3)):
//     file descriptors inherited from fd 3 on, counted by LISTEN_FDS, meant
//     for the process LISTEN_PID names, named by LISTEN_FDNAMES.
//
// # Notifier
//
// NotifierFromEnv reads NOTIFY_SOCKET; with no variable it returns a nil
// *Notifier, whose methods do nothing and return nil, so a daemon calls
// them unconditionally and behaves the same outside systemd. Each method
// sends one datagram:
//
//	Ready(status)       READY=1\nSTATUS=status      start-up is complete
//	Stopping(status)    STOPPING=1\nSTATUS=status   shutdown has begun
//	Status(s)           STATUS=s                    shown by systemctl status
//	WatchdogPing()      WATCHDOG=1                  the daemon is alive
//	MainPID(pid)        MAINPID=pid                 another process is the main one
//	StoreFDs(name, fs)  FDSTORE=1\nFDNAME=name      keep these fds across a restart
//	RemoveFDs(name)     FDSTOREREMOVE=1\nFDNAME=name
//
// A STATUS text is one line: newlines in it become spaces, since a newline
// ends an assignment. A datagram over 4096 bytes (the manager's buffer) or
// more than 253 fds (SCM_MAX_FD) is refused, as is an FDNAME systemd would
// reject (empty, over 255 bytes, ':' or a control character in it).
//
// # Watchdog
//
// WatchdogFromEnv reads WATCHDOG_USEC and WATCHDOG_PID (sd_watchdog_enabled):
// the interval within which the manager wants a WATCHDOG=1, or 0 when no
// watchdog is asked of this process (no variable, or WATCHDOG_PID names
// another process). Notifier.RunWatchdog pings at half that interval while
// a health check passes, so a daemon that hangs, or whose check fails, is
// killed and restarted by the manager; a failing check also sets STATUS
// to say why.
//
// # Inherited fds
//
// ListenFDs returns the fds passed to this process, as sd_listen_fds does:
// only when LISTEN_PID equals our pid (otherwise they were meant for a
// parent and none are ours); each gets FD_CLOEXEC so children we start do
// not inherit it; each os.File is named by its LISTEN_FDNAMES entry
// ("unknown" when the manager gave no names). It unsets LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES, so a child is never told about fds it
// does not have. Listener turns one into a net.Listener, checking that it
// is a listening socket of the expected network.
//
// Environment variables are read once, by the *FromEnv functions and
// ListenFDs, and unset after reading (NOTIFY_SOCKET, WATCHDOG_USEC and
// WATCHDOG_PID too): children the daemon starts (fusermount, mkfs) must
// not talk to the manager in its name. Nothing is global: the socket
// belongs to the Notifier.
package systemd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxMessage is the largest datagram the manager reads (NOTIFY_BUFFER_MAX,
// PIPE_BUF in systemd).
const MaxMessage = 4096

// MaxFDs is the most fds one datagram carries (the kernel's SCM_MAX_FD).
const MaxFDs = 253

// Notifier sends notifications to the service manager. A nil *Notifier
// sends nothing.
type Notifier struct {
	fd   int
	addr *unix.SockaddrUnix
}

// NotifierFromEnv returns a Notifier for NOTIFY_SOCKET and unsets it, or
// nil when it is not set.
func NotifierFromEnv() (*Notifier, error) {
	socket, ok := os.LookupEnv("NOTIFY_SOCKET")
	if !ok {
		return nil, nil
	}
	os.Unsetenv("NOTIFY_SOCKET")
	return NewNotifier(socket)
}

// NewNotifier returns a Notifier that sends to socket: a path, or an
// abstract socket name written with a leading '@'. An empty socket gives
// nil (no manager listens).
func NewNotifier(socket string) (*Notifier, error) {
	if socket == "" {
		return nil, nil
	}
	addr, err := parseNotifySocket(socket)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &Notifier{fd: fd, addr: addr}, nil
}

// parseNotifySocket checks NOTIFY_SOCKET's value: an absolute path or
// '@' and an abstract name (sent with a leading NUL), short enough for
// sockaddr_un. Other kinds systemd may name (vsock:) are not supported.
func parseNotifySocket(s string) (*unix.SockaddrUnix, error) {
	if len(s) < 2 || (s[0] != '/' && s[0] != '@') {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: want an absolute path or an @abstract name", s)
	}
	if len(s) > 107 || strings.IndexByte(s, 0) >= 0 {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: not a valid unix socket address", s)
	}
	// x/sys/unix writes an address starting with '@' as an abstract name.
	return &unix.SockaddrUnix{Name: s}, nil
}

// Close releases the socket.
func (n *Notifier) Close() error {
	if n == nil {
		return nil
	}
	return unix.Close(n.fd)
}

// Send sends the assignments (each "VAR=value", without newlines) as one
// datagram.
func (n *Notifier) Send(assignments ...string) error {
	return n.send(nil, assignments...)
}

func (n *Notifier) send(fds []int, assignments ...string) error {
	if n == nil {
		return nil
	}
	for _, a := range assignments {
		if strings.IndexByte(a, '\n') >= 0 || !strings.Contains(a, "=") {
			return fmt.Errorf("notify: %q is not one VAR=value assignment", a)
		}
	}
	msg := strings.Join(assignments, "\n")
	if len(msg) > MaxMessage {
		return fmt.Errorf("notify: message of %d bytes, over the %d the manager reads", len(msg), MaxMessage)
	}
	if len(fds) > MaxFDs {
		return fmt.Errorf("notify: %d fds in one message, over the kernel's %d", len(fds), MaxFDs)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for {
		err := unix.Sendmsg(n.fd, []byte(msg), oob, n.addr, unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("notify %s: %w", n.addr.Name, err)
		}
		return nil
	}
}

// Ready says start-up is complete, with a status line.
func (n *Notifier) Ready(status string) error {
	return n.Send("READY=1", "STATUS="+oneLine(status))
}

// Stopping says shutdown has begun, with a status line.
func (n *Notifier) Stopping(status string) error {
	return n.Send("STOPPING=1", "STATUS="+oneLine(status))
}

// Status sets the line systemctl status shows.
func (n *Notifier) Status(status string) error {
	return n.Send("STATUS=" + oneLine(status))
}

// WatchdogPing tells the manager the daemon is alive.
func (n *Notifier) WatchdogPing() error { return n.Send("WATCHDOG=1") }

// MainPID tells the manager that pid is now the service's main process
// (as a handover to a new binary would).
func (n *Notifier) MainPID(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("notify: MAINPID %d", pid)
	}
	return n.Send("MAINPID=" + strconv.Itoa(pid))
}

// StoreFDs hands files to the manager's fd store under name; they come
// back as inherited fds (ListenFDs) when the service is restarted. The
// unit needs FileDescriptorStoreMax= at least the number stored.
func (n *Notifier) StoreFDs(name string, files ...*os.File) error {
	if n == nil {
		return nil
	}
	if err := checkFDName(name); err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("notify: FDSTORE with no fds")
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	err := n.send(fds, "FDSTORE=1", "FDNAME="+name)
	for _, f := range files {
		runtime.KeepAlive(f) // no finalizer closes an fd before it is sent
	}
	return err
}

// RemoveFDs asks the manager to close and forget the stored fds named
// name.
func (n *Notifier) RemoveFDs(name string) error {
	if err := checkFDName(name); err != nil {
		return err
	}
	return n.Send("FDSTOREREMOVE=1", "FDNAME="+name)
}

// checkFDName applies systemd's fdname_is_valid: 1 to 255 printable
// ASCII characters other than ':'.
func checkFDName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("fd name %q: want 1 to 255 characters", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < ' ' || c > '~' || c == ':' {
			return fmt.Errorf("fd name %q: only printable ASCII other than ':'", name)
		}
	}
	return nil
}

// oneLine makes s a single STATUS value: a newline would end the
// assignment and start a bogus one.
func oneLine(s string) string {
	return strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
}
