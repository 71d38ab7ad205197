package virtio

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

// A panic while running a request fails it with IOERR, on the poller
// (inline) and on a request goroutine alike; the ring serves the next
// request, and the panic is counted.
func TestRequestPanicFailsOnlyThatRequest(t *testing.T) {
	for _, inlineBelow := range []time.Duration{-1, time.Hour} {
		t.Run(fmt.Sprintf("InlineBelow=%v", inlineBelow), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			exp := newMemExport(1 << 20)
			srv, sock := startServer(t, exp, ServerOptions{InlineBelow: inlineBelow})
			c := dial(t, sock, Options{})
			read := func() error { return c.Do(ctx, &gateway.Request{Op: gateway.OpRead, Buf: make([]byte, 4096)}) }
			exp.panicky.Store(true)
			if err := read(); !errors.Is(err, gateway.ErrIO) {
				t.Fatalf("request that panicked: %v, want ErrIO", err)
			}
			exp.panicky.Store(false)
			if err := read(); err != nil {
				t.Fatalf("request after a panic: %v", err)
			}
			if st := srv.Stats(); st.Panics != 1 || st.BrokenRings != 0 {
				t.Errorf("stats %+v: want 1 panic and no broken ring", st)
			}
		})
	}
}
