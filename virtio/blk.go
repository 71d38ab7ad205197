package virtio

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/bufpool"
)

// Request classes, for the inline/goroutine decision.
const (
	classRead  = 0
	classWrite = 1 // OUT, DISCARD, WRITE_ZEROES
	classFlush = 2
)

// blkReq is one virtio-blk request on the target, reused per head.
type blkReq struct {
	r      *runner
	head   uint16
	busy   atomic.Bool
	c      chain
	typ    uint32
	sector uint64
	// early is the answer for requests that never reach the export.
	early        uint8
	earlyWritten uint32
	gr           gateway.Request
	bounce       *bufpool.Buf
}

func (q *blkReq) release() {
	if q.bounce != nil {
		q.r.b.s.bufs.Put(q.bounce)
		q.bounce = nil
	}
	q.gr.Buf = nil
	q.busy.Store(false)
}

// parse reads the request header and returns the request's class, or -1
// when the answer (q.early) is known without the export.
func (q *blkReq) parse() int {
	q.early, q.earlyWritten = blkStatusIOErr, 0
	var h [blkHeaderSize]byte
	if q.c.statusByte() == nil || iovRead(h[:], q.c.rd, 0) < blkHeaderSize {
		q.r.rejected(errors.New("request without a 16-byte header or a status byte"))
		return -1
	}
	q.typ = binary.LittleEndian.Uint32(h[0:])
	q.sector = binary.LittleEndian.Uint64(h[8:])
	ro := q.r.b.s.readOnly
	switch q.typ {
	case blkTypeIn:
		return classRead
	case blkTypeOut:
		if ro {
			return -1
		}
		return classWrite
	case blkTypeDiscard, blkTypeWriteZeroes:
		if ro {
			q.early = blkStatusUnsupp
			return -1
		}
		return classWrite
	case blkTypeFlush:
		return classFlush
	case blkTypeGetID:
		q.early, q.earlyWritten = q.getID()
		return -1
	}
	q.early = blkStatusUnsupp
	return -1
}

// exec runs a parsed request and returns its status and the number of data
// bytes written to the driver's buffers.
func (q *blkReq) exec(class int) (uint8, uint32) {
	switch {
	case class < 0:
		return q.early, q.earlyWritten
	case q.typ == blkTypeIn:
		return q.readWrite(false)
	case q.typ == blkTypeOut:
		return q.readWrite(true)
	case q.typ == blkTypeFlush:
		q.gr = gateway.Request{Op: gateway.OpFlush}
		return q.do(class), 0
	}
	return q.discard(), 0
}

// do runs q.gr through the export and maps the result to a status.
func (q *blkReq) do(class int) uint8 {
	r := q.r
	q.gr.Door = r.b.s.opt.Door
	start := time.Now()
	err := r.b.s.exp.Do(r.b.ctx, &q.gr)
	r.record(class, time.Since(start))
	return blkStatus(r.b.log, q.gr.Op, err)
}

// byteRange converts a sector range to bytes and checks it against the
// export's current size.
func (q *blkReq) byteRange(sector uint64, length int64) (int64, bool) {
	if sector > math.MaxInt64>>sectorShift {
		return 0, false
	}
	off := int64(sector << sectorShift)
	capacity := q.r.b.s.exp.Size() &^ (sectorSize - 1)
	return off, length >= 0 && off <= capacity && length <= capacity-off
}

