package virtio

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, QEMU
// docs/interop/vhost-user.rst "Inflight I/O tracking", split rings).
//
// The back-end hands the front-end a memfd (GET_INFLIGHT_FD); the front-end
// keeps it and gives it back with SET_INFLIGHT_FD at every start, including
// to a new back-end process after the old one died. Per queue it holds
//
//	le64 features; le16 version; le16 desc_num; le16 last_batch_head; le16 used_idx
//	{u8 inflight; u8 padding[5]; le16 next; le64 counter} desc[desc_num]
//
// and each queue's part is 16 + 16·queue_size bytes rounded up to 64 (the
// stride libvhost-user uses for power-of-two queue sizes). A head is marked
// inflight (with the next counter) when it is taken from the avail ring;
// before its used element is published, last_batch_head is set to it; after
// used.idx is published its mark is cleared and used_idx set to used.idx.
// A back-end that died between publishing used.idx and clearing the mark
// leaves used_idx behind used.idx: the recovering back-end then clears
// last_batch_head's mark. The heads still marked are resubmitted in counter
// order before new ones, and the next avail entry is used.idx plus their
// number (the front-end cannot know it: it sets the base to used.idx).
//
// The region is shared memory the front-end can write: every index read
// from it is checked, it is read once per ring start into a snapshot, and
// the marks are only ever written by us.

const (
	inflightHeaderSize = 16
	inflightDescSize   = 16
	inflightAlign      = 64
	inflightVersion    = 1
	inflightMsgSize    = 24 // le64 mmap_size, le64 mmap_offset, le16 num_queues, le16 queue_size, padding
	// maxInflightBytes bounds a region we map (64 queues of 32768 entries).
	maxInflightBytes = vhostUserMaxQueues * (inflightHeaderSize + inflightDescSize*maxQueueSize)
)

// inflightQueueBytes is one queue's part of the region.
func inflightQueueBytes(queueSize int) int {
	return alignUp(inflightHeaderSize+inflightDescSize*queueSize, inflightAlign)
}

// inflightMsg is the payload of GET_INFLIGHT_FD and SET_INFLIGHT_FD.
type inflightMsg struct {
	MmapSize, MmapOffset uint64
	NumQueues, QueueSize uint16
}

func decodeInflight(m *message) (inflightMsg, error) {
	if err := checkSize(m, inflightMsgSize-4); err != nil {
		return inflightMsg{}, err
	}
	le, p := binary.LittleEndian, m.payload
	return inflightMsg{MmapSize: le.Uint64(p), MmapOffset: le.Uint64(p[8:]), NumQueues: le.Uint16(p[16:]), QueueSize: le.Uint16(p[18:])}, nil
}

func encodeInflight(i inflightMsg) []byte {
	b := make([]byte, inflightMsgSize)
	le := binary.LittleEndian
	le.PutUint64(b, i.MmapSize)
	le.PutUint64(b[8:], i.MmapOffset)
	le.PutUint16(b[16:], i.NumQueues)
	le.PutUint16(b[18:], i.QueueSize)
	return b
}

// checkInflightShape checks the queue count and size a front-end asks for.
func checkInflightShape(i inflightMsg, queues int) error {
	switch {
	case i.NumQueues == 0 || int(i.NumQueues) > queues:
		return fmt.Errorf("inflight region for %d queues (have %d)", i.NumQueues, queues)
	case i.QueueSize == 0 || i.QueueSize&(i.QueueSize-1) != 0:
		return fmt.Errorf("inflight region for queues of %d entries: not a power of two", i.QueueSize)
	}
	return nil
}

// inflightRegion is the mapped region of one connection.
type inflightRegion struct {
	fd        int
	mapping   []byte // the whole mmap
	data      []byte // from mmap_offset, numQueues parts
	offset    uint64 // mmap_offset
	numQueues int
	queueSize int
}

// newInflightRegion makes a zeroed region for GET_INFLIGHT_FD, sealed
// against resizing so neither side can make the other fault.
func newInflightRegion(i inflightMsg) (*inflightRegion, error) {
	size := int(i.NumQueues) * inflightQueueBytes(int(i.QueueSize))
	fd, err := unix.MemfdCreate("sluice-vhost-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("inflight memfd: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inflight memfd: size %d: %w", size, err)
	}
	unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inflight memfd: map: %w", err)
	}
	return &inflightRegion{fd: fd, mapping: m, data: m, numQueues: int(i.NumQueues), queueSize: int(i.QueueSize)}, nil
}

