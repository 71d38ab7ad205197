package door

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// testConn is a connection that serves until its client goes away, it is
// drained (unless stubborn) or closed.
type testConn struct {
	nc       net.Conn // nil for a connection given to Start
	ctx      context.Context
	stubborn atomic.Bool // ignores Drain
	panicky  bool        // Serve panics

	started   chan struct{}
	drained   chan struct{}
	closed    chan struct{}
	drainOnce sync.Once
	closeOnce sync.Once
	drains    atomic.Int32
}

func newTestConn(ctx context.Context, nc net.Conn) *testConn {
	return &testConn{nc: nc, ctx: ctx, started: make(chan struct{}),
		drained: make(chan struct{}), closed: make(chan struct{})}
}

func (c *testConn) Serve() {
	close(c.started)
	if c.panicky {
		panic("testConn: told to panic")
	}
	gone := make(chan struct{})
	if c.nc != nil {
		go func() {
			_, _ = io.Copy(io.Discard, c.nc)
			close(gone)
		}()
	}
	select {
	case <-gone:
	case <-c.drained:
	case <-c.closed:
	}
	if c.nc != nil {
		c.nc.Close()
	}
}

func (c *testConn) Drain() {
	c.drains.Add(1)
	if !c.stubborn.Load() {
		c.drainOnce.Do(func() { close(c.drained) })
	}
}

func (c *testConn) Close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		if c.nc != nil {
			c.nc.Close()
		}
	})
}

func (c *testConn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// records is a slog handler that keeps every record's message and
// attributes as text.
type records struct {
	mu    sync.Mutex
	lines []string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	return nil
}

// find returns the first line containing every one of parts.
func (r *records) find(parts ...string) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
next:
	for _, l := range r.lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		return l, true
	}
	return "", false
}

// harness is a Server of testConns serving one listener.
type harness struct {
	t     *testing.T
	s     *Server[*testConn]
	l     net.Listener
	log   *records
	mu    sync.Mutex
	conns []*testConn
	done  chan error // Serve's result
}

func start(t *testing.T, ctx context.Context, l net.Listener, opts Options) *harness {
	h := &harness{t: t, l: l, log: &records{}, done: make(chan error, 1)}
	opts.Name = "test"
	opts.Logger = slog.New(h.log)
	h.s = New[*testConn](opts)
	go func() { h.done <- h.s.Serve(ctx, l, h.open) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h.s.Shutdown(ctx)
	})
	return h
}

// open is the door's open: every connection is served, and remembered.
func (h *harness) open(ctx context.Context, nc net.Conn) (*testConn, bool) {
	c := newTestConn(ctx, nc)
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return c, true
}

func unixListener(t *testing.T) net.Listener {
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// dial connects and waits until the server serves the connection: its
// testConn is the n-th one opened.
func (h *harness) dial(n int) (net.Conn, *testConn) {
	h.t.Helper()
	nc, err := net.Dial(h.l.Addr().Network(), h.l.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { nc.Close() })
	var c *testConn
	testwait.For(h.t, "the connection is opened", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.conns) >= n {
			c = h.conns[n-1]
		}
		return c != nil
	})
	<-c.started
	return nc, c
}

// expectRefused: the server closes nc without serving it.
func expectRefused(t *testing.T, nc net.Conn) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on a refused connection: %v, want EOF", err)
	}
}

