package virtio

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/waiter"
)

// runner serves one started ring of one connection: a poller goroutine
// takes heads from the avail ring, walks and checks their chains and runs
// the requests, inline or on their own goroutines, publishing used
// elements and calls.
type runner struct {
	b     *backend
	v     *vring
	ring  *deviceRing
	mem   *guestMemory
	w     *waiter.Waiter
	reqs  []*blkReq // by head: at most one in-flight request per head
	chain int       // longest chain accepted
	segs  int       // most iov pieces per direction
	// writeThrough: the driver did not negotiate FLUSH, so every write,
	// discard and write-zeroes must be durable when it completes.
	writeThrough bool
	// track is the ring's part of the inflight region (nil: untracked);
	// resubmit the heads it still held in flight, run before new ones.
	track    *inflightQueue
	resubmit []uint16

	usedMu   sync.Mutex
	inflight sync.WaitGroup
	done     chan struct{}
	avgNs    [3]atomic.Int64 // EWMA of Export.Do latency: read; write/discard/zeroes; flush/other
	errors   atomic.Uint64   // chains rejected
	broken   atomic.Bool
}

func newRunner(b *backend, v *vring, ring *deviceRing, track *inflightQueue, resubmit []uint16) (*runner, error) {
	w, err := waiter.New(b.s.opt.Wait, v.kickFd, &b.s.waits)
	if err != nil {
		return nil, err
	}
	maxChain := max(ring.n, serverSegMax+2)
	return &runner{
		b: b, v: v, ring: ring, mem: b.mem, w: w,
		reqs:         make([]*blkReq, ring.n),
		chain:        maxChain,
		segs:         2 * maxChain,
		writeThrough: !b.acked(blkFeatFlush),
		track:        track,
		resubmit:     resubmit,
		done:         make(chan struct{}),
	}, nil
}

// ready and notify make the runner a waitable for its waiter.
func (r *runner) Ready() bool { return r.ring.availIdx() != r.ring.lastAvail }

func (r *runner) Notify(on bool) {
	r.usedMu.Lock()
	r.ring.setNotify(on)
	r.usedMu.Unlock()
}

// stop ends the poller and waits for it and every request it started.
func (r *runner) stop() {
	r.w.Stop()
	<-r.done
	r.w.Close()
}

func (r *runner) run() {
	defer close(r.done)
	defer r.inflight.Wait()
	defer func() {
		if p := recover(); p != nil {
			// A fault in shared memory (the front-end shrank its memfd)
			// or a bug: this ring stops, the gateway carries on.
			r.fail(fmt.Errorf("panic: %v", p))
		}
	}()
	// Touching a page the front-end truncated away raises SIGBUS; make it
	// a panic we recover instead of a crash of the whole gateway.
	debug.SetPanicOnFault(true)
	r.Notify(false)
	r.resubmitInflight()
	for {
		n, err := r.drain()
		if err != nil {
			r.fail(err)
			return
		}
		r.w.Processed(n)
		if n > 0 {
			runtime.Gosched() // let request goroutines and the caller's side run
		}
		if !r.w.Wait(r) {
			return
		}
	}
}

// fail marks the ring broken: the driver violated the ring protocol in a way
// that leaves no request to fail (a head out of range, an index that jumped
// by more than the ring size, a head reused while in flight). We stop
// processing it and signal the error eventfd, as libvhost-user does.
func (r *runner) fail(err error) {
	r.broken.Store(true)
	r.b.s.brokenRings.Add(1)
	r.b.log.Error("virtio: queue stopped: broken ring", "queue", r.v.index, "err", err)
	r.v.errN.signal()
}

// drain takes the available heads, at most one ring's worth, starts their
// requests, and returns how many it took. Requests that ran inline are
// published with one call. The bound matters: a request may rewrite the
// avail ring (its buffer can overlap it), and the poller must get back to
// its stop check.
func (r *runner) drain() (int, error) {
	taken, inline := 0, 0
	for taken < r.ring.n {
		avail := r.ring.availIdx()
		if avail == r.ring.lastAvail {
			break
		}
		if d := avail - r.ring.lastAvail; int(d) > r.ring.n {
			return taken, fmt.Errorf("avail index moved from %d to %d in a ring of %d", r.ring.lastAvail, avail, r.ring.n)
		}
		for r.ring.lastAvail != avail && taken < r.ring.n {
			head := r.ring.availHead(r.ring.lastAvail)
			if int(head) >= r.ring.n {
				return taken, fmt.Errorf("head %d out of range (ring of %d)", head, r.ring.n)
			}
			q := r.req(head)
			if q.busy.Load() {
				return taken, fmt.Errorf("head %d made available again while in flight", head)
			}
			r.ring.lastAvail++
			taken++
			if r.track != nil {
				r.track.get(head)
			}
			if r.start(q) {
				inline++
			}
		}
	}
	if inline > 0 {
		r.callIfNeeded()
	}
	return taken, nil
}

