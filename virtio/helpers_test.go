package virtio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

// memExport is a memory-backed Export that records what reached it.
type memExport struct {
	mu       sync.RWMutex
	data     []byte
	ro       bool
	ops      [5]atomic.Int64
	fua      [5]atomic.Int64 // requests with FUA, by op
	panicky  atomic.Bool     // panic in Do
	noHole   atomic.Int64    // write-zeroes requests that asked to keep the range allocated
	badRange atomic.Int64    // requests outside the export (the server must filter them)
	badDoor  atomic.Int64
}

func newMemExport(size int) *memExport { return &memExport{data: make([]byte, size)} }

func (m *memExport) Size() int64    { return int64(len(m.data)) }
func (m *memExport) ReadOnly() bool { return m.ro }

func (m *memExport) Do(ctx context.Context, req *gateway.Request) error {
	if int(req.Op) < len(m.ops) {
		m.ops[req.Op].Add(1)
		if req.FUA {
			m.fua[req.Op].Add(1)
		}
	}
	if m.panicky.Load() {
		panic("memExport: told to panic")
	}
	if req.Door != gateway.DoorVirtio {
		m.badDoor.Add(1)
	}
	length := req.Length
	if req.Op == gateway.OpRead || req.Op == gateway.OpWrite {
		length = int64(len(req.Buf))
	}
	if req.Op != gateway.OpFlush && (req.Offset < 0 || length < 0 || req.Offset+length > int64(len(m.data))) {
		m.badRange.Add(1)
		return fmt.Errorf("memExport: [%d, +%d): %w", req.Offset, length, gateway.ErrOutOfRange)
	}
	switch req.Op {
	case gateway.OpRead:
		m.mu.RLock()
		copy(req.Buf, m.data[req.Offset:])
		m.mu.RUnlock()
	case gateway.OpWrite:
		m.mu.Lock()
		copy(m.data[req.Offset:], req.Buf)
		m.mu.Unlock()
	case gateway.OpFlush:
	case gateway.OpDiscard, gateway.OpWriteZeroes:
		if req.NoHole {
			m.noHole.Add(1)
		}
		m.mu.Lock()
		clear(m.data[req.Offset : req.Offset+length])
		m.mu.Unlock()
	default:
		return gateway.ErrUnsupported
	}
	return nil
}

func (m *memExport) snapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return bytes.Clone(m.data)
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return quietLogger()
}

// startServer serves exp on a socket in a temp dir and returns the path.
func startServer(t *testing.T, exp Export, opts ServerOptions) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	srv := NewServer(exp, opts)
	sock := filepath.Join(t.TempDir(), "vhost.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, sock
}

func dial(t *testing.T, sock string, opts Options) *Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, sock, opts)
		// A target binds its socket before it listens (qemu-storage-
		// daemon does): until then a connect is refused.
		if errors.Is(err, syscall.ECONNREFUSED) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond) // poll interval
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

type blockDev interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
}

// randomIO runs workers goroutines of ops random reads and writes each on
// its own stripe of dev and checks every read against a model of what the
// stripe should hold. The device must read as zeros at the start. It returns
// the model of the whole device (zeros outside the stripes).
func randomIO(t *testing.T, dev blockDev, size int64, workers, ops int, maxLen int, seed uint64) []byte {
	t.Helper()
	stripe := (size / int64(workers)) &^ 4095
	model := make([]byte, size)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			base := int64(w) * stripe
			mine := model[base : base+stripe]
			buf := make([]byte, maxLen)
			for i := range ops {
				n := int64(1+rng.IntN(maxLen/512)) * 512
				n = min(n, stripe)
				off := rng.Int64N((stripe-n)/512+1) * 512
				p := buf[:n]
				if rng.IntN(2) == 0 {
					fillRandom(rng, p)
					if _, err := dev.WriteAt(p, base+off); err != nil {
						errs <- fmt.Errorf("worker %d op %d: write [%d,+%d): %w", w, i, base+off, n, err)
						return
					}
					copy(mine[off:], p)
				} else {
					if _, err := dev.ReadAt(p, base+off); err != nil {
						errs <- fmt.Errorf("worker %d op %d: read [%d,+%d): %w", w, i, base+off, n, err)
						return
					}
					if !bytes.Equal(p, mine[off:off+n]) {
						errs <- fmt.Errorf("worker %d op %d: read [%d,+%d): data mismatch at byte %d", w, i, base+off, n, firstDiff(p, mine[off:off+n]))
						return
					}
				}
			}
			whole := make([]byte, stripe)
			if _, err := dev.ReadAt(whole, base); err != nil {
				errs <- fmt.Errorf("worker %d: final read: %w", w, err)
				return
			}
			if !bytes.Equal(whole, mine) {
				errs <- fmt.Errorf("worker %d: final read mismatch at byte %d", w, firstDiff(whole, mine))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return model
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
