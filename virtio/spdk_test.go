package virtio

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// spdkTarget starts SPDK's vhost target with a 64 MiB malloc bdev M0 and a
// 32 MiB aio bdev A0, exposed as vhost-user-blk controllers vb-m0 and
// vb-a0.
func spdkTarget(t *testing.T) (*spdktest.Target, *rpc.Client) {
	tg := spdktest.Start(t, spdktest.Options{})
	ctx := t.Context()
	rc, err := rpc.Dial(ctx, tg.RPCSocket, rpc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	img := filepath.Join(t.TempDir(), "aio.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "M0", NumBlocks: 16384, BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.BdevAIOCreate(ctx, rpc.AIOBdev{Name: "A0", Filename: img, BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []rpc.VhostBlkController{{Ctrlr: "vb-m0", DevName: "M0"}, {Ctrlr: "vb-a0", DevName: "A0"}} {
		if err := rc.VhostCreateBlkController(ctx, v); err != nil {
			t.Fatal(err)
		}
	}
	return tg, rc
}

// TestSPDKVhostBlk drives SPDK's vhost-user-blk target with our initiator:
// verified IO at queue depth 1 and 32, flush, discard and write-zeroes on
// a malloc bdev, and on an aio bdev, which has no unmap.
func TestSPDKVhostBlk(t *testing.T) {
	tg, rc := spdkTarget(t)
	ctx := t.Context()
	c := dial(t, filepath.Join(tg.VhostDir, "vb-m0"), Options{HugePages: true, QueueDepth: 32, MaxIO: 128 << 10})
	if c.Size() != 64<<20 || c.BlockSize() != 4096 || !c.has(blkFeatFlush) || !c.has(blkFeatDiscard) || !c.has(blkFeatWriteZeroes) {
		t.Fatalf("malloc controller: size %d block %d features %#x", c.Size(), c.BlockSize(), c.Features())
	}
	shadow := make([]byte, c.Size())

	t.Run("QD1", func(t *testing.T) {
		rnd := rand.New(rand.NewPCG(1, 2))
		for i := range 500 {
			n := (1 + rnd.IntN(16)) * 4096
			off := int64(rnd.IntN(int(c.Size())-n)) &^ 4095
			p := shadow[off : off+int64(n)]
			fill(rnd, p)
			if _, err := c.WriteAt(p, off); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
		verifyAll(t, c, shadow)
	})

	t.Run("QD32", func(t *testing.T) {
		// 32 writers on disjoint 2 MiB regions, 64 writes of 4-64 KiB each,
		// then all of it read back by 32 readers.
		const workers, region = 32, 2 << 20
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				rnd := rand.New(rand.NewPCG(uint64(w), 3))
				for range 64 {
					n := (1 + rnd.IntN(16)) * 4096
					off := int64(w*region + rnd.IntN(region-n)&^4095)
					p := shadow[off : off+int64(n)]
					fill(rnd, p)
					if _, err := c.WriteAt(p, off); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		verifyAll(t, c, shadow)
	})

	t.Run("flush", func(t *testing.T) {
		if _, err := c.WriteAt(shadow[:4096], 0); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := c.Flush(); err != nil {
				t.Fatalf("flush: %v", err)
			}
		}
		if err := c.Do(ctx, &gateway.Request{Op: gateway.OpWrite, Buf: shadow[4096:8192], Offset: 4096, FUA: true}); err != nil {
			t.Fatalf("FUA write (write + flush): %v", err)
		}
	})

	t.Run("discard and write-zeroes", func(t *testing.T) {
		before, err := rc.BdevGetIostat(ctx, "M0")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Discard(8<<20, 1<<20); err != nil {
			t.Fatalf("discard: %v", err)
		}
		after, err := rc.BdevGetIostat(ctx, "M0")
		if err != nil {
			t.Fatal(err)
		}
		if d := after.Bdevs[0].BytesUnmapped - before.Bdevs[0].BytesUnmapped; d != 1<<20 {
			t.Errorf("SPDK counted %d bytes unmapped, want 1 MiB", d)
		}
		if err := c.WriteZeroes(ctx, 16<<20, 3<<20, false); err != nil {
			t.Fatalf("write-zeroes: %v", err)
		}
		clear(shadow[16<<20 : 19<<20])
		// The discarded range reads as whatever the bdev says; take it.
		if _, err := c.ReadAt(shadow[8<<20:9<<20], 8<<20); err != nil {
			t.Fatal(err)
		}
		verifyAll(t, c, shadow)
	})

	t.Run("aio bdev", func(t *testing.T) {
		a := dial(t, filepath.Join(tg.VhostDir, "vb-a0"), Options{HugePages: true, QueueDepth: 8})
		if a.Size() != 32<<20 || !a.has(blkFeatFlush) {
			t.Fatalf("aio controller: size %d features %#x", a.Size(), a.Features())
		}
		rnd := rand.New(rand.NewPCG(5, 6))
		p := make([]byte, 256<<10)
		fill(rnd, p)
		if _, err := a.WriteAt(p, 1<<20); err != nil {
			t.Fatal(err)
		}
		if err := a.Flush(); err != nil {
			t.Fatalf("flush: %v", err)
		}
		got := make([]byte, len(p))
		if _, err := a.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, p) {
			t.Fatalf("read back: %v (equal %v)", err, bytes.Equal(got, p))
		}
		// SPDK offers DISCARD only for a bdev that can unmap; aio cannot.
		if err := a.Discard(0, 4096); !errors.Is(err, gateway.ErrUnsupported) {
			t.Errorf("discard on aio: %v, want ErrUnsupported", err)
		}
	})
}

func fill(rnd *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := rnd.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// verifyAll reads the whole device back, 1 MiB at a time, 8 at once.
func verifyAll(t *testing.T, c *Client, want []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const chunk = 1 << 20
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	bad := make(chan int64, len(want)/chunk)
	for off := int64(0); off < int64(len(want)); off += chunk {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			got := make([]byte, chunk)
			if err := c.rw(ctx, false, got, off); err != nil || !bytes.Equal(got, want[off:off+chunk]) {
				bad <- off
			}
		})
	}
	wg.Wait()
	close(bad)
	for off := range bad {
		t.Errorf("MiB at %d differs from what was written", off)
	}
}