// failingListener fails its first n accepts with EMFILE, as a process
// out of file descriptors does, then accepts for real.
type failingListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// TestServeSurvivesEMFILE: failed accepts that pass are logged once and
// retried; the connection that comes after them is served.
func TestServeSurvivesEMFILE(t *testing.T) {
	l := &failingListener{Listener: unixListener(t)}
	l.fails.Store(4)
	h := start(t, context.Background(), l, Options{})
	h.dial(1)
	if l.fails.Load() >= 0 {
		t.Fatalf("the listener still has %d failures to give", l.fails.Load()+1)
	}
	if _, ok := h.log.find("ERROR accept failed", "door=test", "too many open files"); !ok {
		t.Fatalf("no accept failure logged: %q", h.log.lines)
	}
	if err := h.s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-h.done; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

// TestCapTotal: past MaxConns a connection is closed at once and the
// refusal logged; when a connection ends there is room again.
func TestCapTotal(t *testing.T) {
	h := start(t, context.Background(), unixListener(t), Options{MaxConns: 2})
	first, _ := h.dial(1)
	h.dial(2)
	extra, err := net.Dial("unix", h.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	expectRefused(t, extra)
	if line, ok := h.log.find("WARN test: connection refused: too many connections"); !ok || !strings.Contains(line, "max=2") {
		t.Fatalf("refusal log %q (found %v)", line, ok)
	}
	if n := h.s.Len(); n != 2 {
		t.Fatalf("Len() = %d after a refusal, want 2", n)
	}
	first.Close()
	testwait.For(t, "the closed connection leaves the registry", func() bool { return h.s.Len() == 1 })
	h.dial(3)
	if n := h.s.Len(); n != 2 {
		t.Fatalf("Len() = %d, want 2", n)
	}
}

// TestCapPerPeer: MaxConnsPerPeer counts each peer (a TCP client's IP) on
// its own: a second connection from 127.0.0.1 is refused while one from
// 127.0.0.2 is served.
func TestCapPerPeer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, context.Background(), l, Options{MaxConnsPerPeer: 1})
	h.dial(1) // from 127.0.0.1
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}
	again, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	expectRefused(t, again)
	d = net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	other, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	defer other.Close()
	testwait.For(t, "the other peer's connection is served", func() bool { return h.s.Len() == 2 })
}

// TestOpenRefuses: a socket open refuses is closed and not counted.
func TestOpenRefuses(t *testing.T) {
	l := unixListener(t)
	s := New[*testConn](Options{MaxConns: 1})
	go s.Serve(context.Background(), l, func(context.Context, net.Conn) (*testConn, bool) { return nil, false })
	defer s.Shutdown(context.Background())
	for range 3 { // past MaxConns: refusals do not hold a place
		nc, err := net.Dial("unix", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		expectRefused(t, nc)
		nc.Close()
	}
	s.mu.Lock()
	accepted := s.accepted
	s.mu.Unlock()
	if accepted != 0 || s.Len() != 0 {
		t.Fatalf("accepted %d, Len %d after refusals", accepted, s.Len())
	}
}

// TestShutdownDrains: Shutdown closes the listeners, drains every
// connection (accepted or started) and returns nil once they have ended,
// without closing any.
func TestShutdownDrains(t *testing.T) {
	h := start(t, context.Background(), unixListener(t), Options{})
	_, a := h.dial(1)
	_, b := h.dial(2)
	handed := newTestConn(context.Background(), nil)
	if !h.s.Start(handed) {
		t.Fatal("Start refused before Shutdown")
	}
	<-handed.started
	if n := h.s.Len(); n != 3 {
		t.Fatalf("Len() = %d, want 3", n)
	}
	if err := h.s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range []*testConn{a, b, handed} {
		if c.drains.Load() == 0 || c.isClosed() {
			t.Fatalf("conn drained %d times, closed %v", c.drains.Load(), c.isClosed())
		}
	}
	if n := h.s.Len(); n != 0 {
		t.Fatalf("Len() = %d after Shutdown", n)
	}
	if err := <-h.done; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if h.s.Start(newTestConn(context.Background(), nil)) {
		t.Fatal("Start accepted a connection after Shutdown")
	}
	if _, err := net.Dial("unix", h.l.Addr().String()); err == nil {
		t.Fatal("the listener still accepts after Shutdown")
	}
}

// TestShutdownForces: a connection that does not end when drained is
// closed once Shutdown's ctx ends, and Shutdown returns ctx's error.
func TestShutdownForces(t *testing.T) {
	h := start(t, context.Background(), unixListener(t), Options{})
	_, polite := h.dial(1)
	_, stubborn := h.dial(2)
	stubborn.stubborn.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- h.s.Shutdown(ctx) }()
	testwait.For(t, "both are drained and the polite one ends", func() bool {
		return stubborn.drains.Load() > 0 && h.s.Len() == 1
	})
	select {
	case err := <-res:
		t.Fatalf("Shutdown returned %v with a connection still serving", err)
	default:
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v, want context.Canceled", err)
	}
	if !stubborn.isClosed() || polite.isClosed() {
		t.Fatalf("closed: stubborn %v, polite %v; want only the stubborn one", stubborn.isClosed(), polite.isClosed())
	}
	if n := h.s.Len(); n != 0 {
		t.Fatalf("Len() = %d after a forced Shutdown", n)
	}
}

