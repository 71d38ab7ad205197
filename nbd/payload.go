package nbd

import (
	"io"
	"net"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// Reading WRITE payloads.
//
// A large payload reaches the socket in pieces: the client's send buffer
// (about 200 KiB for a unix socket) holds only part of it, so a 1 MiB payload
// takes five or more reads. Through net.Conn every read that finds the socket
// empty parks the reader goroutine in the netpoller, and waking it costs an
// epoll_wait, a futex and a trip through the scheduler, several times per
// request; at 1 MiB QD8 that made the reader the bottleneck. So a large
// payload remainder is read through the socket's syscall.RawConn, straight
// into the request buffer: when a read finds the socket empty the reader
// yields (runtime.Gosched) and tries again, up to rawSpins times in a row,
// before it parks in the netpoller as usual. The client is normally in the
// middle of sending, so the next piece arrives within that window.
//
// Parking still goes through the netpoller, so read deadlines (Shutdown) and
// Close wake the reader exactly as on the buffered path. (Blocking recv with
// MSG_WAITALL was tried too: fewer syscalls, but the thread blocked in the
// kernel holds its P until sysmon retakes it, and it measured slower.)

const (
	// rawPayloadMin is the smallest payload remainder read through the
	// RawConn; smaller ones usually arrive whole and go through the buffered
	// reader.
	rawPayloadMin = 64 << 10
	// rawSpins is how many empty reads in a row the reader tolerates before
	// parking; about 100 µs.
	rawSpins = 200
)

// rawConn returns the connection's syscall.RawConn for unix and TCP sockets.
func rawConn(nc any) syscall.RawConn {
	switch nc.(type) {
	case *net.UnixConn, *net.TCPConn:
	default:
		return nil
	}
	rc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// readPayload fills b with the WRITE payload that follows a request header:
// first what the buffered reader already holds, then the rest from the
// socket.
func (c *conn) readPayload(b []byte) error {
	if n := min(c.br.Buffered(), len(b)); n > 0 {
		c.br.Read(b[:n]) // cannot fail or come up short: n bytes are buffered
		b = b[n:]
	}
	if len(b) == 0 {
		return nil
	}
	if !c.inputReady(len(b)) {
		c.flushDeferred() // about to wait for the client: send what the reader queued
	}
	if c.raw == nil || len(b) < rawPayloadMin {
		if c.batch != nil { // TLS: the records of the payload are on their way
			c.batch.inPayload = true
			defer func() { c.batch.inPayload = false }()
		}
		for {
			c.expect(len(b))
			n, err := io.ReadFull(c.br, b)
			b = b[n:]
			if err == nil || !c.retryRead(err, time.Now().Add(c.srv.lim.stall)) {
				return err
			}
		}
	}
	for {
		err := c.readRaw(&b)
		if err == nil || !c.retryRead(err, time.Now().Add(c.srv.lim.stall)) {
			return err
		}
	}
}

// readRaw reads *b from the socket through the RawConn, advancing *b as
// it goes (so a read woken by a deadline can go on where it stopped).
func (c *conn) readRaw(bp *[]byte) error {
	b := *bp
	defer func() { *bp = b }()
	var err error
	rerr := c.raw.Read(func(fd uintptr) bool {
		for spins := 0; len(b) > 0; {
			var n int
			n, err = recvOnce(fd, b)
			switch {
			case err == syscall.EAGAIN:
				err = nil
				if spins++; spins > rawSpins {
					return false // park until readable; then we are called again
				}
				runtime.Gosched()
			case err == syscall.EINTR:
				err = nil
			case err != nil:
				return true
			default:
				b = b[n:]
				spins = 0
			}
		}
		return true
	})
	if rerr != nil {
		return rerr
	}
	return err
}

// recvOnce is one non-blocking read(2) into b; end of stream is
// io.ErrUnexpectedEOF, since a payload was expected.
func recvOnce(fd uintptr, b []byte) (int, error) {
	n, _, e := syscall.Syscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	switch {
	case e != 0:
		return 0, e
	case n == 0:
		return 0, io.ErrUnexpectedEOF
	}
	return int(n), nil
}
