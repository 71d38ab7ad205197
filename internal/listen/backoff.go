// Package listen holds what every door's accept loop shares: how to
// survive a failed accept.
//
// An accept fails for reasons that pass: the process or the system is out
// of file descriptors (EMFILE, ENFILE), memory (ENOBUFS, ENOMEM), or a
// client went away between SYN and accept (ECONNABORTED). A listener that
// returns on such an error stops serving for good (one EMFILE killed the
// TCP NBD door). Backoff makes the loop wait and try again instead,
// 5 ms doubling to 1 s, logging once per run of failures.
package listen

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

// Backoff is the state of one accept loop; the zero value is ready.
type Backoff struct {
	delay time.Duration
}

// Retry decides what an accept loop does after err: it returns true after
// waiting (the loop accepts again), or false when err means the listener
// is closed (the loop returns). It returns false at once when ctx ends.
func (b *Backoff) Retry(ctx context.Context, err error, log *slog.Logger, door string) bool {
	if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		return false
	}
	if b.delay == 0 {
		b.delay = 5 * time.Millisecond
		if log != nil {
			log.Error("accept failed; retrying with backoff (out of file descriptors? raise the limit: ulimit -n)", "door", door, "err", err)
		}
	} else if b.delay *= 2; b.delay > time.Second {
		b.delay = time.Second
	}
	t := time.NewTimer(b.delay)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Reset is called after a successful accept.
func (b *Backoff) Reset() { b.delay = 0 }