// mapInflightRegion maps the region a front-end gives with SET_INFLIGHT_FD.
// It takes fd (closed on error). Like guest memory it is mapped from file
// offset 0 after checking the file is long enough.
func mapInflightRegion(i inflightMsg, fd int) (*inflightRegion, error) {
	need := uint64(i.NumQueues) * uint64(inflightQueueBytes(int(i.QueueSize)))
	fail := func(err error) (*inflightRegion, error) {
		unix.Close(fd)
		return nil, err
	}
	switch {
	case i.MmapSize < need:
		return fail(fmt.Errorf("inflight region of %d bytes, %d queues of %d need %d", i.MmapSize, i.NumQueues, i.QueueSize, need))
	case need > maxInflightBytes || i.MmapOffset > maxRegionBytes:
		return fail(fmt.Errorf("inflight region offset %#x size %#x too large", i.MmapOffset, need))
	}
	length := i.MmapOffset + need
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(fmt.Errorf("inflight fd: fstat: %w", err))
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < length {
		return fail(fmt.Errorf("%w: inflight region [%#x, +%#x) past the end of its %d-byte file", errBadAddr, i.MmapOffset, need, st.Size))
	}
	m, err := unix.Mmap(fd, 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("inflight fd: mmap %d bytes: %w", length, err))
	}
	return &inflightRegion{fd: fd, mapping: m, data: m[i.MmapOffset:length:length], offset: i.MmapOffset, numQueues: int(i.NumQueues), queueSize: int(i.QueueSize)}, nil
}

