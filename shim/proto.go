package shim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The wire format, version 1: control messages on the unix socket and the
// layout of the shared memory. docs/SHIM.md is its specification and
// shim/lib/proto.h its C twin; the three change together. Every integer is
// little-endian.

// Version is the protocol version this gateway speaks.
const Version = 1

// Control messages (SOCK_SEQPACKET: one message per datagram). Each starts
// with an 8-byte header: magic, type, version.
const (
	msgMagic = 0x48534c53 // "SLSH"

	msgHello      = 1    // client: memfd and kick eventfd attached
	msgRegister   = 2    // client: the fd to serve attached
	msgUnregister = 3    // client: forget a handle (no reply)
	msgHelloOK    = 0x81 // gateway: the answer to hello
	msgRegistered = 0x82 // gateway: the answer to register

	headerLen     = 8
	helloLen      = 32
	registerLen   = 16
	unregisterLen = 16
	helloOKLen    = 16
	registeredLen = 48
)

// Reasons a call is not served over the channel (the fd's bypass is off,
// or this one call falls back to the kernel). The numbers are the wire's;
// the names are what SLUICE_SHIM_STATS and the metrics print.
const (
	ReasonNone       = 0
	ReasonNotSluice  = 1  // not a file of one of this gateway's fs mounts
	ReasonNotRegular = 2  // not a regular file
	ReasonAppend     = 3  // opened O_APPEND (the kernel keeps appends atomic)
	ReasonPath       = 4  // an O_PATH descriptor
	ReasonMmap       = 5  // the file is mapped (the library's own)
	ReasonGone       = 6  // no gateway, or it went away
	ReasonError      = 7  // the registration failed (see the gateway's log)
	ReasonTooMany    = 8  // the channel holds its maximum of handles
	ReasonStale      = 9  // a request named a handle the channel does not hold
	ReasonFlags      = 10 // a call's flags the library does not serve (the library's own: RWF_NOWAIT, statx fields)
	ReasonCached     = 11 // a read of a read-only buffered fd: the kernel's page cache serves it (the library's own)
	ReasonSignal     = 12 // a signal handler reentered the library on a thread inside its control mutex (the library's own)
	numReasons       = 13
)

var reasonNames = [numReasons]string{"none", "not_sluice", "not_regular", "o_append", "o_path", "mmap", "gateway_gone", "error", "too_many", "stale_handle", "flags", "page_cache", "in_signal"}

// ReasonName is the name of a reason number.
func ReasonName(r uint32) string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", r)
}

// hello is a client's first message: the geometry of the shared memory it
// attached (a memfd) with its kick eventfd.
type hello struct {
	Slots    uint32 // request slots
	SlotData uint32 // bytes of data region per slot
	Size     uint64 // the memfd's size
	PID      uint32 // the client's pid, for logs and the channel list
}

// register hands the gateway one fd (attached) to serve; FD is its number
// in the client, for logs.
type register struct {
	FD uint32
}

// unregister forgets a handle.
type unregister struct {
	Handle uint64
}

// errBadMessage is a control message that cannot be parsed: the gateway
// closes the channel.
var errBadMessage = errors.New("shim: bad control message")

// parseMessage decodes one control message from a client: a *hello, a
// *register or an *unregister. nfds is the number of fds that came with it;
// each type wants an exact number (hello 2, register 1, unregister 0).
func parseMessage(b []byte, nfds int) (any, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than a header", errBadMessage, len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != msgMagic {
		return nil, fmt.Errorf("%w: magic %#x", errBadMessage, m)
	}
	typ, ver := le.Uint16(b[4:]), le.Uint16(b[6:])
	if ver != Version {
		return nil, fmt.Errorf("%w: version %d (this gateway speaks %d)", errBadMessage, ver, Version)
	}
	var wantLen, wantFds int
	switch typ {
	case msgHello:
		wantLen, wantFds = helloLen, 2
	case msgRegister:
		wantLen, wantFds = registerLen, 1
	case msgUnregister:
		wantLen, wantFds = unregisterLen, 0
	default:
		return nil, fmt.Errorf("%w: type %d", errBadMessage, typ)
	}
	if len(b) != wantLen || nfds != wantFds {
		return nil, fmt.Errorf("%w: type %d with %d bytes and %d fds (want %d and %d)", errBadMessage, typ, len(b), nfds, wantLen, wantFds)
	}
	switch typ {
	case msgHello:
		return &hello{Slots: le.Uint32(b[8:]), SlotData: le.Uint32(b[12:]), Size: le.Uint64(b[16:]), PID: le.Uint32(b[24:])}, nil
	case msgRegister:
		return &register{FD: le.Uint32(b[8:])}, nil
	default:
		return &unregister{Handle: le.Uint64(b[8:])}, nil
	}
}

