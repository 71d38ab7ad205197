package virtio

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// hostileChain places descs in the main descriptor table of the client's
// only slot (head 0), publishes head 0 and returns the used length and the
// status byte. The indirect table of slot 0 is tab, if any.
func hostileChain(t *testing.T, c *Client, typ uint32, descs map[int]desc, tab []desc) (uint32, byte) {
	t.Helper()
	q, s, err := c.acquire(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if s.head != 0 {
		t.Fatalf("slot head %d, want 0", s.head)
	}
	s.setHeader(typ, 0)
	for i, d := range descs {
		writeDesc(q.ring.desc, i, d)
	}
	for i, d := range tab {
		writeDesc(s.table, i, d)
	}
	q.submit(s)
	select {
	case <-s.ch:
	case <-time.After(10 * time.Second):
		t.Fatal("hostile request never completed")
	}
	n, st := s.usedLen, s.status[0]
	q.release(s)
	return n, st
}

// checkAlive does verified IO on the client: the server carried on.
func checkAlive(t *testing.T, c *Client, round int) {
	t.Helper()
	p := bytes.Repeat([]byte{byte(round + 1)}, 8192)
	if _, err := c.WriteAt(p, int64(round)*8192); err != nil {
		t.Fatalf("write after hostile chain: %v", err)
	}
	got := make([]byte, len(p))
	if _, err := c.ReadAt(got, int64(round)*8192); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read after hostile chain: %v", err)
	}
}

const (
	rN = descFlagNext
	rW = descFlagWrite
	rI = descFlagIndirect
)

func TestHostileChains(t *testing.T) {
	exp := newMemExport(1 << 20)
	_, sock := startServer(t, exp, ServerOptions{Logger: quietLogger()})
	direct := dial(t, sock, Options{QueueSize: 16, QueueDepth: 1, DisableIndirect: true})
	s := &direct.queues[0].slots[0]
	hdr, data, stat := s.gpaHdr, s.gpaData, s.gpaStat
	end := clientGPABase + uint64(len(direct.shm.buf))

	cases := []struct {
		name   string
		typ    uint32
		descs  map[int]desc
		status bool // the status byte must say IOERR (else: used length 0)
	}{
		{"loop", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {data, 512, rW | rN, 2}, 2: {data, 512, rW | rN, 1}}, false},
		{"self loop", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 0}}, false},
		{"next out of range", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 99}}, false},
		{"indirect not negotiated", blkTypeIn, map[int]desc{0: {s.gpaTab, 48, rI, 0}}, false},
		{"data below memory", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {0x1000, 4096, rW | rN, 2}, 2: {stat, 1, rW, 0}}, true},
		{"data past the end", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {end - 512, 4096, rW | rN, 2}, 2: {stat, 1, rW, 0}}, true},
		{"huge length", blkTypeOut, map[int]desc{0: {hdr, 16, rN, 1}, 1: {data, 0xffffffff, rN, 2}, 2: {stat, 1, rW, 0}}, true},
		{"address wraps", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {0xfffffffffffff000, 0x2000, rW | rN, 2}, 2: {stat, 1, rW, 0}}, true},
		{"header outside memory", blkTypeIn, map[int]desc{0: {0x10, 16, rN, 1}, 1: {stat, 1, rW, 0}}, true},
		{"readable after writable", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {data, 512, rW | rN, 2}, 2: {data, 512, rN, 3}, 3: {stat, 1, rW, 0}}, true},
		{"short header", blkTypeIn, map[int]desc{0: {hdr, 8, rN, 1}, 1: {stat, 1, rW, 0}}, true},
		{"odd read length", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {data, 100, rW | rN, 2}, 2: {stat, 1, rW, 0}}, true},
		{"no status byte", blkTypeOut, map[int]desc{0: {hdr, 16, rN, 1}, 1: {data, 512, 0, 0}}, false},
		{"status outside memory", blkTypeIn, map[int]desc{0: {hdr, 16, rN, 1}, 1: {end, 1, rW, 0}}, false},
		{"long chain", blkTypeIn, longChain(hdr, data, 16), false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, st := hostileChain(t, direct, tc.typ, tc.descs, nil)
			switch {
			case tc.status && (n != 1 || st != blkStatusIOErr):
				t.Errorf("used len %d status %d, want 1 and IOERR", n, st)
			case !tc.status && (n != 0 || st != 0xff):
				t.Errorf("used len %d status %#x, want 0 and untouched", n, st)
			}
			checkAlive(t, direct, i)
		})
	}

	ind := dial(t, sock, Options{QueueSize: 16, QueueDepth: 1})
	s = &ind.queues[0].slots[0]
	hdr, data, stat, tab := s.gpaHdr, s.gpaData, s.gpaStat, s.gpaTab
	icases := []struct {
		name   string
		head   desc
		tab    []desc
		status bool
	}{
		{"nested indirect", desc{tab, 32, rI, 0}, []desc{{tab, 32, rI, 0}, {stat, 1, rW, 0}}, false},
		{"indirect with next", desc{tab, 32, rI | rN, 1}, []desc{{hdr, 16, rN, 1}, {stat, 1, rW, 0}}, false},
		{"indirect table outside memory", desc{0x2000, 32, rI, 0}, nil, false},
		{"indirect table odd size", desc{tab, 24, rI, 0}, nil, false},
		{"indirect table too big", desc{tab, 16 * 4096, rI, 0}, nil, false},
		{"indirect loop", desc{tab, 48, rI, 0}, []desc{{hdr, 16, rN, 1}, {data, 512, rW | rN, 2}, {data, 512, rW | rN, 1}}, false},
		{"indirect next out of table", desc{tab, 32, rI, 0}, []desc{{hdr, 16, rN, 5}, {stat, 1, rW, 0}}, false},
		{"indirect bad data", desc{tab, 48, rI, 0}, []desc{{hdr, 16, rN, 1}, {1 << 62, 512, rW | rN, 2}, {stat, 1, rW, 0}}, true},
	}
	for i, tc := range icases {
		t.Run(tc.name, func(t *testing.T) {
			n, st := hostileChain(t, ind, blkTypeIn, map[int]desc{0: tc.head}, tc.tab)
			switch {
			case tc.status && (n != 1 || st != blkStatusIOErr):
				t.Errorf("used len %d status %d, want 1 and IOERR", n, st)
			case !tc.status && (n != 0 || st != 0xff):
				t.Errorf("used len %d status %#x, want 0 and untouched", n, st)
			}
			checkAlive(t, ind, i)
		})
	}
	if exp.badRange.Load() != 0 {
		t.Errorf("%d out-of-range requests reached the export", exp.badRange.Load())
	}
}

