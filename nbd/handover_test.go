package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// handOverTo stops s for a handover and resumes its connections on next,
// as the two gateway processes do; it returns how many moved.
func handOverTo(t *testing.T, s, next *Server) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	handed, err := s.ShutdownHandover(ctx)
	if err != nil {
		t.Fatalf("ShutdownHandover: %v", err)
	}
	for _, h := range handed {
		nc, err := net.FileConn(h.File)
		h.File.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := next.Resume(nc, h.State); err != nil {
			t.Fatalf("Resume %+v: %v", h.State, err)
		}
	}
	return len(handed)
}

// A connection with structured replies, whose reader holds a request and
// the first bytes of the next when the handover begins: the old server
// answers both (it waits for the rest of the second), the third request
// stays in the socket and the new server answers it, with structured
// replies and base:allocation still on, without a handshake.
func TestShutdownHandoverAtBoundary(t *testing.T) {
	exp := newMemExport(1 << 20)
	exports := memExports{"t/v": exp}
	s1, sock := startServer(t, exports, Options{})
	s2 := NewServer(exports, Options{Logger: testLogger(t)})
	defer s2.Shutdown(context.Background())
	rc := dial(t, sock)
	size, flags := rc.connect("t/v", true)

	a := bytes.Repeat([]byte("A"), 4096)
	b := bytes.Repeat([]byte("B"), 8192)
	req2 := requestBytes(0, cmdWrite, 2, 8192, uint32(len(b)), b)
	rc.write(append(requestBytes(0, cmdWrite, 1, 0, uint32(len(a)), a), req2[:10]...))
	testwait.For(t, "the first write reaches the export", func() bool { return exp.calls.Load() >= 1 })
	if r := rc.readReply(nil); r.handle != 1 || r.errno != 0 {
		t.Fatalf("first write: %+v", r)
	}

	moved := make(chan int, 1)
	go func() { moved <- handOverTo(t, s1, s2) }()
	select {
	case n := <-moved:
		t.Log("handed over before the rest of the request was sent")
		if n != 1 {
			t.Fatalf("%d connections handed over, want 1", n)
		}
	case <-time.After(50 * time.Millisecond):
		// The old server waits for the rest of the request it began.
	}
	rc.write(append(req2[10:], requestBytes(0, cmdRead, 3, 0, 12288, nil)...))
	got := map[uint64]reply{}
	for len(got) < 2 {
		r := rc.readReply(nil)
		if _, dup := got[r.handle]; dup {
			t.Fatalf("handle %d answered twice", r.handle)
		}
		got[r.handle] = r
	}
	if got[2].errno != 0 || got[3].errno != 0 || got[3].chunks < 1 {
		t.Fatalf("replies %+v", got)
	}
	if want := append(append(append([]byte{}, a...), make([]byte, 4096)...), b[:4096]...); !bytes.Equal(got[3].data, want) {
		t.Fatalf("read after the handover: %d bytes, not what was written", len(got[3].data))
	}
	select {
	case n := <-moved:
		if n != 1 {
			t.Fatalf("%d connections handed over, want 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handover did not finish")
	}
	if s1.door.Len() != 0 || s2.door.Len() != 1 {
		t.Fatalf("connections: old %d, new %d", s1.door.Len(), s2.door.Len())
	}
	// The new server serves on, structured, with the same export.
	if r := rc.do(0, cmdBlockStatus, 0, 1<<20, nil); r.errno != 0 || len(r.descs) == 0 {
		t.Fatalf("BLOCK_STATUS after the handover: %+v", r)
	}
	if size != 1<<20 || flags&tflagSendDF == 0 {
		t.Fatalf("negotiated size %d flags %#x", size, flags)
	}
}

// A client keeping 16 requests in flight (writes and verified reads)
// on one connection while it is handed from server to server 5 times:
// every request is answered exactly once and without error, and every
// read sees a whole block no older than the last write answered before
// the read was sent.
func TestShutdownHandoverPipelined(t *testing.T) {
	pipelinedHandovers(t, 5, func(int) int { return 2000 })
}

// The same client handed over 300 times back to back: half of the new
// servers are stopped for the next handover before they answer anything
// (often before their reader first runs), the others after one answer
// (their reader busy with the stream). Each handover must move the
// connection, and no request may be refused: a reader that saw the
// shutdown before the handover mark used to answer ESHUTDOWN, and a
// resumed connection drained before it began to serve used to be closed.
func TestShutdownHandoverBackToBack(t *testing.T) {
	pipelinedHandovers(t, 300, func(i int) int { return i % 2 })
}

// pipelinedHandovers runs the pipelined client of
// TestShutdownHandoverPipelined through rounds handovers, waiting for
// between(i) answers before handover i and 2000 after the last.
func pipelinedHandovers(t *testing.T, rounds int, between func(i int) int) {
	exp := newMemExport(4 << 20)
	exports := memExports{"t/v": exp}
	s, sock := startServer(t, exports, Options{})
	rc := dial(t, sock)
	rc.connect("t/v", false)
	rc.c.SetDeadline(time.Time{})

	const blocks, bs, depth = 64, 4096, 16
	type inflight struct {
		cmd    uint16
		blk    int
		minVer uint64 // a read: the block's version acknowledged when it was sent
	}
	var (
		mu       sync.Mutex
		pending  = map[uint64]inflight{}
		written  = make([]uint64, blocks) // versions sent
		acked    = make([]uint64, blocks) // versions whose write was answered
		answered int
		slots    = make(chan struct{}, depth)
		stop     = make(chan struct{})
		errc     = make(chan error, 2)
	)
	fill := func(blk int, ver uint64) []byte {
		b := make([]byte, bs)
		for i := 0; i < bs; i += 16 {
			binary.BigEndian.PutUint64(b[i:], uint64(blk))
			binary.BigEndian.PutUint64(b[i+8:], ver)
		}
		return b
	}
	go func() { // sender
		for h := uint64(1); ; h++ {
			select {
			case slots <- struct{}{}:
			case <-stop:
				return
			}
			blk := int(h*7) % blocks
			mu.Lock()
			var req []byte
			if h%2 == 0 {
				written[blk]++
				req = requestBytes(0, cmdWrite, h, uint64(blk*bs), bs, fill(blk, written[blk]))
				pending[h] = inflight{cmd: cmdWrite, blk: blk, minVer: written[blk]}
			} else {
				req = requestBytes(0, cmdRead, h, uint64(blk*bs), bs, nil)
				pending[h] = inflight{cmd: cmdRead, blk: blk, minVer: acked[blk]}
			}
			mu.Unlock()
			if _, err := rc.c.Write(req); err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() { // receiver
		br := bufio.NewReader(rc.c)
		var hdr [16]byte
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				errc <- err
				return
			}
			h := binary.BigEndian.Uint64(hdr[8:])
			mu.Lock()
			r, ok := pending[h]
			delete(pending, h)
			mu.Unlock()
			if !ok || binary.BigEndian.Uint32(hdr[:]) != magicSimpleReply || binary.BigEndian.Uint32(hdr[4:]) != 0 {
				errc <- fmt.Errorf("reply % x (known handle %v)", hdr, ok)
				return
			}
			mu.Lock()
			if r.cmd == cmdWrite {
				acked[r.blk] = max(acked[r.blk], r.minVer)
			}
			mu.Unlock()
			if r.cmd == cmdRead {
				data := make([]byte, bs)
				if _, err := io.ReadFull(br, data); err != nil {
					errc <- err
					return
				}
				ver := binary.BigEndian.Uint64(data[8:])
				if (ver != 0 || r.minVer != 0) && (ver < r.minVer || !bytes.Equal(data, fill(r.blk, ver))) {
					errc <- fmt.Errorf("block %d: version %d, want at least %d, whole: %v", r.blk, ver, r.minVer, bytes.Equal(data, fill(r.blk, ver)))
					return
				}
			}
			mu.Lock()
			answered++
			mu.Unlock()
			<-slots
		}
	}()
	progress := func(n int) {
		t.Helper()
		mu.Lock()
		from := answered
		mu.Unlock()
		testwait.For(t, "requests are answered", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return answered >= from+n || len(errc) > 0
		})
		select {
		case err := <-errc:
			t.Fatal(err)
		default:
		}
	}
	for i := 0; i < rounds; i++ {
		progress(between(i))
		next := NewServer(exports, Options{Logger: testLogger(t)})
		if n := handOverTo(t, s, next); n != 1 {
			t.Fatalf("handover %d moved %d connections", i+1, n)
		}
		s = next
	}
	progress(2000)
	close(stop)
	rc.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// A TLS connection is not handed over (its session cannot leave the
// process): ShutdownHandover drains and closes it as Shutdown does,
// after answering the request it had read.
func TestShutdownHandoverTLS(t *testing.T) {
	p := newPKI(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(tenantExports{memExports{"tenant/vol": newMemExport(1 << 20)}}, Options{Logger: testLogger(t)})
	done := make(chan error, 1)
	go func() { done <- s.ServeTLS(context.Background(), l, p.server) }()
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if err := rc.starttls(p.client(t, "tenant")); err != nil {
		t.Fatal(err)
	}
	rc.goTo("tenant/vol")
	if r := rc.do(0, cmdWrite, 0, 4096, make([]byte, 4096)); r.errno != 0 {
		t.Fatalf("write over TLS: errno %d", r.errno)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	handed, err := s.ShutdownHandover(ctx)
	if err != nil || len(handed) != 0 {
		t.Fatalf("ShutdownHandover: %d handed, %v", len(handed), err)
	}
	rc.expectClosed()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
