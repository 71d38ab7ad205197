package virtio

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/waiter"
)

// layout places the rings, per-request metadata and data buffers of every
// queue in one memfd.
//
//	per queue: desc table | avail ring        (page aligned)
//	           used ring                       (page aligned)
//	per slot:  header 16 | status 1 | pad | indirect table 16×k   (64-byte aligned)
//	per slot:  data buffer of maxIO bytes      (page aligned)
type layout struct {
	queues, n, depth, k int
	maxIO, segSize      int
	indirect, eventIdx  bool
	ringSize            int // bytes per queue for its rings
	availOff, usedOff   int // within a queue's ring block
	metaSize            int // bytes per slot of metadata
	ringsOff, metaOff   int
	dataOff, total      int
}

const (
	slotStatusOff = 16
	slotTableOff  = 32
)

// plan sizes requests and queues from the options and what the target
// said (seg_max, size_max) and lays out the shared memory.
func (c *Client) plan(queues int) (*layout, error) {
	l := &layout{queues: queues, n: c.opt.QueueSize, maxIO: c.opt.MaxIO,
		indirect: c.has(featIndirectDesc), eventIdx: c.has(featEventIdx)}
	l.segSize = l.maxIO
	if c.has(blkFeatSizeMax) && c.cfg.SizeMax >= sectorSize {
		l.segSize = min(l.segSize, int(c.cfg.SizeMax)&^(sectorSize-1))
	}
	segs := (l.maxIO + l.segSize - 1) / l.segSize
	if c.has(blkFeatSegMax) && c.cfg.SegMax > 0 && segs > int(c.cfg.SegMax) {
		segs = int(c.cfg.SegMax)
		l.maxIO = segs * l.segSize &^ (pageSize - 1)
		if l.maxIO == 0 {
			l.maxIO = segs * l.segSize &^ (sectorSize - 1)
		}
	}
	l.k = segs + 2
	if !l.indirect && l.k > l.n {
		segs = l.n - 2
		if segs < 1 {
			return nil, fmt.Errorf("queue size %d too small for a request", l.n)
		}
		l.k = l.n
		l.maxIO = segs * l.segSize &^ (sectorSize - 1)
	}
	l.depth = c.opt.QueueDepth
	if l.indirect {
		l.depth = min(l.depth, l.n)
	} else {
		l.depth = min(l.depth, l.n/l.k)
	}
	l.availOff = descTableSize(l.n)
	l.usedOff = alignUp(l.availOff+availSize(l.n), pageSize)
	l.ringSize = alignUp(l.usedOff+usedSize(l.n), pageSize)
	l.metaSize = alignUp(slotTableOff+descSize*l.k, 64)
	l.ringsOff = 0
	l.metaOff = l.queues * l.ringSize
	l.dataOff = alignUp(l.metaOff+l.queues*l.depth*l.metaSize, pageSize)
	l.total = l.dataOff + l.queues*l.depth*l.maxIO
	c.maxIO, c.segSize = l.maxIO, l.segSize
	return l, nil
}

// cqueue is one initiator queue: its ring, request slots, eventfds and the
// poller that delivers completions.
type cqueue struct {
	c        *Client
	index    int
	ring     *driverRing
	ringOff  int
	availOff int
	usedOff  int
	k        int // descriptors per slot (direct) or per indirect table
	indirect bool
	slots    []cslot
	free     chan uint16 // slot numbers
	kickFd   int
	callFd   int
	w        *waiter.Waiter
	done     chan struct{} // closed when the poller has exited

	mu sync.Mutex // submit: avail ring and its flags
}

// Slot states.
const (
	slotIdle      = 0
	slotInFlight  = 1
	slotDone      = 2
	slotAbandoned = 3 // the caller gave up (context); the poller frees it
)

// cslot is one request's resources in shared memory.
type cslot struct {
	num     uint16
	head    uint16 // descriptor index in the main table
	hdr     []byte
	status  []byte
	table   []byte // indirect table (indirect mode)
	data    []byte
	gpaHdr  uint64
	gpaStat uint64
	gpaTab  uint64
	gpaData uint64
	state   atomic.Uint32
	usedLen uint32
	ch      chan struct{}
	op      op // the request in flight (no allocation per request)
}