// TestServeCtxHardStop: when Serve's ctx ends, the connections it
// accepted are closed and their context cancelled, Serve returns ctx's
// error after them, and the connections of another Serve call and those
// given to Start are left alone.
func TestServeCtxHardStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	h := start(t, ctx, unixListener(t), Options{})
	_, a := h.dial(1)
	handed := newTestConn(context.Background(), nil)
	h.s.Start(handed)
	<-handed.started
	l2 := unixListener(t)
	go h.s.Serve(context.Background(), l2, h.open)
	other, err := net.Dial("unix", l2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	testwait.For(t, "the other listener's connection is served", func() bool { return h.s.Len() == 3 })
	cancel()
	if err := <-h.done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want context.Canceled", err)
	}
	if !a.isClosed() || a.ctx.Err() == nil {
		t.Fatalf("accepted connection: closed %v, ctx %v", a.isClosed(), a.ctx.Err())
	}
	h.mu.Lock()
	b := h.conns[1]
	h.mu.Unlock()
	if handed.isClosed() || b.isClosed() {
		t.Fatalf("closed: the started connection %v, the other listener's %v", handed.isClosed(), b.isClosed())
	}
	if n := h.s.Len(); n != 2 {
		t.Fatalf("Len() = %d, want 2", n)
	}
}

// TestConnContextOutlivesServe: after Shutdown makes Serve return, the
// connections' context stays live until the last of them has ended.
func TestConnContextOutlivesServe(t *testing.T) {
	h := start(t, context.Background(), unixListener(t), Options{})
	_, c := h.dial(1)
	c.stubborn.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- h.s.Shutdown(ctx) }()
	if err := <-h.done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if c.ctx.Err() != nil {
		t.Fatal("the connection's context ended with Serve, before the connection")
	}
	cancel()
	<-res
	testwait.For(t, "the context ends after the last connection", func() bool { return c.ctx.Err() != nil })
}

// TestServePanicRecovered: a panic escaping a connection's Serve is
// logged at ERROR with its stack, counted, and the connection closed and
// forgotten; the door serves on.
func TestServePanicRecovered(t *testing.T) {
	var panics atomic.Uint64
	log := &records{}
	s := New[*testConn](Options{Name: "test", Logger: slog.New(log), Panics: &panics})
	c := newTestConn(context.Background(), nil)
	c.panicky = true
	s.Start(c)
	testwait.For(t, "the panicking connection is gone", func() bool { return s.Len() == 0 })
	if !c.isClosed() || panics.Load() != 1 {
		t.Fatalf("closed %v, panics %d", c.isClosed(), panics.Load())
	}
	line, ok := log.find("ERROR test: connection panic", "panic=testConn: told to panic", "stack=goroutine")
	if !ok || !strings.Contains(line, "door.(*testConn).Serve") {
		t.Fatalf("panic log %q (found %v)", line, ok)
	}
	ok2 := newTestConn(context.Background(), nil)
	if !s.Start(ok2) {
		t.Fatal("Start refused after a panic")
	}
	<-ok2.started
}

// TestRecover: Recover recovers, logs with the stack, counts and calls
// then; Panicked logs the caller's attributes before the panic.
func TestRecover(t *testing.T) {
	var n atomic.Uint64
	log := &records{}
	then := false
	func() {
		defer Recover(slog.New(log), &n, "boom", func() { then = true })
		panic("at the disco")
	}()
	if n.Load() != 1 || !then {
		t.Fatalf("count %d, then called %v", n.Load(), then)
	}
	if _, ok := log.find("ERROR boom", "panic=at the disco", "stack=goroutine", "TestRecover"); !ok {
		t.Fatalf("log %q", log.lines)
	}
	func() {
		defer Recover(slog.New(log), nil, "quiet", nil) // no panic: nothing
	}()
	if _, ok := log.find("quiet"); ok {
		t.Fatal("Recover logged without a panic")
	}
	Panicked(slog.New(log), &n, "req", "p", "cmd", 3)
	if line, ok := log.find("ERROR req"); !ok || !strings.HasPrefix(line, "ERROR req cmd=3 panic=p stack=") || n.Load() != 2 {
		t.Fatalf("log %q, count %d", line, n.Load())
	}
}
