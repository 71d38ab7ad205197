package integration

import (
	"sync"
	"sync/atomic"
	"time"
)

// ioRecord is what a test client that runs until stopped keeps about
// itself: its first error, and its longest IO since the test last asked
// (the pause a restart made it see). Embedded by the clients.
type ioRecord struct {
	err atomic.Pointer[error]

	lmu     sync.Mutex
	longest time.Duration
}

// fail keeps err if it is the first.
func (r *ioRecord) fail(err error) { r.err.CompareAndSwap(nil, &err) }

// failed is the first error, if any.
func (r *ioRecord) failed() error {
	if p := r.err.Load(); p != nil {
		return *p
	}
	return nil
}

// observe records one IO's time.
func (r *ioRecord) observe(d time.Duration) {
	r.lmu.Lock()
	r.longest = max(r.longest, d)
	r.lmu.Unlock()
}

// takeLongest returns the longest IO since the last call, and starts again.
func (r *ioRecord) takeLongest() time.Duration {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	d := r.longest
	r.longest = 0
	return d
}