func putHeader(b []byte, typ uint16) {
	binary.LittleEndian.PutUint32(b, msgMagic)
	binary.LittleEndian.PutUint16(b[4:], typ)
	binary.LittleEndian.PutUint16(b[6:], Version)
}

// helloOK is the answer to hello: errno 0 and the channel's id, or the
// errno of a refusal (then the gateway closes the socket).
func encodeHelloOK(errno int32, channel uint32) []byte {
	b := make([]byte, helloOKLen)
	putHeader(b, msgHelloOK)
	binary.LittleEndian.PutUint32(b[8:], uint32(errno))
	binary.LittleEndian.PutUint32(b[12:], channel)
	return b
}

// registered is the answer to register.
type registered struct {
	Reason uint32 // ReasonNone: served, with Handle; otherwise why not
	Handle uint64
	Dev    uint64 // the file's st_dev (what fstat through the shim reports)
	Ino    uint64
	Flags  uint32 // regReadable, regWritable, regCached
	// LengthWord is the file's word in the channel's length table
	// (lengths.go), 0: none. Bytes 40-43 of REGISTERED (were reserved).
	LengthWord uint32
}

const (
	regReadable = 1 << 0
	regWritable = 1 << 1
	// regCached: the fd is open read-only without O_DIRECT on a mount
	// that keeps the kernel's page cache coherent with shim writes
	// (Mount.PageCached): its reads may go to the kernel (docs/SHIM.md,
	// "Reads the page cache serves").
	regCached = 1 << 2
)

func encodeRegistered(r registered) []byte {
	b := make([]byte, registeredLen)
	putHeader(b, msgRegistered)
	le := binary.LittleEndian
	le.PutUint32(b[8:], r.Reason)
	le.PutUint32(b[12:], r.Flags)
	le.PutUint64(b[16:], r.Handle)
	le.PutUint64(b[24:], r.Dev)
	le.PutUint64(b[32:], r.Ino)
	le.PutUint32(b[40:], r.LengthWord)
	return b
}

// The shared memory: a header page, the slot records, the data regions.
//
//	[0, 4096)                      header
//	[4096, recordsEnd)             Slots records of recordLen bytes, rounded up to a page
//	[dataStart, dataStart+Slots*SlotData)   slot i's data region at dataStart+i*SlotData
const (
	shmMagic = 0x52534c53 // "SLSR"

	pageSize  = 4096
	recordLen = 64

	// header fields
	hdrMagic     = 0
	hdrVersion   = 4
	hdrSlots     = 8
	hdrSlotData  = 12
	hdrSize      = 16
	hdrIdle      = 24 // u32: 1 while the gateway's poller sleeps on the kick eventfd
	hdrReleased  = 28 // u32: 1 once the gateway let go of the channel: a request still submitted never runs
	hdrSubmitted = 64 // u64[4]: bit i set = slot i submitted

	// Limits a hello must respect.
	MaxSlots    = 256
	MinSlotData = 4096
	MaxSlotData = 4 << 20
)

// Slot record fields (offsets in a record).
const (
	recState   = 0  // u32: slotFree, slotClaimed, slotSubmitted, slotDone (a futex word)
	recWaiting = 4  // u32: 1 while the client thread sleeps on state
	recOp      = 8  // u32
	recArg     = 12 // u32: op-specific (fallocate's mode, write's writeFUA)
	recHandle  = 16 // u64
	recOffset  = 24 // i64
	recLength  = 32 // i64
	recData    = 40 // u64: offset of the data in the shared memory
	recResult  = 48 // i64: >= 0 success, < 0 -errno
	recStatus  = 56 // u32: statusDone or statusFallback
	recReason  = 60 // u32: with statusFallback
)

// Slot states.
const (
	slotFree      = 0
	slotClaimed   = 1
	slotSubmitted = 2
	slotDone      = 3
)

