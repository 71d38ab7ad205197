package virtio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Split virtqueue layout (virtio 1.x §2.7):
//
//	desc  {le64 addr; le32 len; le16 flags; le16 next}[N]               align 16
//	avail {le16 flags; le16 idx; le16 ring[N]; le16 used_event}         align 2 (we need 4)
//	used  {le16 flags; le16 idx; {le32 id; le32 len} ring[N]; le16 avail_event}  align 4
//
// flags+idx of each ring form one 32-bit word written by one side only, so
// we publish and read indices with 32-bit atomics. The 16-bit event fields
// are written with plain stores followed by a full barrier (an atomic
// read-modify-write): Go has no 16-bit atomics, and an aligned 16-bit store
// is single-copy atomic on every platform Go supports.

func descTableSize(n int) int { return descSize * n }
func availSize(n int) int     { return 6 + 2*n }
func usedSize(n int) int      { return 6 + 8*n }

// desc is one descriptor copied out of shared memory: the peer may change
// the table under us, so each descriptor is read once and then checked.
type desc struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func readDesc(table []byte, i int) desc {
	b := table[i*descSize : i*descSize+descSize]
	le := binary.LittleEndian
	return desc{addr: le.Uint64(b), len: le.Uint32(b[8:]), flags: le.Uint16(b[12:]), next: le.Uint16(b[14:])}
}

func writeDesc(table []byte, i int, d desc) {
	b := table[i*descSize : i*descSize+descSize]
	le := binary.LittleEndian
	le.PutUint64(b, d.addr)
	le.PutUint32(b[8:], d.len)
	le.PutUint16(b[12:], d.flags)
	le.PutUint16(b[14:], d.next)
}

func word(b []byte) *uint32 {
	_ = b[3]
	return (*uint32)(unsafe.Pointer(&b[0]))
}

func half(b []byte, off int) *uint16 {
	_ = b[off+1]
	return (*uint16)(unsafe.Pointer(&b[off]))
}

// fence is a full memory barrier: a locked read-modify-write on x86, a
// dmb ish pair on arm64.
func fence(v *uint32) { atomic.AddUint32(v, 0) }

func aligned(b []byte, a uintptr) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%a == 0
}

// checkRingLayout validates the three ring slices for size n.
func checkRingLayout(n int, descs, avail, used []byte) error {
	if n <= 0 || n > maxQueueSize || n&(n-1) != 0 {
		return fmt.Errorf("virtio: queue size %d (power of two up to %d)", n, maxQueueSize)
	}
	switch {
	case len(descs) < descTableSize(n) || len(avail) < availSize(n) || len(used) < usedSize(n):
		return fmt.Errorf("virtio: ring memory too small for %d entries", n)
	case !aligned(descs, 16):
		return fmt.Errorf("virtio: descriptor table not 16-byte aligned")
	case !aligned(avail, 4):
		return fmt.Errorf("virtio: avail ring not 4-byte aligned (needed for atomic index reads)")
	case !aligned(used, 4):
		return fmt.Errorf("virtio: used ring not 4-byte aligned")
	}
	return nil
}

// deviceRing is the back-end's view of one split virtqueue. lastAvail is
// owned by the ring's poller; the used fields are guarded by the runner's
// used mutex.
type deviceRing struct {
	n        int
	mask     uint16
	desc     []byte
	avail    []byte
	used     []byte
	eventIdx bool
	indirect bool

	lastAvail uint16 // next avail entry to take
	usedIdx   uint16 // next used entry to fill (= used.idx published)
	usedFlags uint16
	signalled uint16 // used.idx when we last decided about a call
	barrier   uint32
}

func newDeviceRing(n int, descs, avail, used []byte, base uint16, eventIdx, indirect bool) (*deviceRing, error) {
	if err := checkRingLayout(n, descs, avail, used); err != nil {
		return nil, err
	}
	r := &deviceRing{
		n: n, mask: uint16(n - 1), eventIdx: eventIdx, indirect: indirect,
		desc: descs[:descTableSize(n)], avail: avail[:availSize(n)], used: used[:usedSize(n)],
		lastAvail: base,
	}
	// The used index continues from where the driver expects it: in a
	// fresh or drained ring, used.idx == avail position we resume at.
	r.usedIdx = uint16(atomic.LoadUint32(word(r.used)) >> 16)
	r.signalled = r.usedIdx
	return r, nil
}

// availIdx is the driver's published avail index.
func (r *deviceRing) availIdx() uint16 { return uint16(atomic.LoadUint32(word(r.avail)) >> 16) }

func (r *deviceRing) availFlags() uint16 { return uint16(atomic.LoadUint32(word(r.avail))) }

