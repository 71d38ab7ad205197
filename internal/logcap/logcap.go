// Package logcap bounds what one client can make a server log.
//
// A door gives each connection a logger from New: it passes a burst of
// records, then one per interval; the records dropped in between are
// counted and reported in one line when the next record passes. So a
// client that sends 81,000 bad requests in ten seconds costs a few
// dozen log lines, not hundreds of megabytes. Wire bytes that go into a
// record are cut with Wire.
package logcap

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// Defaults for New: 20 records at once, then one a second.
const (
	DefaultBurst    = 20
	DefaultInterval = time.Second
)

// limiter is a token bucket shared by a logger and the loggers derived
// from it (With, WithGroup).
type limiter struct {
	mu       sync.Mutex
	burst    float64
	interval time.Duration
	tokens   float64
	last     time.Time
	dropped  int
}

// allow takes a token; it returns false if there is none, and otherwise
// the number of records dropped since the last one that passed.
func (l *limiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := now.Sub(l.last); d > 0 { // records may carry times slightly out of order
		l.tokens = min(l.burst, l.tokens+float64(d)/float64(l.interval))
		l.last = now
	}
	if l.tokens < 1 {
		l.dropped++
		return false, 0
	}
	l.tokens--
	d := l.dropped
	l.dropped = 0
	return true, d
}

type handler struct {
	next slog.Handler
	l    *limiter
}

// New returns a logger writing to base's handler that passes burst
// records, then one per interval (DefaultBurst and DefaultInterval when
// zero). Records below base's level cost nothing.
func New(base *slog.Logger, burst int, interval time.Duration) *slog.Logger {
	if burst <= 0 {
		burst = DefaultBurst
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	l := &limiter{burst: float64(burst), interval: interval, tokens: float64(burst), last: time.Now()}
	return slog.New(&handler{next: base.Handler(), l: l})
}

func (h *handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	ok, dropped := h.l.allow(r.Time)
	if !ok {
		return nil
	}
	if dropped > 0 {
		r.AddAttrs(slog.Int("log_lines_suppressed", dropped))
	}
	return h.next.Handle(ctx, r)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{next: h.next.WithAttrs(as), l: h.l}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{next: h.next.WithGroup(name), l: h.l}
}

// MaxWire is how many bytes of a client's input Wire keeps.
const MaxWire = 64

// Wire quotes bytes that came from a client for a log line: at most
// MaxWire of them, with the full length when cut.
func Wire[T string | []byte](b T) string {
	if len(b) <= MaxWire {
		return strconv.Quote(string(b))
	}
	return fmt.Sprintf("%s…(%d bytes)", strconv.Quote(string(b[:MaxWire])), len(b))
}

// Clients hands out loggers capped per client rather than per connection:
// a client that reconnects keeps its budget. Keys name clients (an IP
// address, a unix peer's uid). At most maxClients buckets are kept; past
// that the oldest half is forgotten.
type Clients struct {
	base     *slog.Logger
	burst    int
	interval time.Duration

	mu    sync.Mutex
	byKey map[string]*clientBucket
	seq   uint64
}

type clientBucket struct {
	l    *limiter
	used uint64 // seq of the last For
}

const maxClients = 4096

// NewClients returns capped loggers over base (zero burst and interval:
// the defaults).
func NewClients(base *slog.Logger, burst int, interval time.Duration) *Clients {
	if burst <= 0 {
		burst = DefaultBurst
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Clients{base: base, burst: burst, interval: interval, byKey: make(map[string]*clientBucket)}
}

// For returns the logger of client key, with "client" set to key.
func (c *Clients) For(key string) *slog.Logger {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	b := c.byKey[key]
	if b == nil {
		if len(c.byKey) >= maxClients {
			c.forgetOldest()
		}
		b = &clientBucket{l: &limiter{burst: float64(c.burst), interval: c.interval, tokens: float64(c.burst), last: time.Now()}}
		c.byKey[key] = b
	}
	b.used = c.seq
	return slog.New(&handler{next: c.base.Handler(), l: b.l}).With("client", key)
}

// forgetOldest drops the half of the buckets used longest ago.
func (c *Clients) forgetOldest() {
	cut := c.seq - uint64(len(c.byKey)/2)
	for k, b := range c.byKey {
		if b.used <= cut {
			delete(c.byKey, k)
		}
	}
}