// longChain builds a chain through every entry of a table of n, then back
// to the start: longer than the ring.
func longChain(hdr, data uint64, n int) map[int]desc {
	m := map[int]desc{0: {hdr, 16, rN, 1}}
	for i := 1; i < n; i++ {
		m[i] = desc{data, 512, rW | rN, uint16((i + 1) % n)}
	}
	return m
}

// TestHostileRingFatal: ring-level violations (a head out of range, an
// avail index that jumps) stop that ring only; the server serves others.
func TestHostileRingFatal(t *testing.T) {
	exp := newMemExport(1 << 20)
	srv, sock := startServer(t, exp, ServerOptions{Logger: quietLogger()})
	for _, tc := range []struct {
		name string
		bad  func(q *cqueue)
	}{
		{"head out of range", func(q *cqueue) { q.ring.publish(0x7fff) }},
		{"avail index jump", func(q *cqueue) { q.ring.availIdx += 1000; q.ring.publish(0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(context.Background(), sock, Options{QueueSize: 16, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			q := c.queues[0]
			before := srv.Stats().BrokenRings
			q.mu.Lock()
			tc.bad(q)
			q.mu.Unlock()
			signalFd(q.kickFd)
			testwait.For(t, "the ring is counted broken", func() bool { return srv.Stats().BrokenRings > before })
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			good := dial(t, sock, Options{})
			checkAlive(t, good, 0)
		})
	}
}

// gateExport holds reads until its gate opens.
type gateExport struct {
	*memExport
	gate    chan struct{}
	entered chan struct{}
}

func (g *gateExport) Do(ctx context.Context, req *gateway.Request) error {
	if req.Op == gateway.OpRead {
		g.entered <- struct{}{}
		<-g.gate
	}
	return g.memExport.Do(ctx, req)
}

// TestHostileHeadReuse: a driver that makes a head available again while
// its request is still running breaks the ring; the server waits for the
// running request and carries on.
func TestHostileHeadReuse(t *testing.T) {
	g := &gateExport{memExport: newMemExport(1 << 20), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	srv, sock := startServer(t, g, ServerOptions{InlineBelow: -1, Logger: quietLogger()})
	c, err := Dial(context.Background(), sock, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		done <- err
	}()
	<-g.entered // the read is in Export.Do on a request goroutine
	q := c.queues[0]
	head := q.slots[0].head
	before := srv.Stats().BrokenRings
	q.mu.Lock()
	q.ring.publish(head)
	q.mu.Unlock()
	signalFd(q.kickFd)
	testwait.For(t, "the ring is counted broken", func() bool { return srv.Stats().BrokenRings > before })
	close(g.gate)
	if err := <-done; err != nil {
		t.Errorf("the first request: %v", err)
	}
	c.Close()
	g.entered = make(chan struct{}, 64)
	checkAlive(t, dial(t, sock, Options{}), 0)
}