// availHead returns the head index in avail slot i (i is free-running).
func (r *deviceRing) availHead(i uint16) uint16 {
	return *half(r.avail, 4+2*int(i&r.mask))
}

func (r *deviceRing) usedEvent() uint16 { return *half(r.avail, 4+2*r.n) }

// putUsed publishes one used element. Caller holds the used mutex.
func (r *deviceRing) putUsed(id uint16, length uint32) {
	e := r.used[4+8*int(r.usedIdx&r.mask):]
	binary.LittleEndian.PutUint32(e, uint32(id))
	binary.LittleEndian.PutUint32(e[4:], length)
	r.usedIdx++
	atomic.StoreUint32(word(r.used), uint32(r.usedFlags)|uint32(r.usedIdx)<<16)
}

// needCall reports whether the driver wants a call for what was published
// since the last decision (caller holds the used mutex).
func (r *deviceRing) needCall() bool {
	old := r.signalled
	r.signalled = r.usedIdx
	if old == r.usedIdx {
		return false
	}
	fence(&r.barrier)
	if r.eventIdx {
		return needEvent(r.usedEvent(), r.usedIdx, old)
	}
	return r.availFlags()&availFlagNoInterrupt == 0
}

// setNotify asks the driver for kicks (on) or tells it not to bother (off),
// then issues a full barrier so a following availIdx read cannot pass it.
// Caller holds the used mutex.
func (r *deviceRing) setNotify(on bool) {
	if r.eventIdx {
		if on {
			*half(r.used, 4+8*r.n) = r.lastAvail
		} else {
			// Keep avail_event behind: the driver kicks only when its
			// index crosses it, which takes 64K requests.
			*half(r.used, 4+8*r.n) = r.lastAvail - 1
		}
	} else {
		r.usedFlags = usedFlagNoNotify
		if on {
			r.usedFlags = 0
		}
		atomic.StoreUint32(word(r.used), uint32(r.usedFlags)|uint32(r.usedIdx)<<16)
	}
	fence(&r.barrier)
}

// driverRing is the front-end's view of one split virtqueue: it fills
// descriptors, publishes heads and harvests used elements. The avail fields
// are guarded by the owner's submit mutex; lastUsed by its poller.
type driverRing struct {
	n        int
	mask     uint16
	desc     []byte
	avail    []byte
	used     []byte
	eventIdx bool

	availIdx   uint16
	availFlags uint16
	lastUsed   uint16
	barrier    uint32
}

func newDriverRing(n int, descs, avail, used []byte, eventIdx bool) (*driverRing, error) {
	if err := checkRingLayout(n, descs, avail, used); err != nil {
		return nil, err
	}
	return &driverRing{
		n: n, mask: uint16(n - 1), eventIdx: eventIdx,
		desc: descs[:descTableSize(n)], avail: avail[:availSize(n)], used: used[:usedSize(n)],
	}, nil
}

// publish makes head available and reports whether the device wants a kick.
// Caller holds the submit mutex.
func (r *driverRing) publish(head uint16) bool {
	old := r.availIdx
	*half(r.avail, 4+2*int(r.availIdx&r.mask)) = head
	r.availIdx++
	// The atomic store orders the ring entry before the index and is a
	// full barrier before we read the device's suppression state.
	atomic.StoreUint32(word(r.avail), uint32(r.availFlags)|uint32(r.availIdx)<<16)
	if r.eventIdx {
		return needEvent(*half(r.used, 4+8*r.n), r.availIdx, old)
	}
	return uint16(atomic.LoadUint32(word(r.used)))&usedFlagNoNotify == 0
}

// usedIdx is the device's published used index.
func (r *driverRing) usedIdx() uint16 { return uint16(atomic.LoadUint32(word(r.used)) >> 16) }

// nextUsed returns the next used element, if any. Poller only.
func (r *driverRing) nextUsed() (id, length uint32, ok bool) {
	if r.usedIdx() == r.lastUsed {
		return 0, 0, false
	}
	e := r.used[4+8*int(r.lastUsed&r.mask):]
	r.lastUsed++
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:]), true
}

// setInterrupts asks the device for calls (on) or not (off), followed by a
// full barrier. Caller holds the submit mutex (the flags share a word with
// the avail index).
func (r *driverRing) setInterrupts(on bool) {
	if r.eventIdx {
		ev := r.lastUsed
		if !on {
			ev = r.lastUsed - 1
		}
		*half(r.avail, 4+2*r.n) = ev
	} else {
		r.availFlags = availFlagNoInterrupt
		if on {
			r.availFlags = 0
		}
		atomic.StoreUint32(word(r.avail), uint32(r.availFlags)|uint32(r.availIdx)<<16)
	}
	fence(&r.barrier)
}