func newCQueue(c *Client, index int, l *layout) (*cqueue, error) {
	mem := c.shm.buf
	gpa := func(off int) uint64 { return clientGPABase + uint64(off) }
	ro := l.ringsOff + index*l.ringSize
	ring, err := newDriverRing(l.n, mem[ro:ro+l.availOff], mem[ro+l.availOff:ro+l.usedOff], mem[ro+l.usedOff:ro+l.ringSize], l.eventIdx)
	if err != nil {
		return nil, err
	}
	q := &cqueue{
		c: c, index: index, ring: ring, ringOff: ro, availOff: l.availOff, usedOff: l.usedOff,
		k: l.k, indirect: l.indirect, slots: make([]cslot, l.depth), free: make(chan uint16, l.depth),
		kickFd: -1, callFd: -1, done: make(chan struct{}),
	}
	for i := range q.slots {
		s := &q.slots[i]
		mo := l.metaOff + (index*l.depth+i)*l.metaSize
		do := l.dataOff + (index*l.depth+i)*l.maxIO
		s.num = uint16(i)
		s.head = uint16(i)
		if !l.indirect {
			s.head = uint16(i * l.k)
		}
		s.hdr = mem[mo : mo+blkHeaderSize]
		s.status = mem[mo+slotStatusOff : mo+slotStatusOff+1]
		s.table = mem[mo+slotTableOff : mo+slotTableOff+descSize*l.k]
		s.data = mem[do : do+l.maxIO]
		s.gpaHdr, s.gpaStat, s.gpaTab, s.gpaData = gpa(mo), gpa(mo+slotStatusOff), gpa(mo+slotTableOff), gpa(do)
		s.ch = make(chan struct{}, 1)
		q.free <- s.num
	}
	if q.kickFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		q.close()
		return nil, fmt.Errorf("virtio: kick eventfd: %w", err)
	}
	if q.callFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		q.close()
		return nil, fmt.Errorf("virtio: call eventfd: %w", err)
	}
	if q.w, err = waiter.New(c.opt.Wait, q.callFd, &c.waits); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *cqueue) close() {
	if q.kickFd >= 0 {
		unix.Close(q.kickFd)
		q.kickFd = -1
	}
	if q.callFd >= 0 {
		unix.Close(q.callFd)
		q.callFd = -1
	}
	if q.w != nil {
		q.w.Close()
		q.w = nil
	}
}

// ready and notify make the queue a waitable for its waiter.
func (q *cqueue) Ready() bool { return q.ring.usedIdx() != q.ring.lastUsed }

func (q *cqueue) Notify(on bool) {
	q.mu.Lock()
	q.ring.setInterrupts(on)
	q.mu.Unlock()
}

// poll delivers completions until stopped.
func (q *cqueue) poll() {
	defer close(q.done)
	q.Notify(false)
	for {
		n := q.harvest()
		q.w.Processed(n)
		if n > 0 {
			// Hand the P to the callers just woken (they sit in this P's
			// run queue) instead of making them wait for our next spin.
			runtime.Gosched()
		}
		if !q.w.Wait(q) {
			return
		}
	}
}

// harvest hands used elements, at most one ring's worth, to their slots'
// waiters (the bound keeps a target that spins the used index from holding
// the poller away from its stop check).
func (q *cqueue) harvest() int {
	n := 0
	for n < q.ring.n {
		id, length, ok := q.ring.nextUsed()
		if !ok {
			return n
		}
		n++
		s := q.slotByID(id)
		if s == nil {
			q.c.misbehaved("target completed an unknown descriptor", q.index, id)
			continue
		}
		// The CAS comes first: it orders this goroutine after the
		// submitter in Go's memory model (the ring in shared memory does
		// too, but the race detector cannot see that).
		if s.state.CompareAndSwap(slotInFlight, slotDone) {
			s.usedLen = length
			s.ch <- struct{}{}
		} else if s.state.CompareAndSwap(slotAbandoned, slotIdle) {
			q.free <- s.num
		} else {
			q.c.misbehaved("target completed a request twice", q.index, id)
		}
	}
	return n
}

func (q *cqueue) slotByID(id uint32) *cslot {
	if !q.indirect {
		if id%uint32(q.k) != 0 {
			return nil
		}
		id /= uint32(q.k)
	}
	if id >= uint32(len(q.slots)) {
		return nil
	}
	return &q.slots[id]
}

// build writes s's descriptor chain: header, data (split by segSize), status.
// deviceWrites says whether the data is device-writable (IN, GET_ID).
func (q *cqueue) build(s *cslot, dataLen int, deviceWrites bool, segSize int) {
	descs := s.table
	base := 0
	if !q.indirect {
		descs, base = q.ring.desc, int(s.head)
	}
	i := 0
	put := func(addr uint64, length int, flags uint16) {
		writeDesc(descs, base+i, desc{addr: addr, len: uint32(length), flags: flags | descFlagNext, next: uint16(base + i + 1)})
		i++
	}
	put(s.gpaHdr, blkHeaderSize, 0)
	dflags := uint16(0)
	if deviceWrites {
		dflags = descFlagWrite
	}
	for off := 0; off < dataLen; off += segSize {
		put(s.gpaData+uint64(off), min(segSize, dataLen-off), dflags)
	}
	writeDesc(descs, base+i, desc{addr: s.gpaStat, len: 1, flags: descFlagWrite})
	i++
	if q.indirect {
		writeDesc(q.ring.desc, int(s.head), desc{addr: s.gpaTab, len: uint32(i * descSize), flags: descFlagIndirect})
	}
}

// statusUnset is the status byte a request goes out with: no status the
// target can write, so a byte still unset after completion was not written.
const statusUnset = 0xff

// submit publishes s's chain and kicks the target if it wants a kick.
func (q *cqueue) submit(s *cslot) {
	s.status[0] = statusUnset
	s.state.Store(slotInFlight)
	q.mu.Lock()
	kick := q.ring.publish(s.head)
	q.mu.Unlock()
	if kick {
		signalFd(q.kickFd)
	}
}

// setHeader fills the virtio-blk request header.
func (s *cslot) setHeader(typ uint32, sector uint64) {
	binary.LittleEndian.PutUint32(s.hdr[0:], typ)
	binary.LittleEndian.PutUint32(s.hdr[4:], 0)
	binary.LittleEndian.PutUint64(s.hdr[8:], sector)
}
