package virtio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/device"
)

const loopSize = 32 << 20

func TestLoopbackRandomIO(t *testing.T) {
	for _, mode := range []WaitMode{WaitAdaptive, WaitEventfd, WaitPoll} {
		for _, qd := range []int{1, 32} {
			t.Run(fmt.Sprintf("%v/QD%d", mode, qd), func(t *testing.T) {
				exp := newMemExport(loopSize)
				_, sock := startServer(t, exp, ServerOptions{Wait: WaitOptions{Mode: mode}})
				c := dial(t, sock, Options{Wait: WaitOptions{Mode: mode}})
				ops := 400
				if qd > 1 {
					ops = 60
				}
				model := randomIO(t, c, loopSize, qd, ops, 64<<10, uint64(qd))
				// What the client saw is what the export holds.
				if got := exp.snapshot(); !bytes.Equal(got, model) {
					t.Errorf("export content differs from the model at byte %d", firstDiff(got, model))
				}
				if n := exp.badRange.Load() + exp.badDoor.Load(); n != 0 {
					t.Errorf("%d requests with a bad range or door reached the export", n)
				}
				if c.Features()&bit(featEventIdx) == 0 || c.Features()&bit(featIndirectDesc) == 0 {
					t.Errorf("features %#x: want EVENT_IDX and INDIRECT_DESC negotiated", c.Features())
				}
			})
		}
	}
}

// TestLoopbackVariants covers the other ring configurations: no indirect
// descriptors (chains in the main table), no EVENT_IDX (flag suppression),
// several queues, requests on worker goroutines, and IO larger than MaxIO.
func TestLoopbackVariants(t *testing.T) {
	cases := []struct {
		name string
		srv  ServerOptions
		cli  Options
		big  bool
	}{
		{name: "direct", cli: Options{DisableIndirect: true, DisableEventIdx: true, QueueSize: 64}},
		{name: "direct-eventidx", cli: Options{DisableIndirect: true}},
		{name: "workers-multiqueue", srv: ServerOptions{InlineBelow: -1}, cli: Options{Queues: 3, QueueDepth: 8}},
		{name: "split-large-io", cli: Options{MaxIO: 16 << 10, QueueDepth: 4}, big: true},
		{name: "poll-both-batch", srv: ServerOptions{Wait: WaitOptions{Mode: WaitPoll}}, cli: Options{Queues: 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			exp := newMemExport(loopSize)
			_, sock := startServer(t, exp, tc.srv)
			c := dial(t, sock, tc.cli)
			if tc.cli.Queues > 1 && c.Queues() != tc.cli.Queues {
				t.Errorf("Queues() = %d, want %d", c.Queues(), tc.cli.Queues)
			}
			maxLen := 64 << 10
			if tc.big {
				maxLen = 1 << 20
			}
			model := randomIO(t, c, loopSize, 8, 40, maxLen, 7)
			if got := exp.snapshot(); !bytes.Equal(got, model) {
				t.Errorf("export content differs from the model at byte %d", firstDiff(got, model))
			}
		})
	}
}

