package nbd

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// What one client can hold of the gateway (issue 17: 40 stalled
// connections took the gateway from 107 to 733 MiB):
//
//   - connections: at most Options.MaxConns in all and
//     Options.MaxConnsPerClient per client (a unix peer's uid, a TCP
//     peer's IP); a connection past either is closed at once (the caps
//     are enforced by the door's registry, internal/door);
//   - in-flight payload bytes: inflightBudget per connection (conn.go),
//     Options.TenantInflight per tenant (the part of the export name
//     before '/') and Options.TotalInflight in all; a request waits for
//     its bytes;
//   - time: a WRITE payload, and every write of replies, must make
//     progress within Options.StallTimeout, or the connection is closed
//     and what it held is returned. An idle connection (no request
//     pending) is not timed out: NBD clients, the kernel's among them,
//     stay connected idle.

// Defaults of the limits.
const (
	DefaultMaxConns          = 1024
	DefaultMaxConnsPerClient = 64
	DefaultTenantInflight    = 256 << 20
	DefaultTotalInflight     = 1 << 30
	DefaultStallTimeout      = 60 * time.Second
)

// limits are a server's shared budgets.
type limits struct {
	maxConns, maxPerClient int
	stall                  time.Duration
	tenantInflight         int64
	total                  *budget

	mu      sync.Mutex
	tenants map[string]*budget
}

func newLimits(o Options) *limits {
	def := func(v, d int64) int64 {
		if v <= 0 {
			return d
		}
		return v
	}
	return &limits{
		maxConns:       int(def(int64(o.MaxConns), DefaultMaxConns)),
		maxPerClient:   int(def(int64(o.MaxConnsPerClient), DefaultMaxConnsPerClient)),
		stall:          time.Duration(def(int64(o.StallTimeout), int64(DefaultStallTimeout))),
		tenantInflight: def(o.TenantInflight, DefaultTenantInflight),
		total:          newBudget(def(o.TotalInflight, DefaultTotalInflight)),
		tenants:        make(map[string]*budget),
	}
}

// tenant returns the in-flight budget of the tenant of export name.
func (l *limits) tenant(name string) *budget {
	t, _, _ := strings.Cut(name, "/")
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.tenants[t]
	if b == nil {
		b = newBudget(l.tenantInflight)
		l.tenants[t] = b
	}
	return b
}

// budget is a count of bytes with a limit, shared by many goroutines:
// lock-free while there is room, waiters woken when bytes return. A
// request larger than the whole limit runs when nothing else holds any.
type budget struct {
	limit   int64
	used    atomic.Int64
	waiters atomic.Int32
	mu      sync.Mutex
	wake    chan struct{} // closed and replaced by a release while someone waits
}

func newBudget(limit int64) *budget { return &budget{limit: limit, wake: make(chan struct{})} }

func (b *budget) tryAcquire(n int64) bool {
	for {
		u := b.used.Load()
		if u != 0 && u+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// acquire takes n bytes, waiting for them; false if ctx ends first.
func (b *budget) acquire(ctx context.Context, n int64) bool {
	if b.tryAcquire(n) {
		return true
	}
	b.waiters.Add(1)
	defer b.waiters.Add(-1)
	for {
		b.mu.Lock()
		ch := b.wake
		b.mu.Unlock()
		if b.tryAcquire(n) { // after taking ch: a release since is not missed
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (b *budget) release(n int64) {
	b.used.Add(-n)
	if b.waiters.Load() > 0 {
		b.mu.Lock()
		close(b.wake)
		b.wake = make(chan struct{})
		b.mu.Unlock()
	}
}