// Completion statuses.
const (
	statusDone     = 0 // result holds the call's answer
	statusFallback = 1 // do this call through the kernel (reason says why)
)

// Ops.
const (
	opRead      = 1
	opWrite     = 2
	opFsync     = 3
	opFdatasync = 4
	opFtruncate = 5
	opFallocate = 6
	opFstat     = 7
	numOpCodes  = 8
)

// writeFUA, in a write's arg: the write is durable when answered
// (pwritev2's RWF_DSYNC or RWF_SYNC), as every write of an fd opened
// O_DSYNC or O_SYNC is. No other bit is defined.
const writeFUA = 1

var opCodeNames = [numOpCodes]string{"op0", "read", "write", "fsync", "fdatasync", "ftruncate", "fallocate", "fstat"}

func opName(op uint32) string {
	if op < numOpCodes {
		return opCodeNames[op]
	}
	return "unknown"
}

// statLen is fstat's answer in the data region: ino, size, blocks,
// mode, nlink, uid, gid, rdev, atime, mtime, ctime (ns), blksize.
const statLen = 80

// layout is the geometry of one channel's shared memory, from its hello.
type layout struct {
	slots     int
	slotData  int
	dataStart int
	size      int
}

// layoutOf checks a hello's geometry against the limits and the memfd's
// real size (memSize), and returns it.
func layoutOf(h *hello, memSize int64) (layout, error) {
	if h.Slots < 1 || h.Slots > MaxSlots {
		return layout{}, fmt.Errorf("%w: %d slots (1 to %d)", errBadMessage, h.Slots, MaxSlots)
	}
	if h.SlotData < MinSlotData || h.SlotData > MaxSlotData || h.SlotData%pageSize != 0 {
		return layout{}, fmt.Errorf("%w: slot data %d bytes (a multiple of %d from %d to %d)", errBadMessage, h.SlotData, pageSize, MinSlotData, MaxSlotData)
	}
	l := layout{slots: int(h.Slots), slotData: int(h.SlotData)}
	l.dataStart = pageSize + (l.slots*recordLen+pageSize-1)/pageSize*pageSize
	l.size = l.dataStart + l.slots*l.slotData
	if h.Size != uint64(l.size) {
		return layout{}, fmt.Errorf("%w: size %d, the geometry needs %d", errBadMessage, h.Size, l.size)
	}
	if memSize != int64(l.size) {
		return layout{}, fmt.Errorf("%w: the memfd holds %d bytes, the hello says %d", errBadMessage, memSize, l.size)
	}
	return l, nil
}

// record is one slot's request, copied out of shared memory before it is
// looked at: the client can change the shared copy at any time.
type record struct {
	op     uint32
	arg    uint32
	handle uint64
	offset int64
	length int64
	data   uint64
}

// decodeRecord reads a request from a slot record's bytes (recordLen).
func decodeRecord(b []byte) record {
	le := binary.LittleEndian
	return record{
		op: le.Uint32(b[recOp:]), arg: le.Uint32(b[recArg:]), handle: le.Uint64(b[recHandle:]),
		offset: int64(le.Uint64(b[recOffset:])), length: int64(le.Uint64(b[recLength:])), data: le.Uint64(b[recData:]),
	}
}

// errRange is a request whose numbers do not fit: the call fails EINVAL.
var errRange = errors.New("shim: request out of range")

// dataRange checks that [data, data+n) lies in the data regions and
// returns it as ints.
func (l layout) dataRange(data uint64, n int64) (int, int, error) {
	if n < 0 || n > int64(l.slotData) {
		return 0, 0, fmt.Errorf("%w: length %d (at most %d a request)", errRange, n, l.slotData)
	}
	if data < uint64(l.dataStart) || data > uint64(l.size) || uint64(n) > uint64(l.size)-data {
		return 0, 0, fmt.Errorf("%w: data [%d, +%d) outside the data regions [%d, %d)", errRange, data, n, l.dataStart, l.size)
	}
	return int(data), int(data) + int(n), nil
}

// fileRange checks a file range: offset >= 0 and offset+n does not
// overflow.
func fileRange(off, n int64) error {
	if off < 0 || n < 0 || off > math.MaxInt64-n {
		return fmt.Errorf("%w: file range [%d, +%d)", errRange, off, n)
	}
	return nil
}