func TestLoopbackCommands(t *testing.T) {
	exp := newMemExport(loopSize)
	_, sock := startServer(t, exp, ServerOptions{Serial: "sluice-test-0123456789abcdef"})
	c := dial(t, sock, Options{})
	ctx := context.Background()

	if c.Size() != loopSize || c.BlockSize() != 512 || c.ReadOnly() {
		t.Fatalf("Size %d BlockSize %d ReadOnly %v", c.Size(), c.BlockSize(), c.ReadOnly())
	}
	id, err := c.GetID(ctx)
	if err != nil || id != "sluice-test-01234567" {
		t.Errorf("GetID = %q, %v; want the serial cut to 20 bytes", id, err)
	}

	ones := bytes.Repeat([]byte{1}, 1<<20)
	if _, err := c.WriteAt(ones, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil || exp.ops[gateway.OpFlush].Load() != 1 {
		t.Errorf("Flush: %v, export saw %d flushes", err, exp.ops[gateway.OpFlush].Load())
	}
	if err := c.Discard(64<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(ctx, 256<<10, 4096, false); err != nil {
		t.Fatal(err)
	}
	if exp.noHole.Load() != 1 {
		t.Errorf("write-zeroes without unmap: export saw NoHole %d times, want 1", exp.noHole.Load())
	}
	if err := c.WriteZeroes(ctx, 512<<10, 8192, true); err != nil {
		t.Fatal(err)
	}
	if exp.noHole.Load() != 1 {
		t.Errorf("write-zeroes with unmap must not set NoHole")
	}
	want := bytes.Clone(ones)
	clear(want[64<<10 : 128<<10])
	clear(want[256<<10 : 256<<10+4096])
	clear(want[512<<10 : 512<<10+8192])
	got := make([]byte, 1<<20)
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("after discard/write-zeroes: %v, mismatch at %d", err, firstDiff(got, want))
	}

	// Through Do, as a door would call it.
	req := &gateway.Request{Op: gateway.OpWrite, Offset: 4096, Buf: bytes.Repeat([]byte{9}, 4096), FUA: true}
	if err := c.Do(ctx, req); err != nil || exp.ops[gateway.OpFlush].Load() != 2 {
		t.Errorf("FUA write: %v, flushes %d", err, exp.ops[gateway.OpFlush].Load())
	}

	// Unsupported request types get UNSUPP.
	q, s, err := c.acquire(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	err = c.wait(ctx, c.start(q, s, 99, 0, nil, 0))
	if !errors.Is(err, gateway.ErrUnsupported) {
		t.Errorf("type 99: %v, want ErrUnsupported", err)
	}

	// Range and alignment checks on the client side.
	if _, err := c.ReadAt(make([]byte, 4096), loopSize); !errors.Is(err, device.ErrOutOfRange) || !errors.Is(err, gateway.ErrOutOfRange) {
		t.Errorf("read past the end: %v", err)
	}
	if _, err := c.WriteAt(make([]byte, 100), 0); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("unaligned write: %v", err)
	}
	if exp.badRange.Load() != 0 {
		t.Errorf("export saw %d out-of-range requests", exp.badRange.Load())
	}
}

// TestServerChecksRange sends requests past the end straight on the ring:
// the server must answer IOERR without calling the export.
func TestServerChecksRange(t *testing.T) {
	exp := newMemExport(1 << 20)
	_, sock := startServer(t, exp, ServerOptions{})
	c := dial(t, sock, Options{})
	ctx := context.Background()
	for _, tc := range []struct {
		typ    uint32
		sector uint64
		n      int
	}{
		{blkTypeIn, (1 << 20) / 512, 512},
		{blkTypeOut, (1<<20)/512 - 1, 1024},
		{blkTypeIn, 1 << 62, 512},
	} {
		q, s, _ := c.acquire(ctx, true)
		err := c.wait(ctx, c.start(q, s, tc.typ, tc.sector, make([]byte, tc.n), tc.n))
		if !errors.Is(err, gateway.ErrIO) {
			t.Errorf("type %d sector %d: %v, want ErrIO", tc.typ, tc.sector, err)
		}
	}
	var seg [16]byte
	seg[5] = 1 // sector 1<<40, far past the end
	seg[8] = 1
	q, s, _ := c.acquire(ctx, true)
	if err := c.wait(ctx, c.start(q, s, blkTypeDiscard, 0, seg[:], 16)); !errors.Is(err, gateway.ErrIO) {
		t.Errorf("discard past the end: %v", err)
	}
	if exp.badRange.Load() != 0 {
		t.Errorf("export saw %d out-of-range requests", exp.badRange.Load())
	}
}

func TestReadOnlyExport(t *testing.T) {
	exp := newMemExport(1 << 20)
	exp.ro = true
	_, sock := startServer(t, exp, ServerOptions{})
	c := dial(t, sock, Options{})
	if !c.ReadOnly() {
		t.Fatal("client does not see the export read-only")
	}
	if _, err := c.WriteAt(make([]byte, 4096), 0); !errors.Is(err, gateway.ErrReadOnly) {
		t.Errorf("write: %v", err)
	}
	// A write sent anyway fails on the target.
	ctx := context.Background()
	q, s, _ := c.acquire(ctx, true)
	if err := c.wait(ctx, c.start(q, s, blkTypeOut, 0, make([]byte, 512), 512)); !errors.Is(err, gateway.ErrIO) {
		t.Errorf("OUT on a read-only device: %v", err)
	}
	if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Errorf("read: %v", err)
	}
	if exp.ops[gateway.OpWrite].Load() != 0 {
		t.Error("a write reached the read-only export")
	}
}

// TestShutdown: Shutdown waits for requests, closes connections, and the
// client then fails cleanly.
func TestShutdown(t *testing.T) {
	exp := newMemExport(1 << 20)
	srv := NewServer(exp, ServerOptions{Logger: testLogger(t)})
	sock := t.TempDir() + "/s.sock"
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	c := dial(t, sock, Options{})
	if _, err := c.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	select {
	case <-c.dead:
	case <-time.After(5 * time.Second):
		t.Fatal("client did not notice the target went away")
	}
	if _, err := c.ReadAt(make([]byte, 4096), 0); !errors.Is(err, gateway.ErrClosed) {
		t.Errorf("read after shutdown: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
}

func TestListenSocketMode(t *testing.T) {
	sock := t.TempDir() + "/m.sock"
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := Listen(sock); err == nil {
		t.Error("Listen on a live socket succeeded")
	}
}

// TestContextCancel: a caller that gives up does not lose the slot.
func TestContextCancel(t *testing.T) {
	exp := newMemExport(1 << 20)
	_, sock := startServer(t, exp, ServerOptions{})
	c := dial(t, sock, Options{QueueDepth: 2})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 10 {
		err := c.Do(ctx, &gateway.Request{Op: gateway.OpRead, Offset: 0, Buf: make([]byte, 4096)})
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	}
	// All slots come back.
	for range 20 {
		if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
	}
}
