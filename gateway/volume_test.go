package gateway

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// A FUA discard or write-zeroes is durable when Do returns. The evidence is
// the pool's used space: the chunks a discard unmaps are freed only by the
// metadata sync that makes the unmap durable (the store never reuses an
// extent before that), and nothing else syncs within the test (the
// background sync runs once a second).
func TestFUAUnmapIsDurable(t *testing.T) {
	ctx := context.Background()
	for _, op := range []Op{OpDiscard, OpWriteZeroes} {
		t.Run(op.String(), func(t *testing.T) {
			g := openTestGateway(t)
			v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "v", Size: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			chunk := v.Info().ChunkSize
			if err := v.Do(ctx, &Request{Op: OpWrite, Buf: bytes.Repeat([]byte{7}, int(chunk)), FUA: true}); err != nil {
				t.Fatal(err)
			}
			before := g.PoolStats().Used
			if before < chunk {
				t.Fatalf("pool used %d after writing a chunk of %d", before, chunk)
			}
			if err := v.Do(ctx, &Request{Op: op, Length: chunk, FUA: true}); err != nil {
				t.Fatal(err)
			}
			if got := g.PoolStats().Used; got != before-chunk {
				t.Fatalf("pool used %d right after a FUA %v, want %d: the unmap was not made durable", got, op, before-chunk)
			}
		})
	}
}

// lockedBuffer is a log sink for a gateway's logger (it logs from its own
// goroutines too).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A panic below Do fails that request with ErrIO, is logged with its stack
// and counted, releases the QoS slot it held, and the volume keeps serving.
func TestDoPanicFailsOnlyThatRequest(t *testing.T) {
	ctx := context.Background()
	var logs lockedBuffer
	g, err := Open(ctx, Config{DataDir: t.TempDir(), PoolSize: 256 << 20, AutomationInterval: -1,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "v", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	rule, err := g.SetQoSRule(ctx, QoSRule{Tenant: "acme", Volume: "v", Limits: qos.Limits{IOPS: 1e9}})
	if err != nil {
		t.Fatal(err)
	}
	v.testFault = func(req *Request) {
		if req.Offset == 4096 {
			panic("injected fault")
		}
	}
	buf := make([]byte, 4096)
	err = v.Do(ctx, &Request{Op: OpWrite, Offset: 4096, Buf: buf, Door: DoorNBD})
	if !errors.Is(err, ErrIO) {
		t.Fatalf("panicking request: %v, want ErrIO", err)
	}
	if err := v.Do(ctx, &Request{Op: OpWrite, Offset: 0, Buf: buf, Door: DoorNBD}); err != nil {
		t.Fatalf("request after the panic: %v", err)
	}
	var st OpStats
	for _, s := range v.Stats() {
		if s.Door == "nbd" && s.Op == "write" {
			st = s
		}
	}
	if st.Ops != 2 || st.Errors != 1 || st.Panics != 1 {
		t.Errorf("nbd write stats %+v, want 2 ops, 1 error, 1 panic", st)
	}
	if q := ruleStats(g, rule.ID); q.AdmittedOps != 2 || q.InFlight != 0 {
		t.Errorf("queue stats %+v: want 2 admitted and none in flight (the panic released its slot)", q)
	}
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "injected fault") || !strings.Contains(out, "volume_test.go") {
		t.Errorf("log lacks the panic at ERROR with its stack:\n%s", out)
	}
}

func ruleStats(g *Gateway, id uint64) qos.QueueStats {
	for _, r := range g.QoSRules() {
		if r.ID == id {
			return r.Stats
		}
	}
	return qos.QueueStats{}
}
