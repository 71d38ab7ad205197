package nbd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitInRecv waits until the reader has read what was sent and waits for
// the rest of a payload, parked in the netpoller: every connection of s
// has an empty receive queue, and a goroutine waits for IO in readPayload.
func waitInRecv(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !socketsDrained(t, s) || !blockedIn("[IO wait", "nbd.(*conn).readPayload(") {
		if time.Now().After(deadline) {
			t.Fatal("the reader did not wait for the rest of the payload within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// socketsDrained reports whether no connection of s has unread bytes in
// its socket.
func socketsDrained(t *testing.T, s *Server) bool {
	for _, c := range s.door.Conns() {
		var n int
		var err error
		if cerr := c.raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); cerr != nil {
			err = cerr
		}
		if err != nil {
			t.Fatalf("SIOCINQ: %v", err)
		}
		if n > 0 {
			return false
		}
	}
	return true
}

// blockedIn reports whether some goroutine is in state (as the goroutine
// dump shows it, e.g. "[IO wait") with fn on its stack.
func blockedIn(state, fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		head, _, _ := strings.Cut(g, "\n")
		if strings.Contains(head, state) && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// A large WRITE whose payload trickles in (and, over TCP, through the same
// path) is stored intact, and the connection keeps working afterwards in
// normal (non-blocking) mode: Shutdown still stops an idle reader.
func TestLargeWritePayloadInPieces(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := newMemExport(16 << 20)
			var l net.Listener
			var err error
			if network == "unix" {
				l, err = net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
			} else {
				l, err = net.Listen("tcp", "127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			s := NewServer(memExports{testName: m}, Options{Logger: testLogger(t)})
			served := make(chan error, 1)
			go func() { served <- s.Serve(context.Background(), l) }()
			nc, err := net.Dial(network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
			rc := &rawClient{t: t, c: nc, r: bufio.NewReader(nc)}
			rc.connect(testName, true)

			const n = 1 << 20
			data := pattern(n, 0x5a)
			req := requestBytes(0, cmdWrite, 7, 8*n+4096, n, data)
			// Header and a bit of payload, then the rest in pieces.
			rc.write(req[:28+1000])
			waitInRecv(t, s)
			for p := req[28+1000:]; len(p) > 0; {
				k := min(len(p), 300<<10)
				rc.write(p[:k])
				p = p[k:]
				time.Sleep(5 * time.Millisecond)
			}
			if r := rc.readReply(nil); r.handle != 7 || r.errno != 0 {
				t.Fatalf("write reply %+v", r)
			}
			// Many back-to-back large writes, then check them all.
			for i := 0; i < 8; i++ {
				rc.sendReq(0, cmdWrite, uint64(100+i), uint64(i)*n, n, pattern(n, byte(i)))
			}
			for i := 0; i < 8; i++ {
				if r := rc.readReply(nil); r.errno != 0 {
					t.Fatalf("write reply %+v", r)
				}
			}
			if r := rc.do(0, cmdRead, 8*n+4096, n, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
				t.Fatalf("read back: errno %d, equal %v", r.errno, bytes.Equal(r.data, data))
			}
			for i := 0; i < 8; i++ {
				if r := rc.do(0, cmdRead, uint64(i)*n, n, nil); r.errno != 0 || !bytes.Equal(r.data, pattern(n, byte(i))) {
					t.Fatalf("read back %d: errno %d", i, r.errno)
				}
			}

			// Idle connection, socket back in non-blocking mode: Shutdown returns at once.
			start := time.Now()
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("Shutdown took %v", d)
			}
			rc.expectClosed()
			if err := <-served; err != nil {
				t.Fatalf("Serve: %v", err)
			}
		})
	}
}

// Shutdown while the reader waits for the rest of a WRITE payload: the write
// is "still in the socket", gets no reply, and the connection closes promptly
// once earlier requests are answered.
func TestShutdownDuringPayload(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := newMemExport(8 << 20)
			var l net.Listener
			var err error
			if network == "unix" {
				l, err = net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
			} else {
				l, err = net.Listen("tcp", "127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			s := NewServer(memExports{testName: m}, Options{Logger: testLogger(t)})
			served := make(chan error, 1)
			go func() { served <- s.Serve(context.Background(), l) }()
			nc, err := net.Dial(network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
			rc := &rawClient{t: t, c: nc, r: bufio.NewReader(nc)}
			rc.connect(testName, false)

			const n = 1 << 20
			req := requestBytes(0, cmdWrite, 9, 0, n, pattern(n, 1))
			rc.write(req[:28+n/2])
			waitInRecv(t, s)

			start := time.Now()
			if err := s.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("Shutdown took %v", d)
			}
			rc.expectClosed() // and no reply for the half-sent write
			if err := <-served; err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if m.calls.Load() != 0 {
				t.Fatalf("export saw %d calls", m.calls.Load())
			}
		})
	}
}

// A hard stop (Serve's context) and a client that vanishes mid-payload both
// end a reader blocked in a raw recv.
func TestHardStopDuringPayload(t *testing.T) {
	m := newMemExport(8 << 20)
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(memExports{testName: m}, Options{Logger: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()

	const n = 1 << 20
	req := requestBytes(0, cmdWrite, 9, 0, n, pattern(n, 1))

	// Client gone mid-payload: the connection goes away.
	gone := dial(t, sock)
	gone.connect(testName, false)
	gone.write(req[:28+n/2])
	waitInRecv(t, s)
	gone.c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s.door.Len() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("connection not cleaned up after the client left mid-payload")
		}
		time.Sleep(time.Millisecond)
	}

	rc := dial(t, sock)
	rc.connect(testName, false)
	rc.write(req[:28+n/2])
	waitInRecv(t, s)
	start := time.Now()
	cancel()
	select {
	case err := <-served:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its context was cancelled")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("hard stop took %v", d)
	}
	rc.expectClosed()
	if m.calls.Load() != 0 {
		t.Fatalf("export saw %d calls", m.calls.Load())
	}
}

// deadlineConn is a transport whose reads wait for the test and whose
// read deadlines are recorded.
type deadlineConn struct {
	reading chan struct{} // closed at the first Read
	data    chan []byte   // what the waiting Read returns
	once    sync.Once
	mu      sync.Mutex
	last    time.Time // the last read deadline set
}

func (d *deadlineConn) Read(b []byte) (int, error) {
	d.once.Do(func() { close(d.reading) })
	return copy(b, <-d.data), nil
}
func (d *deadlineConn) Write(b []byte) (int, error) { return len(b), nil }
func (d *deadlineConn) Close() error                { return nil }
func (d *deadlineConn) SetReadDeadline(t time.Time) error {
	d.mu.Lock()
	d.last = t
	d.mu.Unlock()
	return nil
}
func (d *deadlineConn) SetWriteDeadline(time.Time) error { return nil }

// A Drain while the reader waits for a WRITE payload: once the payload
// is in, the read deadline is the Drain's again (not cleared), so the
// reader's next header read does not wait for an idle client with no
// deadline and hold the stop until its timeout.
func TestDrainDuringPayloadKeepsTheStop(t *testing.T) {
	s := NewServer(memExports{}, Options{Logger: testLogger(t)})
	dc := &deadlineConn{reading: make(chan struct{}), data: make(chan []byte)}
	c := newConn(s, context.Background(), dc)
	c.phase = phaseTransmission
	done := make(chan error, 1)
	go func() { done <- c.readPayloadTimed(make([]byte, 4096)) }()
	<-dc.reading
	c.Drain()
	dc.data <- make([]byte, 4096)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.last.IsZero() {
		t.Fatal("the read deadline was cleared after the payload: the Drain's wake-up is lost")
	}
}