func (r *runner) req(head uint16) *blkReq {
	q := r.reqs[head]
	if q == nil {
		q = &blkReq{r: r, head: head}
		r.reqs[head] = q
	}
	return q
}

func (r *runner) callIfNeeded() {
	r.usedMu.Lock()
	call := r.ring.needCall()
	r.usedMu.Unlock()
	if call {
		r.v.call.signal()
	}
}

// resubmitInflight runs the requests a previous back-end (or connection)
// took but did not complete, as the inflight region recorded them, oldest
// first. Their marks and counters stay as they are until they complete.
// The heads are distinct and inside the ring (recover checks); their
// chains are walked and checked like any other.
func (r *runner) resubmitInflight() {
	inline := 0
	for _, head := range r.resubmit {
		if r.start(r.req(head)) {
			inline++
		}
	}
	if len(r.resubmit) > 0 {
		r.b.log.Info("virtio: resubmitted in-flight requests", "queue", r.v.index, "requests", len(r.resubmit))
	}
	r.resubmit = nil
	if inline > 0 {
		r.callIfNeeded()
	}
}

// start walks and checks q's chain and runs it inline (reporting true) or
// on a new goroutine.
func (r *runner) start(q *blkReq) bool {
	q.busy.Store(true)
	if err := walkChain(&q.c, r.ring, r.mem, q.head, r.chain, r.segs); err != nil {
		r.rejected(err)
		r.publish(q, q.c.failStatus(r.mem), blkStatusIOErr, 0)
		return true
	}
	// class < 0: the request does not reach the export (GET_ID, a bad
	// header, an unsupported type) and is answered at once.
	class := q.parse()
	if class >= 0 && (r.b.s.opt.InlineBelow < 0 || time.Duration(r.avgNs[class].Load()) >= r.b.s.opt.InlineBelow) {
		r.inflight.Add(1)
		go r.work(q, class)
		return false
	}
	status, written := r.exec(q, class)
	r.publish(q, q.c.statusByte(), status, written)
	return true
}

func (r *runner) work(q *blkReq, class int) {
	defer r.inflight.Done()
	debug.SetPanicOnFault(true)
	defer func() {
		if p := recover(); p != nil {
			// Completing it faulted: its status byte or the used ring
			// is no longer in shared memory. It cannot be completed;
			// its head stays in flight (reusing it breaks the ring).
			door.Panicked(r.b.log, &r.b.s.panics, "virtio: panic completing a request; dropped", p,
				"queue", r.v.index)
		}
	}()
	status, written := r.exec(q, class)
	r.publish(q, q.c.statusByte(), status, written)
	r.callIfNeeded()
}

// exec runs q and returns its status and data length. A panic (in the
// export, or a fault in guest memory) fails the request with IOERR: it is
// logged with its stack and counted, and the caller completes it as usual.
func (r *runner) exec(q *blkReq, class int) (status uint8, written uint32) {
	defer func() {
		if p := recover(); p != nil {
			door.Panicked(r.b.log, &r.b.s.panics, "virtio: request panicked; failed with IOERR", p,
				"queue", r.v.index, "type", q.typ)
			status, written = blkStatusIOErr, 0
		}
	}()
	return q.exec(class)
}

// publish writes the status byte (if the chain has one) and the used
// element. used.len counts the bytes written to device-writable buffers:
// data plus the status byte.
func (r *runner) publish(q *blkReq, status []byte, st uint8, written uint32) {
	length := uint32(0)
	if status != nil {
		status[0] = st
		length = written + 1
	}
	q.release()
	r.usedMu.Lock()
	defer r.usedMu.Unlock() // putUsed writes shared memory, which may fault
	if r.track != nil {
		r.track.prePut(q.head)
	}
	r.ring.putUsed(q.head, length)
	if r.track != nil {
		r.track.postPut(q.head, r.ring.usedIdx)
	}
}

// record folds one Export.Do latency into its class average.
func (r *runner) record(class int, d time.Duration) {
	a := &r.avgNs[class]
	old := a.Load()
	a.Store(old + (int64(d)-old)/8)
}

// rejected counts a bad chain; the first per ring is logged as a warning,
// later ones at debug level so a hostile front-end cannot flood the log.
func (r *runner) rejected(err error) {
	r.b.s.rejectedChains.Add(1)
	if r.errors.Add(1) == 1 {
		r.b.log.Warn("virtio: request rejected (bad descriptor chain)", "queue", r.v.index, "err", err)
		return
	}
	r.b.log.Debug("virtio: request rejected", "queue", r.v.index, "err", err)
}
