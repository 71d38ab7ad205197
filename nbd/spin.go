package nbd

import (
	"runtime"
	"syscall"
	"time"
)

// Spinning before the reader parks.
//
// At queue depth 1 the reader waits for every request: the client reads
// the reply, and only then sends the next request. A reader that parks in
// Go's netpoller is woken by another thread's epoll_wait and rescheduled,
// which on a 2-core machine adds ~10 µs to every request on TCP (fio's
// nbd engine at QD1 over loopback TCP: 21K IOPS parked, 26K spinning up
// to 30 µs, nbdkit 24K; with TLS, 21K parked and 29K spinning up to
// 60 µs). nbdkit's threads block in recv(2), which the kernel wakes
// directly.
//
// So a reader about to wait on an idle connection (nothing in flight)
// first polls the socket without blocking for up to the server's SpinMax,
// but only while the connection's recent waits have been short: the
// moving average of how long the reader waited for a request (parked or
// not) must be below SpinMax. A client that pauses, or that sends its
// requests further apart than SpinMax, gets a parked reader and no spent
// CPU; one that resumes fast gets the spin back within ~20 requests.

// DefaultSpinMax is Options.SpinMax's default: the virtio door's spin
// bound too (virtio.WaitOptions.SpinMax).
const DefaultSpinMax = 64 * time.Microsecond

// idleWait decides and runs the spin for one connection's reader.
type idleWait struct {
	max  time.Duration // <= 0: never spin
	ewma time.Duration // recent waits for a request
}

func newIdleWait(max time.Duration) idleWait {
	// Start as if the last waits were long: a connection spins only once
	// its client has shown it sends requests back to back.
	return idleWait{max: max, ewma: 4 * max}
}

// worth reports whether spinning is likely to catch the next request.
func (w *idleWait) worth() bool { return w.max > 0 && w.ewma < w.max }

// observe records that the reader waited d for a request. Long waits count
// as 4×SpinMax, so a pause does not keep the spin off for long after.
func (w *idleWait) observe(d time.Duration) {
	if w.max <= 0 {
		return
	}
	d = min(d, 4*w.max)
	w.ewma += (d - w.ewma) / 8
}

// spin polls the socket until it has data or SpinMax has passed, yielding
// the processor between polls; it reports whether data arrived.
func (w *idleWait) spin(rc syscall.RawConn) bool {
	deadline := time.Now().Add(w.max)
	ready := false
	var b [1]byte
	err := rc.Read(func(fd uintptr) bool {
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if n > 0 || err != nil && err != syscall.EAGAIN && err != syscall.EINTR {
				ready = n > 0
				return true // data, end of stream or an error: the read will tell
			}
			if time.Now().After(deadline) {
				return true
			}
			runtime.Gosched()
		}
	})
	return err == nil && ready
}
