package nbd

import (
	"encoding/binary"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

type gatewayRequest = gateway.Request

// maxDescriptors caps the BLOCK_STATUS descriptors in one reply; the spec lets
// a server describe less than the requested range.
const maxDescriptors = 1 << 16

// exec runs a validated request against the export and replies.
func (c *conn) exec(r *request) {
	h := r.h
	g := &r.greq
	*g = gateway.Request{Offset: int64(h.offset), Door: gateway.DoorNBD}
	exp := c.sess.export
	switch h.typ {
	case cmdRead:
		g.Op = gateway.OpRead
		g.Buf = r.buf.B
		start := time.Now()
		err := exp.Do(c.ctx, g)
		c.lat.observe(h.typ, time.Since(start))
		if err != nil {
			c.replyError(r, h, errno(c.log, "read", err))
			return
		}
		c.replyRead(r)
		return
	case cmdWrite:
		g.Op = gateway.OpWrite
		g.Buf = r.buf.B
		g.FUA = h.flags&cmdFlagFUA != 0
	case cmdFlush:
		g.Op = gateway.OpFlush
		g.Offset = 0
	case cmdTrim:
		g.Op = gateway.OpDiscard
		g.Length = int64(h.length)
		g.FUA = h.flags&cmdFlagFUA != 0
	case cmdWriteZeroes:
		g.Op = gateway.OpWriteZeroes
		g.Length = int64(h.length)
		g.FUA = h.flags&cmdFlagFUA != 0
		g.NoHole = h.flags&cmdFlagNoHole != 0
	case cmdCache:
		// A hint; every read is served from the volume anyway.
		c.replyOK(r)
		return
	case cmdBlockStatus:
		c.blockStatus(r)
		return
	default:
		c.replyError(r, h, errnoInval) // unreachable: checkRequest filters
		return
	}
	start := time.Now()
	err := exp.Do(c.ctx, g)
	c.lat.observe(h.typ, time.Since(start))
	if err != nil {
		c.replyError(r, h, errno(c.log, g.Op.String(), err))
		return
	}
	c.replyOK(r)
}

// blockStatus answers BLOCK_STATUS for base:allocation.
func (c *conn) blockStatus(r *request) {
	h := r.h
	start := time.Now()
	exts, err := c.sess.export.Extents(c.ctx, int64(h.offset), int64(h.length))
	c.lat.observe(h.typ, time.Since(start))
	if err != nil {
		c.replyError(r, h, errno(c.log, "block_status", err))
		return
	}
	descs := descriptors(exts, h.offset, h.length, h.flags&cmdFlagReqOne != 0)
	payload := make([]byte, 0, 4+8*len(descs))
	payload = binary.BigEndian.AppendUint32(payload, metaAllocationID)
	for _, d := range descs {
		payload = binary.BigEndian.AppendUint32(payload, d.length)
		payload = binary.BigEndian.AppendUint32(payload, d.flags)
	}
	hdr := appendStructuredHeader(r.hdr[:0], replyFlagDone, replyTypeBlockStatus, h.handle, uint32(len(payload)))
	c.send(r, hdr, payload)
}

// descriptor is one base:allocation block descriptor.
type descriptor struct {
	length uint32
	flags  uint32
}

// descriptors turns the export's extent list into block descriptors covering
// a prefix of [off, off+length) (at least one byte of it). It tolerates any
// extent list: extents outside the range are clipped, unsorted or overlapping
// ones are skipped, gaps are reported as allocated (status 0, which the spec
// says is always safe), adjacent descriptors with the same status merge, and
// with reqOne only the first descriptor is kept.
func descriptors(exts []gateway.Extent, off uint64, length uint32, reqOne bool) []descriptor {
	end := off + uint64(length)
	cur := off
	var out []descriptor
	add := func(n uint64, flags uint32) {
		if n == 0 {
			return
		}
		if k := len(out); k > 0 && out[k-1].flags == flags {
			out[k-1].length += uint32(n) // cannot overflow: the sum is at most length
			return
		}
		out = append(out, descriptor{length: uint32(n), flags: flags})
	}
	for _, e := range exts {
		if cur >= end || len(out) >= maxDescriptors {
			break
		}
		if e.Length <= 0 || e.Offset < 0 {
			continue
		}
		eo, el := uint64(e.Offset), uint64(e.Length)
		ee := eo + el
		if ee < eo { // overflow
			ee = end
		}
		if ee <= cur {
			continue // before the cursor (or overlapping what we already described)
		}
		if eo >= end {
			break
		}
		if eo > cur {
			add(eo-cur, 0)
			cur = eo
		}
		stop := min(ee, end)
		var flags uint32
		if e.Hole {
			flags = stateHole | stateZero
		}
		add(stop-cur, flags)
		cur = stop
	}
	if len(out) == 0 {
		// Nothing usable: say "allocated" for the whole range.
		out = append(out, descriptor{length: length})
		cur = end
	}
	if reqOne {
		out = out[:1]
	}
	return out
}
