package waiter

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
)

// osLoad tells whether the machine's runnable tasks outnumber its CPUs,
// from the kernel's count of running tasks (/proc/loadavg's fourth field,
// "running/total", an instant count, not an average), read at most once
// per loadEvery by whichever waiter asks first (a read costs a few
// microseconds) and smoothed over a few milliseconds.
//
// Why: a spinning or napping poller is worth its CPU only when a CPU is
// otherwise idle. The yield test (Waiter.yield) sees contention inside
// this Go process only; a database's backends competing for the same
// cores (PostgreSQL under the shim: eight backends on two cores) do not
// show up there, and a poller spinning among them took CPU they needed:
// measured on this 2-core machine with other work running, pgbench gave
// 0.86–0.93x the FUSE door with spinning shim pollers and 1.08–1.20x with
// pollers that block at once, at half the gateway CPU per transaction.
type osLoad struct {
	ncpu  int
	at    atomic.Int64 // UnixNano of the last read; 0: never
	avg   float64      // EWMA of the running count (written by the reader that won at)
	busy  atomic.Bool
	path  string
	clock func() time.Time
}

// The running count is smoothed (loadAlpha per read, about 8 ms) and the
// machine counts as contended above loadOver times its CPUs: a poller
// spinning for a client thread that spins too is two running tasks of one
// IO stream, and with the Go runtime's own threads and any passing task
// the count sits above the CPUs of a 2-core machine while one QD1 stream
// runs; stopping the spinning there took 4K QD1 through the shim from
// 5.6x to 1.9x the FUSE door (first at the instant count > CPUs, then at
// an average > CPUs + 0.5). Eight busy database backends keep the
// average far above twice the CPUs.
const (
	loadAlpha = 0.125
	loadOver  = 2.0
)

const loadEvery = time.Millisecond

func newOSLoad() *osLoad {
	return &osLoad{ncpu: runtime.NumCPU(), path: "/proc/loadavg", clock: time.Now}
}

// contended reports whether more tasks are runnable than there are CPUs
// (the asking poller, running, counts as one of them).
func (l *osLoad) contended() bool {
	if l == nil {
		return false
	}
	now := l.clock().UnixNano()
	last := l.at.Load()
	if now-last < int64(loadEvery) || !l.at.CompareAndSwap(last, now) {
		return l.busy.Load()
	}
	if n, ok := runningTasks(l.path); ok {
		l.avg += loadAlpha * (float64(n) - l.avg)
		l.busy.Store(l.avg > loadOver*float64(l.ncpu))
	}
	return l.busy.Load()
}

// runningTasks reads the running count from a /proc/loadavg line:
// "0.52 0.58 0.59 3/467 12345".
func runningTasks(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	f := bytes.Fields(b)
	if len(f) < 4 {
		return 0, false
	}
	run, _, ok := bytes.Cut(f[3], []byte("/"))
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(string(run))
	return n, err == nil
}
