package nbd

import (
	"sync/atomic"
	"time"
)

// Inline execution. Handing a request to a worker goroutine costs a wake-up
// (a futex and a context switch, several microseconds on this class of
// machine), which is more than a cached 4 KiB read takes. So the reader runs a
// request itself when the export has recently been answering that kind of
// request quickly, and hands it to a worker otherwise. A slow or throttled
// export therefore still gets full concurrency, while a fast one is served
// without any goroutine switch, with replies batched into one writev per
// burst of requests.
//
// A request that arrives on an idle connection (nothing else in flight,
// nothing more received) runs inline under a looser bound, idleThreshold:
// there is nothing to overlap it with, so the hand-off would only add its
// wake-up to the request's latency (a 4 KiB write into a pool file whose
// pages are being written back takes ~25 µs here, and QD1 writes went from
// ~10.7K to ~14.5K IOPS). A request that arrives meanwhile waits at most
// about that long for the reader.

const (
	inlineThreshold = 20 * time.Microsecond  // EWMA below which the reader runs requests itself
	idleThreshold   = 200 * time.Microsecond // the same, for a request on an idle connection
	ewmaShift       = 3                      // EWMA weight 1/8 for each new sample
)

// latency tracks an exponentially weighted moving average of export call
// time per request class. It is updated by whichever goroutine ran the request.
type latency struct {
	ewma [4]atomic.Int64 // nanoseconds: read, write-like, flush, block status
}

// latClass returns the class of typ, or -1 for requests that never call the
// export (CACHE), which are always fast.
func latClass(typ uint16) int {
	switch typ {
	case cmdRead:
		return 0
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		return 1
	case cmdFlush:
		return 2
	case cmdBlockStatus:
		return 3
	}
	return -1
}

// init starts pessimistic: requests go to workers until the export has
// shown it is fast (about 30 quick requests), so a slow export never blocks
// the reader on its first request.
func (l *latency) init() {
	for i := range l.ewma {
		l.ewma[i].Store(int64(time.Millisecond))
	}
}

// fast reports whether requests of type typ have recently been quick:
// under inlineThreshold, or under idleThreshold when idle.
func (l *latency) fast(typ uint16, idle bool) bool {
	c := latClass(typ)
	if c < 0 {
		return true
	}
	d := time.Duration(l.ewma[c].Load())
	return d < inlineThreshold || idle && d < idleThreshold
}

// observe records that a request of type typ took d.
func (l *latency) observe(typ uint16, d time.Duration) {
	c := latClass(typ)
	if c < 0 {
		return
	}
	e := &l.ewma[c]
	old := e.Load()
	// Lost updates under a race only make the average a little stale.
	e.Store(old + (int64(d)-old)>>ewmaShift)
}
