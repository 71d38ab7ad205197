package gateway

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Op is what a request asks the volume to do.
type Op uint8

// The operations every door maps its protocol onto.
const (
	OpRead Op = iota
	OpWrite
	OpFlush
	OpDiscard     // unmap: the range reads as zeros afterwards and its space may return to the pool
	OpWriteZeroes // the range reads as zeros; whole chunks are unmapped unless NoHole
	OpAllocate    // fs files: back the range with pool space (holes read as zeros); grows the length unless KeepSize
	OpSetLength   // fs files: truncate or extend to Length bytes (extended bytes read as zeros)
	OpSync        // make Inode's data and attributes durable (block volumes: as OpFlush)
	numOps
)

var opNames = [numOps]string{"read", "write", "flush", "discard", "write_zeroes", "allocate", "set_length", "sync"}

func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Door says which front end a request came through; it labels counters.
type Door uint8

// The doors of DESIGN.md, plus Internal for the gateway's own IO (scrub, tests).
const (
	DoorInternal Door = iota
	DoorNBD
	DoorFUSE
	DoorVirtio
	DoorShim
	numDoors
)

var doorNames = [numDoors]string{"internal", "nbd", "fuse", "virtio", "shim"}

func (d Door) String() string {
	if d < numDoors {
		return doorNames[d]
	}
	return fmt.Sprintf("door(%d)", uint8(d))
}

// Request is the one request type every door hands to Volume.Do.
//
// For OpRead, Buf receives Length = len(Buf) bytes at Offset. For OpWrite, Buf
// holds the bytes to write. For OpDiscard, OpWriteZeroes and OpAllocate,
// Length gives the range and Buf is unused. OpFlush ignores Offset and
// Length: it makes every write acknowledged before it durable, on every
// connection to the volume. OpSync does the same for one file (and what it
// needs: its length and attributes). OpSetLength sets a file's length to
// Length.
//
// On an fs file, OpDiscard punches a hole and OpWriteZeroes zeroes the range
// (fallocate's PUNCH_HOLE and ZERO_RANGE); both keep the file's length, and
// OpWriteZeroes and OpAllocate grow it to cover the range unless KeepSize.
// OpAllocate and OpSetLength apply to fs files only.
type Request struct {
	Op     Op
	Inode  uint64 // 0 for block volumes
	Offset int64
	Length int64 // for OpDiscard and OpWriteZeroes; reads and writes use len(Buf)
	Buf    []byte
	FUA    bool // write, write-zeroes, discard: durable before Do returns
	NoHole bool // write-zeroes: keep the range allocated (no unmap)
	// KeepSize: fs files, OpWriteZeroes and OpAllocate: leave the file's
	// length as it is (fallocate's KEEP_SIZE).
	KeepSize bool
	// DataOnly: OpSync is fdatasync(2): a file's data and the attributes
	// reading it needs (the length), not its times.
	DataOnly bool
	// Shared: Buf is memory another process maps and may change while
	// Do runs (the shim's channel, a VM's memory). A write whose filters
	// compute over its bytes (a transforming chain, a read cache) copies
	// them first, so every filter sees one version; a plain write goes
	// to the device from Buf as it is (no copy).
	Shared bool
	Door   Door
	Path   string // fs volumes: the file's path, for rules that target files
}

// Errors a door maps to its protocol's codes (see each door's errno
// function). They are the store's sentinels; test with errors.Is.
var (
	ErrNotFound    = store.ErrNotFound
	ErrExists      = store.ErrExists
	ErrInvalid     = store.ErrInvalid
	ErrOutOfRange  = store.ErrOutOfRange // read or discard past the end
	ErrNoSpace     = store.ErrNoSpace    // pool full, or write past the end
	ErrReadOnly    = store.ErrReadOnly
	ErrIO          = store.ErrIO
	ErrClosed      = store.ErrClosed
	ErrUnsupported = store.ErrUnsupported

	// fs volumes.
	ErrNotDir      = store.ErrNotDir
	ErrIsDir       = store.ErrIsDir
	ErrNotEmpty    = store.ErrNotEmpty
	ErrNameTooLong = store.ErrNameTooLong
	ErrNoData      = store.ErrNoData
	ErrRange       = store.ErrRange
	ErrTooBig      = store.ErrTooBig
	ErrPerm        = store.ErrPerm
	ErrNXIO        = store.ErrNXIO
)

// Fallocate is the request fallocate(2) with mode makes of [off,
// off+length), for every door that serves it: plain allocation is
// OpAllocate, PUNCH_HOLE (which Linux allows only with KEEP_SIZE) is
// OpDiscard, ZERO_RANGE is OpWriteZeroes, KEEP_SIZE sets KeepSize. Any
// other mode is ErrUnsupported (EOPNOTSUPP).
func Fallocate(mode uint32, off, length int64) (Request, error) {
	keep := mode&unix.FALLOC_FL_KEEP_SIZE != 0
	req := Request{Offset: off, Length: length, KeepSize: keep}
	switch mode &^ unix.FALLOC_FL_KEEP_SIZE {
	case 0:
		req.Op = OpAllocate
	case unix.FALLOC_FL_PUNCH_HOLE:
		if !keep {
			return Request{}, fmt.Errorf("fallocate: PUNCH_HOLE without KEEP_SIZE: %w", ErrUnsupported)
		}
		req.Op = OpDiscard
	case unix.FALLOC_FL_ZERO_RANGE:
		req.Op = OpWriteZeroes
	default:
		return Request{}, fmt.Errorf("fallocate: mode %#x: %w", mode, ErrUnsupported)
	}
	return req, nil
}