func (r *inflightRegion) close() {
	if r == nil {
		return
	}
	if r.mapping != nil {
		unix.Munmap(r.mapping)
		r.mapping, r.data = nil, nil
	}
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// queue returns queue i's part, or nil if the region has none for it.
func (r *inflightRegion) queue(i int) *inflightQueue {
	if r == nil || i >= r.numQueues {
		return nil
	}
	stride := inflightQueueBytes(r.queueSize)
	return &inflightQueue{b: r.data[i*stride : (i+1)*stride : (i+1)*stride], size: r.queueSize}
}

// inflightQueue is one queue's part of the region, used by that ring's
// runner: get on its poller, put under its used mutex.
type inflightQueue struct {
	b       []byte
	size    int    // entries in the region (>= the ring's size)
	counter uint64 // next counter; poller only
}

const (
	inflightOffVersion   = 8
	inflightOffDescNum   = 10
	inflightOffLastBatch = 12
	inflightOffUsedIdx   = 14
)

func (q *inflightQueue) u16(off int) uint16      { return binary.LittleEndian.Uint16(q.b[off:]) }
func (q *inflightQueue) put16(off int, v uint16) { binary.LittleEndian.PutUint16(q.b[off:], v) }
func (q *inflightQueue) desc(head uint16) []byte {
	return q.b[inflightHeaderSize+inflightDescSize*int(head):]
}
func (q *inflightQueue) flag(head uint16) byte { return q.desc(head)[0] }
func (q *inflightQueue) count(head uint16) uint64 {
	return binary.LittleEndian.Uint64(q.desc(head)[8:])
}

// get marks head inflight with the next counter (vu_queue_inflight_get).
func (q *inflightQueue) get(head uint16) {
	d := q.desc(head)
	binary.LittleEndian.PutUint64(d[8:], q.counter)
	q.counter++
	d[0] = 1
}

// prePut records the head about to be published (vu_queue_inflight_pre_put).
func (q *inflightQueue) prePut(head uint16) { q.put16(inflightOffLastBatch, head) }

// postPut clears head's mark after used.idx was published, then records
// used.idx (vu_queue_inflight_post_put).
func (q *inflightQueue) postPut(head, usedIdx uint16) {
	q.desc(head)[0] = 0
	q.put16(inflightOffUsedIdx, usedIdx)
}

// recovery is what a ring start learns from its part of the region.
type recovery struct {
	fresh     bool     // a new region: nothing to resubmit, the base stands
	resubmit  []uint16 // heads still in flight, by counter
	lastAvail uint16   // next avail entry: used.idx + len(resubmit)
}

// recover reads the queue's part for a ring of n entries whose used.idx is
// usedIdx (vu_check_queue_inflights). A fresh part (version 0) is
// initialized. Otherwise a mark left by a death between publishing used.idx
// and clearing it is cleared, and the heads still marked (those below n;
// each at most once) are returned by counter, oldest first. The counter
// continues after the largest one.
func (q *inflightQueue) recover(n int, usedIdx uint16) recovery {
	if q.u16(inflightOffVersion) == 0 {
		clear(q.b[inflightHeaderSize:])
		q.put16(inflightOffVersion, inflightVersion)
		q.put16(inflightOffDescNum, uint16(q.size))
		q.put16(inflightOffUsedIdx, usedIdx)
		q.counter = 0
		return recovery{fresh: true}
	}
	q.put16(inflightOffDescNum, uint16(q.size))
	if q.u16(inflightOffUsedIdx) != usedIdx {
		if h := q.u16(inflightOffLastBatch); int(h) < q.size {
			q.desc(h)[0] = 0
		}
		q.put16(inflightOffUsedIdx, usedIdx)
	}
	type mark struct {
		head    uint16
		counter uint64
	}
	var marks []mark
	for h := range min(n, q.size) {
		if q.flag(uint16(h)) == 1 {
			marks = append(marks, mark{uint16(h), q.count(uint16(h))})
		}
	}
	slices.SortStableFunc(marks, func(a, b mark) int { return cmp.Compare(a.counter, b.counter) })
	rec := recovery{lastAvail: usedIdx + uint16(len(marks))}
	q.counter = 0
	for _, m := range marks {
		rec.resubmit = append(rec.resubmit, m.head)
		q.counter = max(q.counter, m.counter+1)
	}
	return rec
}

// getInflightFd answers GET_INFLIGHT_FD with a new zeroed region (and
// installs it, as a SET_INFLIGHT_FD of it would). Any failure is answered
// with mmap_size 0 and no fd, which QEMU takes as "no inflight tracking".
func (b *backend) getInflightFd(i inflightMsg) []byte {
	none := encodeInflight(inflightMsg{NumQueues: i.NumQueues, QueueSize: i.QueueSize})
	if !b.protoAcked(protoInflightShmfd) {
		b.log.Warn("virtio: GET_INFLIGHT_FD without the protocol feature")
		return none
	}
	if err := checkInflightShape(i, len(b.rings)); err != nil {
		b.log.Warn("virtio: GET_INFLIGHT_FD refused", "err", err)
		return none
	}
	r, err := newInflightRegion(i)
	if err != nil {
		b.log.Warn("virtio: GET_INFLIGHT_FD failed", "err", err)
		return none
	}
	b.installInflight(r)
	b.replyFds = []int{r.fd}
	return encodeInflight(inflightMsg{MmapSize: uint64(len(r.data)), NumQueues: i.NumQueues, QueueSize: i.QueueSize})
}

// setInflightFd maps the region the front-end gives back (after a
// reconnect: the one a previous back-end process made) and installs it.
func (b *backend) setInflightFd(m *message, i inflightMsg) error {
	fd, err := m.takeFd()
	if err != nil {
		return err
	}
	if err := checkInflightShape(i, len(b.rings)); err != nil {
		unix.Close(fd)
		return fmt.Errorf("SET_INFLIGHT_FD: %w", err)
	}
	r, err := mapInflightRegion(i, fd)
	if err != nil {
		return fmt.Errorf("SET_INFLIGHT_FD: %w", err)
	}
	b.installInflight(r)
	b.log.Info("virtio: inflight region set", "queues", r.numQueues, "queue_size", r.queueSize)
	return b.reconcileAll()
}

// installInflight swaps in r with every ring stopped (runners point into
// the old region), then releases the old one.
func (b *backend) installInflight(r *inflightRegion) {
	b.stopAll()
	old := b.inflight
	b.inflight = r
	old.close()
}

// trackInflight gives a starting ring its part of the region and what to
// resubmit, and moves the ring's next avail entry past the requests still
// in flight. Without the feature, a region, or a part big enough for the
// ring, the ring runs untracked.
func (b *backend) trackInflight(v *vring, ring *deviceRing) (*inflightQueue, []uint16) {
	if !b.protoAcked(protoInflightShmfd) || b.inflight == nil {
		return nil, nil
	}
	q := b.inflight.queue(v.index)
	if q == nil || q.size < ring.n {
		b.log.Warn("virtio: inflight region does not cover the ring; running it untracked",
			"queue", v.index, "ring_size", ring.n, "region_queues", b.inflight.numQueues, "region_queue_size", b.inflight.queueSize)
		return nil, nil
	}
	rec := q.recover(ring.n, ring.usedIdx)
	if rec.fresh {
		return q, nil
	}
	if rec.lastAvail != ring.lastAvail || len(rec.resubmit) > 0 {
		b.log.Info("virtio: resuming queue from the inflight region", "queue", v.index,
			"resubmit", len(rec.resubmit), "used_idx", ring.usedIdx, "base", ring.lastAvail, "next_avail", rec.lastAvail)
	}
	ring.lastAvail = rec.lastAvail
	return q, rec.resubmit
}
