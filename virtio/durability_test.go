package virtio

import (
	"context"
	"fmt"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
)

// virtio-blk has no FUA bit, but a driver that does not negotiate FLUSH
// (which we offer) gets a write-through device: every write, discard and
// write-zeroes must be durable when it completes, so each reaches the export
// with FUA. With FLUSH negotiated, none does (the driver flushes).
func TestWriteThroughWithoutFlush(t *testing.T) {
	for _, noFlush := range []bool{false, true} {
		t.Run(fmt.Sprintf("DisableFlush=%v", noFlush), func(t *testing.T) {
			ctx := context.Background()
			exp := newMemExport(1 << 20)
			_, sock := startServer(t, exp, ServerOptions{})
			c := dial(t, sock, Options{DisableFlush: noFlush})
			if _, err := c.WriteAt(make([]byte, 4096), 0); err != nil {
				t.Fatal(err)
			}
			if err := c.Discard(64<<10, 64<<10); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteZeroes(ctx, 128<<10, 4096, false); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteZeroes(ctx, 192<<10, 4096, true); err != nil {
				t.Fatal(err)
			}
			for _, op := range []gateway.Op{gateway.OpWrite, gateway.OpDiscard, gateway.OpWriteZeroes} {
				n, fua := exp.ops[op].Load(), exp.fua[op].Load()
				want := int64(0)
				if noFlush {
					want = n
				}
				if n == 0 || fua != want {
					t.Errorf("%v: %d requests, %d with FUA, want %d", op, n, fua, want)
				}
			}
		})
	}
}

// The same against a real gateway volume: without FLUSH, a discard is
// durable when it completes. The evidence is the pool's used space: the
// chunk a discard unmaps is freed only by the metadata sync that makes the
// unmap durable, and nothing else syncs within the test (the gateway's
// background sync runs once a second).
func TestWriteThroughDiscardDurable(t *testing.T) {
	ctx := context.Background()
	g, err := gateway.Open(ctx, gateway.Config{DataDir: t.TempDir(), PoolSize: 256 << 20,
		AutomationInterval: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() }) // after the server's shutdown
	v, err := g.CreateVolume(ctx, gateway.CreateOptions{Tenant: "acme", Name: "v", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, sock := startServer(t, v, ServerOptions{})
	c := dial(t, sock, Options{DisableFlush: true})
	chunk := v.Info().ChunkSize
	if _, err := c.WriteAt(make([]byte, chunk), 0); err != nil {
		t.Fatal(err)
	}
	before := g.PoolStats().Used
	if err := c.Discard(0, chunk); err != nil {
		t.Fatal(err)
	}
	if got := g.PoolStats().Used; got != before-chunk {
		t.Fatalf("pool used %d when the discard completed, want %d: the unmap was not durable", got, before-chunk)
	}
}
