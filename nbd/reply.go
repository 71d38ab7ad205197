package nbd

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Replies are queued and written by whichever goroutine finds the writer
// idle: it takes everything queued, writes it with one writev outside the
// lock, releases those requests, and repeats while more was queued in the
// meantime. Under load many replies share one syscall, and a worker never
// waits for the socket unless it is the one writing.

// send queues r's reply (hdr, then data if non-nil) and writes it unless
// another goroutine is already writing. The request is released once its
// reply has been written or dropped. Replies from the reader goroutine
// (r == nil, or r.inline) are only queued: the reader calls flushDeferred
// before it blocks, so consecutive inline replies share one writev.
func (c *conn) send(r *request, hdr, data []byte) {
	c.wmu.Lock()
	if r != nil {
		r.queued = true
		c.pendReqs = append(c.pendReqs, r)
	}
	c.pending = append(c.pending, hdr)
	if data != nil {
		c.pending = append(c.pending, data)
	}
	if c.flushing || r == nil || r.inline {
		c.wmu.Unlock()
		return
	}
	c.flushLocked()
}

// flushDeferred writes whatever is queued, unless a writer is already busy
// (it will pick the queue up).
func (c *conn) flushDeferred() {
	c.wmu.Lock()
	if c.flushing || len(c.pending) == 0 {
		c.wmu.Unlock()
		return
	}
	c.flushLocked()
}

// flushLocked is called with wmu held and releases it. It writes the queue
// with wmu released, repeating while more replies were queued meanwhile.
func (c *conn) flushLocked() {
	c.flushing = true
	for len(c.pending) > 0 || len(c.pendReqs) > 0 {
		bufs, reqs := c.pending, c.pendReqs
		c.pending, c.pendReqs = c.spare[:0], c.spareReq[:0]
		c.wmu.Unlock()

		c.writeAll(bufs)
		for i, q := range reqs {
			c.releaseRequest(q)
			reqs[i] = nil
		}
		clear(bufs[:cap(bufs)])

		c.wmu.Lock()
		c.spare, c.spareReq = bufs[:0], reqs[:0]
	}
	c.flushing = false
	c.wmu.Unlock()
}

// writeAll writes bufs with writev. After a write error the connection is
// closed and later replies are dropped.
func (c *conn) writeAll(bufs [][]byte) {
	if c.broken.Load() {
		return
	}
	if d, ok := c.nc.(deadliner); ok {
		// A client that stops reading replies loses the connection
		// after the stall timeout, and with it the buffers they hold.
		_ = d.SetWriteDeadline(time.Now().Add(c.srv.lim.stall))
	}
	var err error
	if c.batch != nil {
		err = c.writeTLS(c.nc, bufs)
	} else {
		// WriteTo consumes its receiver, so it gets a copy of the slice
		// header, kept in the conn (only the flushing goroutine uses it)
		// to avoid an allocation per call.
		c.wv = bufs
		_, err = c.wv.WriteTo(c.nc)
		c.wv = nil
	}
	if err != nil {
		if !isClosedErr(err) {
			c.log.Debug("nbd: write reply", "err", err)
		}
		c.abort()
	}
}

// replyOK sends a successful reply without data. A simple reply is allowed
// for every command but READ even with structured replies.
func (c *conn) replyOK(r *request) {
	c.send(r, appendSimpleReply(r.hdr[:0], 0, r.h.handle), nil)
}

// replyRead sends the data of a successful READ: a simple reply, or one
// OFFSET_DATA chunk with DONE (so DF is always honoured).
func (c *conn) replyRead(r *request) {
	if !c.st.structured {
		c.send(r, appendSimpleReply(r.hdr[:0], 0, r.h.handle), r.buf.B)
		return
	}
	b := appendStructuredHeader(r.hdr[:0], replyFlagDone, replyTypeOffsetData, r.h.handle, 8+r.h.length)
	b = binary.BigEndian.AppendUint64(b, r.h.offset)
	c.send(r, b, r.buf.B)
}

// replyError sends an error reply for h: a simple reply, or a structured
// error chunk when structured replies were negotiated. r is nil when the
// reader answers a request it did not dispatch.
func (c *conn) replyError(r *request, h requestHeader, e uint32) {
	if c.st.structured {
		msg := fmt.Sprintf("%s (cmd %d, offset %d, length %d)", errnoName(e), h.typ, h.offset, h.length)
		c.send(r, appendErrorChunk(nil, h.handle, e, msg), nil)
		return
	}
	if r != nil {
		c.send(r, appendSimpleReply(r.hdr[:0], e, h.handle), nil)
		return
	}
	c.send(nil, appendSimpleReply(make([]byte, 0, simpleReplyLen), e, h.handle), nil)
}
