package systemd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// manager is the service manager's end of NOTIFY_SOCKET: a unixgram
// socket the test listens on.
type manager struct {
	t    *testing.T
	conn *net.UnixConn
	addr string
}

func listenManager(t *testing.T, addr string) *manager {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &manager{t: t, conn: c, addr: addr}
}

// recv returns the next datagram and the fds it carried; it fails the
// test after a generous wait.
func (m *manager) recv() (string, []int) {
	m.t.Helper()
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(MaxFDs*4))
	m.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, oobn, _, _, err := m.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		m.t.Fatalf("reading a notification: %v", err)
	}
	var fds []int
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		m.t.Fatal(err)
	}
	for _, cm := range msgs {
		got, err := unix.ParseUnixRights(&cm)
		if err != nil {
			m.t.Fatal(err)
		}
		fds = append(fds, got...)
	}
	return string(buf[:n]), fds
}

func newNotifier(t *testing.T, socket string) *Notifier {
	t.Helper()
	n, err := NewNotifier(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestMessages: each notification arrives as one datagram of exactly
// the bytes sd_notify(3) documents, on a socket path and on an abstract
// socket.
func TestMessages(t *testing.T) {
	abstract := fmt.Sprintf("@sluice-systemd-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	for _, addr := range []string{filepath.Join(t.TempDir(), "notify"), abstract} {
		m := listenManager(t, addr)
		n := newNotifier(t, addr)
		cases := []struct {
			send func() error
			want string
		}{
			{func() error { return n.Ready("serving 3 volumes") }, "READY=1\nSTATUS=serving 3 volumes"},
			{func() error { return n.Status("two\nlines\r\nhere") }, "STATUS=two lines here"},
			{func() error { return n.Stopping("draining") }, "STOPPING=1\nSTATUS=draining"},
			{n.WatchdogPing, "WATCHDOG=1"},
			{func() error { return n.MainPID(4242) }, "MAINPID=4242"},
			{func() error { return n.RemoveFDs("api") }, "FDSTOREREMOVE=1\nFDNAME=api"},
			{func() error { return n.Send("A=1", "B=x=y") }, "A=1\nB=x=y"},
		}
		for _, c := range cases {
			if err := c.send(); err != nil {
				t.Fatalf("%s: sending %q: %v", addr, c.want, err)
			}
			got, fds := m.recv()
			if got != c.want || len(fds) != 0 {
				t.Fatalf("%s: got %q with %d fds, want %q", addr, got, len(fds), c.want)
			}
		}
	}
}

// TestRefusals: what the manager would misread is refused before sending.
func TestRefusals(t *testing.T) {
	m := listenManager(t, filepath.Join(t.TempDir(), "notify"))
	n := newNotifier(t, m.addr)
	for _, err := range []error{
		n.Send("READY=1\nSTATUS=x"),
		n.Send("READY"),
		n.Send("STATUS=" + strings.Repeat("x", MaxMessage)),
		n.RemoveFDs(""),
		n.RemoveFDs("a:b"),
		n.RemoveFDs("tab\there"),
		n.RemoveFDs(strings.Repeat("n", 256)),
		n.StoreFDs("none"),
		n.MainPID(0),
	} {
		if err == nil {
			t.Error("a malformed notification was sent")
		}
	}
	for _, s := range []string{"relative/path", "@", "/" + strings.Repeat("p", 107), "vsock:2:1234"} {
		if _, err := NewNotifier(s); err == nil {
			t.Errorf("NOTIFY_SOCKET %q accepted", s)
		}
	}
	// Nothing reached the manager.
	m.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := m.conn.ReadFrom(make([]byte, 16)); err == nil {
		t.Error("a refused notification reached the manager")
	}
}

// TestNilNotifier: without NOTIFY_SOCKET every call does nothing.
func TestNilNotifier(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n, err := NotifierFromEnv()
	if n != nil || err != nil {
		t.Fatalf("no NOTIFY_SOCKET: %v %v", n, err)
	}
	f, _ := os.Open(os.DevNull)
	defer f.Close()
	for _, err := range []error{n.Ready("x"), n.Stopping("x"), n.Status("x"), n.WatchdogPing(),
		n.MainPID(1), n.StoreFDs("x", f), n.RemoveFDs("x"), n.Close()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	n.RunWatchdog(context.Background(), Watchdog{Interval: time.Second}) // returns at once
}

// TestNotifierFromEnv: the variable is read and unset.
func TestNotifierFromEnv(t *testing.T) {
	m := listenManager(t, filepath.Join(t.TempDir(), "notify"))
	t.Setenv("NOTIFY_SOCKET", m.addr)
	n, err := NotifierFromEnv()
	if err != nil || n == nil {
		t.Fatalf("NotifierFromEnv: %v %v", n, err)
	}
	defer n.Close()
	if _, set := os.LookupEnv("NOTIFY_SOCKET"); set {
		t.Error("NOTIFY_SOCKET still set")
	}
	must(t, n.Ready("up"))
	if got, _ := m.recv(); got != "READY=1\nSTATUS=up" {
		t.Fatalf("got %q", got)
	}
}

// TestStoreFDs: FDSTORE carries the fds with SCM_RIGHTS; what the manager
// receives are the same open files (same device and inode).
func TestStoreFDs(t *testing.T) {
	m := listenManager(t, filepath.Join(t.TempDir(), "notify"))
	n := newNotifier(t, m.addr)
	file, err := os.CreateTemp(t.TempDir(), "stored")
	must(t, err)
	defer file.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	lf, err := l.(*net.TCPListener).File()
	must(t, err)
	defer lf.Close()

	must(t, n.StoreFDs("api", file, lf))
	got, fds := m.recv()
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if got != "FDSTORE=1\nFDNAME=api" {
		t.Fatalf("message %q", got)
	}
	if len(fds) != 2 {
		t.Fatalf("received %d fds, want 2", len(fds))
	}
	for i, f := range []*os.File{file, lf} {
		want, have := fstat(t, int(f.Fd())), fstat(t, fds[i])
		if want.Dev != have.Dev || want.Ino != have.Ino {
			t.Errorf("fd %d: received dev %d ino %d, sent dev %d ino %d", i, have.Dev, have.Ino, want.Dev, want.Ino)
		}
		if fds[i] == int(f.Fd()) {
			t.Errorf("fd %d: received the sender's own fd number %d, not a new fd", i, fds[i])
		}
	}
	// The received socket is the listener: a connection to it is
	// accepted there.
	c, err := net.Dial("tcp", l.Addr().String())
	must(t, err)
	defer c.Close()
	nfd, _, err := unix.Accept(fds[1])
	must(t, err)
	unix.Close(nfd)
}

func fstat(t *testing.T, fd int) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Fstat(fd, &st))
	return st
}

// TestWatchdogCadence: pings come at half the interval; a failing check
// stops them and says why in STATUS; when it passes again the status is
// restored and pings resume.
func TestWatchdogCadence(t *testing.T) {
	m := listenManager(t, filepath.Join(t.TempDir(), "notify"))
	n := newNotifier(t, m.addr)
	const interval = 400 * time.Millisecond
	var sick atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunWatchdog(ctx, Watchdog{Interval: interval, Status: "serving", Check: func(ctx context.Context) error {
			if sick.Load() {
				return errors.New("store stuck")
			}
			return nil
		}})
	}()
	defer func() { cancel(); <-done }()

	const pings = 6
	var at []time.Time
	for len(at) < pings {
		got, _ := m.recv()
		if got != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
		at = append(at, time.Now())
	}
	span := at[pings-1].Sub(at[0])
	period := interval / 2
	// A ticker never fires early; a busy machine may make it late, so the
	// upper bound is loose. What systemd needs: more than one ping per
	// interval on average.
	if min, max := time.Duration(pings-1)*period*8/10, time.Duration(pings-1)*interval; span < min || span > max {
		t.Fatalf("%d pings over %v: want between %v and %v (ping every %v)", pings, span, min, max, period)
	}
	t.Logf("%d pings over %v (period %v)", pings, span, period)

	sick.Store(true)
	// Pings already sent may still be queued; then the check fails.
	for {
		got, _ := m.recv()
		if got == "STATUS=unhealthy: store stuck" {
			break
		}
		if got != "WATCHDOG=1" {
			t.Fatalf("got %q while the check turned failing", got)
		}
	}
	// Failing: no ping, only the status again.
	if got, _ := m.recv(); got != "STATUS=unhealthy: store stuck" {
		t.Fatalf("while failing: got %q", got)
	}
	sick.Store(false)
	for {
		got, _ := m.recv()
		if got == "STATUS=serving" {
			break
		}
		if got != "STATUS=unhealthy: store stuck" {
			t.Fatalf("got %q while the check recovered", got)
		}
	}
	if got, _ := m.recv(); got != "WATCHDOG=1" {
		t.Fatalf("after recovery: got %q, want WATCHDOG=1", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestParseWatchdog: sd_watchdog_enabled's rules.
func TestParseWatchdog(t *testing.T) {
	const self = 1000
	cases := []struct {
		usec, pid string
		want      time.Duration
		err       bool
	}{
		{"", "", 0, false},
		{"", "1000", 0, false},
		{"30000000", "", 30 * time.Second, false},
		{"30000000", "1000", 30 * time.Second, false},
		{"30000000", "999", 0, false}, // our parent's
		{"0", "", 0, true},
		{"-5", "", 0, true},
		{"18446744073709551615", "", 0, true}, // USEC_INFINITY
		{"1e6", "", 0, true},
		{"1000", "x", 0, true},
		{"1000", "0", 0, true},
	}
	for _, c := range cases {
		got, err := parseWatchdog(c.usec, c.pid, self)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v %v, want %v (error %v)", c.usec, c.pid, got, err, c.want, c.err)
		}
	}
}

// TestWatchdogFromEnv: both variables are read and unset.
func TestWatchdogFromEnv(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
	d, err := WatchdogFromEnv()
	if err != nil || d != 2*time.Second {
		t.Fatalf("%v %v", d, err)
	}
	for _, v := range []string{"WATCHDOG_USEC", "WATCHDOG_PID"} {
		if _, set := os.LookupEnv(v); set {
			t.Errorf("%s still set", v)
		}
	}
}

// FuzzWatchdogEnv: no input panics; an accepted interval is positive.
func FuzzWatchdogEnv(f *testing.F) {
	f.Add("30000000", "1000")
	f.Add("18446744073709551615", "")
	f.Add("9223372036854775", "1000")
	f.Fuzz(func(t *testing.T, usec, pid string) {
		d, err := parseWatchdog(usec, pid, 1000)
		if err == nil && d < 0 {
			t.Fatalf("%q %q: interval %v", usec, pid, d)
		}
		if err != nil && d != 0 {
			t.Fatalf("error with an interval")
		}
		if usec == "" && d != 0 {
			t.Fatal("interval without WATCHDOG_USEC")
		}
	})
}
