package virtio

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// serveOn starts a server for exp on a new socket in dir; stop shuts it
// down.
func serveOn(t *testing.T, exp Export, dir string, opts ServerOptions) (srv *Server, sock string, stop func()) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	srv = NewServer(exp, opts)
	sock = filepath.Join(dir, "vhost.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	return srv, sock, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}
}

// TestHandoverConnection: our initiator runs verified random IO on two
// queues (EVENT_IDX, indirect descriptors) while its connection is handed
// from server to server five times (ShutdownHandover, Adopt): every
// request succeeds, every read matches, the volume holds the model, and
// the last server answers the initiator's GET_VRING_BASE at Close. The
// initiator is never told: same socket, same rings, same memory.
func TestHandoverConnection(t *testing.T) {
	exp := newMemExport(8 << 20)
	srv, sock, stop := serveOn(t, exp, t.TempDir(), ServerOptions{})
	c := dial(t, sock, Options{Queues: 2})
	model := make(chan []byte, 1)
	go func() { model <- randomIO(t, c, 8<<20, 8, 400, 64<<10, 7) }()
	for round := range 5 {
		before := exp.ops[gateway.OpWrite].Load() + exp.ops[gateway.OpRead].Load()
		testwait.For(t, "IO before the handover", func() bool {
			return exp.ops[gateway.OpWrite].Load()+exp.ops[gateway.OpRead].Load() > before+50
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		handed, err := srv.ShutdownHandover(ctx)
		cancel()
		if err != nil || len(handed) != 1 {
			t.Fatalf("round %d: ShutdownHandover: %d connections, %v", round, len(handed), err)
		}
		stop()
		next, _, nextStop := serveOn(t, exp, t.TempDir(), ServerOptions{})
		if err := next.Adopt(handed[0].State, handed[0].FDs); err != nil {
			t.Fatalf("round %d: Adopt: %v", round, err)
		}
		srv, stop = next, nextStop
	}
	want := <-model
	if !bytes.Equal(exp.snapshot(), want) {
		t.Error("the volume differs from the model")
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close through the last server: %v", err)
	}
	stop()
	if st := srv.Stats(); st.BrokenRings != 0 || st.RejectedChains != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestHandoverInflightQEMUOrder: a QEMU-like front-end with an inflight
// region, two writes completed; its connection is handed over; the new
// server serves the next write at the right position, keeps the region
// (used_idx and last_batch_head follow it), and GET_VRING_BASE counts all
// three.
func TestHandoverInflightQEMUOrder(t *testing.T) {
	exp := newMemExport(1 << 20)
	srv, sock, stop := serveOn(t, exp, t.TempDir(), ServerOptions{})
	f := newRawFront(t, sock, 8<<20)
	inflightHandshake(t, f)
	rep, fd, region := getInflight(t, f, 1, ifSize)
	setInflight(t, f, rep, fd)
	startRingAt(t, f, 0, 0, 0)
	w0 := layWrite(f, 0, 0, 1)
	w1 := layWrite(f, 1, 8, 2)
	publish(f, 0, 1)
	collect(t, f, 2)
	handed, err := srv.ShutdownHandover(context.Background())
	if err != nil || len(handed) != 1 {
		t.Fatalf("ShutdownHandover: %d, %v", len(handed), err)
	}
	stop()
	next, _, nextStop := serveOn(t, exp, t.TempDir(), ServerOptions{})
	defer nextStop()
	if err := next.Adopt(handed[0].State, handed[0].FDs); err != nil {
		t.Fatal(err)
	}
	w2 := layWrite(f, 2, 16, 3)
	publish(f, 2)
	if ids := collect(t, f, 1); ids[0] != 2 || statusOf(f, 2) != blkStatusOK {
		t.Fatalf("after the handover: ids %v status %d", ids, statusOf(f, 2))
	}
	data := exp.snapshot()
	for i, w := range [][]byte{w0, w1, w2} {
		if !bytes.Equal(data[i*4096:i*4096+4096], w) {
			t.Errorf("write %d not on the volume", i)
		}
	}
	q := regionQueue(region)
	if q.u16(inflightOffUsedIdx) != 3 || q.flag(2) != 0 || q.u16(inflightOffLastBatch) != 2 {
		t.Errorf("region after the handover: used_idx %d, mark of head 2 %d, last_batch_head %d", q.u16(inflightOffUsedIdx), q.flag(2), q.u16(inflightOffLastBatch))
	}
	if got := f.roundTrip(reqGetVringBase, encodeVringState(vringState{})); len(got) != 8 || got[4] != 3 {
		t.Errorf("GET_VRING_BASE %v, want 3", got)
	}
}