// readWrite serves IN and OUT. A buffer that is one piece of shared memory
// goes to the export as is (zero copy); a scattered one through a bounce
// buffer.
func (q *blkReq) readWrite(write bool) (uint8, uint32) {
	iov, off := q.c.wr, 0
	n := iovLen(q.c.wr) - 1 // the status byte is last
	op := gateway.OpRead
	class := classRead
	if write {
		iov, off = q.c.rd, blkHeaderSize
		n = iovLen(q.c.rd) - blkHeaderSize
		op, class = gateway.OpWrite, classWrite
	}
	if n%sectorSize != 0 || n > maxRequestBytes {
		q.r.rejected(errors.New("IN/OUT data not a multiple of 512 bytes or too large"))
		return blkStatusIOErr, 0
	}
	offset, ok := q.byteRange(q.sector, int64(n))
	if !ok {
		return blkStatusIOErr, 0
	}
	if n == 0 {
		return blkStatusOK, 0
	}
	buf, contig := iovContig(iov, off, n)
	if !contig {
		q.bounce = q.r.b.s.bufs.Get(n)
		buf = q.bounce.B
		if write {
			iovRead(buf, iov, off)
		}
	}
	// Guest memory may change while the write runs: Shared tells the
	// data plane to copy it before filters that compute over it.
	q.gr = gateway.Request{Op: op, Offset: offset, Length: int64(n), Buf: buf, FUA: write && q.r.writeThrough,
		Shared: write && contig}
	st := q.do(class)
	if st != blkStatusOK || write {
		return st, 0
	}
	if !contig {
		iovWrite(iov, off, buf)
	}
	return st, uint32(n)
}

// discard serves DISCARD and WRITE_ZEROES: up to maxDiscardSegs segments
// of {le64 sector; le32 num_sectors; le32 flags}, each one Export.Do.
func (q *blkReq) discard() uint8 {
	n := iovLen(q.c.rd) - blkHeaderSize
	if n <= 0 || n%blkDiscardSegSize != 0 || n/blkDiscardSegSize > maxDiscardSegs {
		q.r.rejected(errors.New("discard/write-zeroes payload not 1..32 segments"))
		return blkStatusIOErr
	}
	var segs [maxDiscardSegs * blkDiscardSegSize]byte
	iovRead(segs[:n], q.c.rd, blkHeaderSize)
	for i := 0; i < n; i += blkDiscardSegSize {
		sector := binary.LittleEndian.Uint64(segs[i:])
		num := binary.LittleEndian.Uint32(segs[i+8:])
		flags := binary.LittleEndian.Uint32(segs[i+12:])
		if (q.typ == blkTypeDiscard && flags != 0) || flags&^blkWZFlagUnmap != 0 {
			return blkStatusUnsupp
		}
		if num > maxDiscardSectors {
			return blkStatusIOErr
		}
		length := int64(num) << sectorShift
		offset, ok := q.byteRange(sector, length)
		if !ok {
			return blkStatusIOErr
		}
		if num == 0 {
			continue
		}
		q.gr = gateway.Request{Op: gateway.OpDiscard, Offset: offset, Length: length, FUA: q.r.writeThrough}
		if q.typ == blkTypeWriteZeroes {
			q.gr.Op, q.gr.NoHole = gateway.OpWriteZeroes, flags&blkWZFlagUnmap == 0
		}
		if st := q.do(classWrite); st != blkStatusOK {
			return st
		}
	}
	return blkStatusOK
}

// getID writes the serial, NUL-padded to 20 bytes (or less if the buffer is
// shorter), into the device-writable data.
func (q *blkReq) getID() (uint8, uint32) {
	n := min(iovLen(q.c.wr)-1, virtioBlkDeviceIDSize)
	var id [virtioBlkDeviceIDSize]byte
	copy(id[:], q.r.b.s.opt.Serial)
	iovWrite(q.c.wr, 0, id[:n])
	return blkStatusOK, uint32(n)
}

// blkStatus maps an error from Export.Do to a virtio-blk status. It is the
// only place that does so. Unexpected errors are logged: the driver only
// sees IOERR.
func blkStatus(log *slog.Logger, op gateway.Op, err error) uint8 {
	switch {
	case err == nil:
		return blkStatusOK
	case errors.Is(err, gateway.ErrUnsupported):
		return blkStatusUnsupp
	case errors.Is(err, gateway.ErrOutOfRange), errors.Is(err, gateway.ErrNoSpace),
		errors.Is(err, gateway.ErrReadOnly), errors.Is(err, gateway.ErrInvalid),
		errors.Is(err, gateway.ErrClosed), errors.Is(err, context.Canceled):
		log.Debug("virtio: request failed", "op", op, "err", err)
		return blkStatusIOErr
	}
	log.Error("virtio: request failed", "op", op, "err", err)
	return blkStatusIOErr
}
