package spdkbackend

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/internal/testwait"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// TestReconnect: the device on an aio bdev (its file outlives the target)
// through faults of a real target: SIGKILL with a write waiting, then a
// restart whose operator re-creates the bdev (the write completes, the
// device reconnected); SIGKILL with no restart within ReconnectTimeout (the
// call fails with ErrUnreachable and EIO, bounded; the device still comes
// back later); SIGSTOP shorter than the bound (the call completes after
// SIGCONT) and longer (it fails, bounded, and the device comes back).
// Every write that returned success reads back after each fault.
func TestReconnect(t *testing.T) {
	tg := spdktest.Start(t, spdktest.Options{})
	img := filepath.Join(t.TempDir(), "aio.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	mkBdev := func() {
		rc, err := rpc.Dial(t.Context(), tg.RPCSocket, rpc.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := rc.BdevAIOCreate(t.Context(), rpc.AIOBdev{Name: "A0", Filename: img, BlockSize: 4096}); err != nil {
			t.Fatal(err)
		}
	}
	mkBdev()
	const ioTimeout, reconnTimeout = 2 * time.Second, 6 * time.Second
	d, err := Open(t.Context(), Options{Socket: tg.RPCSocket, Bdev: "A0", Controller: "sluice-reconnect",
		IOTimeout: ioTimeout, ReconnectTimeout: reconnTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })

	shadow := make([]byte, d.Size())
	rng := rand.New(rand.NewPCG(7, 20))
	var lastOff, lastLen int64 // the last write's range
	write := func() error {
		off := rng.Int64N(d.Size() - 64<<10)
		p := make([]byte, 1+rng.IntN(64<<10))
		lastOff, lastLen = off, int64(len(p))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if _, err := d.WriteAt(p, off); err != nil {
			return err
		}
		copy(shadow[off:], p)
		return d.Flush()
	}
	verify := func(when string) {
		t.Helper()
		got := make([]byte, d.Size())
		if _, err := d.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: read back: %v", when, err)
		}
		if !bytes.Equal(got, shadow) {
			t.Fatalf("%s: the device differs from what was written", when)
		}
	}
	for range 20 {
		if err := write(); err != nil {
			t.Fatal(err)
		}
	}
	verify("before faults")

	// The bound a call waits, with room for a busy machine: one request's
	// timeout, the reconnect timeout, a last request's, and the initiator's
	// control timeout (closing the old connection).
	bound := 2*ioTimeout + reconnTimeout + 5*time.Second + 10*time.Second
	async := func(f func() error) <-chan error {
		ch := make(chan error, 1)
		go func() { ch <- f() }()
		return ch
	}
	waitDone := func(what string, ch <-chan error) error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(bound):
			t.Fatalf("%s: no answer within %v", what, bound)
			return nil
		}
	}
	waitConnected := func(what string, n uint64) {
		t.Helper()
		testwait.For(t, what+": reconnected", func() bool { return d.Connected() && d.Reconnects() >= n })
	}

	t.Run("kill-restart", func(t *testing.T) {
		before := d.Reconnects()
		tg.Kill()
		ch := async(write)
		testwait.For(t, "device notices the dead target", func() bool { return !d.Connected() })
		tg.Restart(t)
		mkBdev()
		if err := waitDone("write across restart", ch); err != nil {
			t.Fatalf("write across restart: %v", err)
		}
		waitConnected("kill-restart", before+1)
		verify("after restart")
	})
	t.Run("kill-no-restart", func(t *testing.T) {
		before := d.Reconnects()
		tg.Kill()
		start := time.Now()
		err := waitDone("write to a dead target", async(write))
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, gateway.ErrIO) {
			t.Fatalf("write to a dead target: %v, want ErrUnreachable and ErrIO", err)
		}
		if took := time.Since(start); took < reconnTimeout {
			t.Fatalf("gave up after %v, before ReconnectTimeout %v", took, reconnTimeout)
		}
		tg.Restart(t)
		mkBdev()
		waitConnected("kill-no-restart", before+1)
		resync(t, d, shadow[lastOff:lastOff+lastLen], lastOff)
		if err := write(); err != nil {
			t.Fatal(err)
		}
		verify("after the target came back")
	})
	t.Run("stop-short", func(t *testing.T) {
		before := d.Reconnects()
		if err := tg.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		ch := async(write)
		testwait.For(t, "device gives up on the stopped target's connection", func() bool { return !d.Connected() })
		if err := tg.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if err := waitDone("write across a stop", ch); err != nil {
			t.Fatalf("write across a stop: %v", err)
		}
		waitConnected("stop-short", before+1)
		verify("after SIGCONT")
	})
	t.Run("stop-long", func(t *testing.T) {
		before := d.Reconnects()
		if err := tg.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		err := waitDone("write to a stopped target", async(write))
		if !errors.Is(err, ErrUnreachable) || !errors.Is(err, gateway.ErrIO) {
			tg.Signal(syscall.SIGCONT)
			t.Fatalf("write to a stopped target: %v, want ErrUnreachable and ErrIO", err)
		}
		if err := tg.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		waitConnected("stop-long", before+1)
		resync(t, d, shadow[lastOff:lastOff+lastLen], lastOff)
		if err := write(); err != nil {
			t.Fatal(err)
		}
		verify("after a long stop")
	})
}

// resync takes the device's content of a failed write's range as the
// shadow's: the write may have landed or not, and both are correct; every
// other byte is still checked.
func resync(t *testing.T, d *Device, shadow []byte, off int64) {
	t.Helper()
	if _, err := d.ReadAt(shadow, off); err != nil {
		t.Fatalf("read after reconnect: %v", err)
	}
}
