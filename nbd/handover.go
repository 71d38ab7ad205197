package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

// Handing established connections to another process (a gateway
// handover, docs/HANDOVER.md).
//
// ShutdownHandover is Shutdown, except that a connection in the
// transmission phase, without TLS, is not closed: its reader stops at a
// request boundary, every request it had read is run and answered, and
// the connection's socket is returned (a duplicate fd) with what the
// next server needs to go on serving it (ConnState). Resume serves such
// a socket in the transmission phase without a handshake. The client
// sees a pause and no error: requests it sends meanwhile wait in the
// socket.
//
// No byte the client sent is lost or read twice: once a handover is
// asked for, the reader reads the socket exactly (the buffered reader
// never fills past the end of the request being read, source below), so
// when it stops with nothing buffered, everything not yet read is still
// in the socket for the next server. A reader blocked waiting for a
// request is woken by a read deadline; one woken in the middle of a
// request (or of a WRITE payload) reads the rest of it and stops after.
//
// A TLS connection cannot be handed over: its session (keys, record
// sequence numbers) lives in crypto/tls's memory and cannot be exported
// or rebuilt in another process. It is drained and closed as on
// Shutdown; its client reconnects.

// ConnState is what a server needs to serve a handed-over connection:
// the export and what the handshake negotiated.
type ConnState struct {
	Export     string // the export name the client opened
	Size       int64  // the size the client was told
	ReadOnly   bool
	Structured bool   // structured replies negotiated
	MetaAlloc  bool   // base:allocation selected
	Flags      uint16 // transmission flags the client was told
	MaxPayload uint32 // the largest READ/WRITE payload accepted
}

// HandedConn is a connection ShutdownHandover stopped for a handover: a
// duplicate of its socket (the caller closes it) and its state.
type HandedConn struct {
	File  *os.File
	State ConnState
}

// ShutdownHandover stops the server as Shutdown does, but returns the
// connections that can be handed over instead of closing them (see
// above). The others (TLS, still negotiating) end as on Shutdown. If ctx
// ends first, the remaining connections are closed and not returned.
func (s *Server) ShutdownHandover(ctx context.Context) ([]HandedConn, error) {
	s.handover.Store(true)
	err := s.door.Shutdown(ctx)
	s.handedMu.Lock()
	defer s.handedMu.Unlock()
	out := s.handed
	s.handed = nil
	return out, err
}

// Resume serves nc, a connection another server handed over, in the
// transmission phase. The export is looked up and authorized again (the
// peer's credentials come from the socket); it must still be what the
// client was told (size, read-only), or the connection is refused and
// nc stays the caller's. The connection belongs to the server from
// then on.
func (s *Server) Resume(nc net.Conn, st ConnState) error {
	_, err := s.resume(nc, st)
	return err
}

// ResumeHandoff is Resume for a connection the old server served as a
// Handoff (an attached device's, in the transmission phase from the
// start): it returns the Handoff.
func (s *Server) ResumeHandoff(nc net.Conn, st ConnState) (Handoff, error) {
	c, err := s.resume(nc, st)
	if err != nil {
		return Handoff{}, err
	}
	return Handoff{Size: c.sess.size, Flags: c.sess.flags, ReadOnly: c.sess.readOnly, Done: c.done, c: c}, nil
}

func (s *Server) resume(nc net.Conn, st ConnState) (*conn, error) {
	n := &negotiator{exports: s.exports, readOnly: s.readOnly, maxPayload: s.maxPayload, log: s.log,
		peer: peerOf(nc), structured: st.Structured, metaAlloc: st.MetaAlloc, metaName: st.Export}
	sess, err := n.open(st.Export)
	if err != nil {
		return nil, err
	}
	switch {
	case sess.size != st.Size:
		return nil, fmt.Errorf("nbd: export %q is %d bytes, the client was told %d", st.Export, sess.size, st.Size)
	case sess.readOnly != st.ReadOnly || sess.flags != st.Flags:
		return nil, fmt.Errorf("nbd: export %q read-only %v flags %#x, the client was told %v %#x", st.Export, sess.readOnly, sess.flags, st.ReadOnly, st.Flags)
	case st.MaxPayload == 0 || int(st.MaxPayload) > s.maxPayload:
		return nil, fmt.Errorf("nbd: the client may send payloads of %d bytes, this server takes at most %d", st.MaxPayload, s.maxPayload)
	}
	tuneSocket(nc)
	c := newConn(s, context.Background(), nc)
	c.setSession(sess)
	c.preset = true
	c.st.maxPayload = st.MaxPayload
	if !s.door.Start(c) {
		c.cancel()
		return nil, fmt.Errorf("nbd: server is shutting down: %w", gateway.ErrClosed)
	}
	return c, nil
}

// source is what the connection's buffered reader reads from: the
// socket, or once a handover is asked for (exact), no more than need
// bytes, the rest of the request being read. The reader goroutine alone
// uses it.
type source struct {
	r     io.Reader
	exact bool
	need  int
}

// errBoundary: the buffered reader asked for bytes past the request
// being read during a handover. The reader never asks when it knows the
// request's length; seeing it is a bug, and the connection is closed.
var errBoundary = errors.New("nbd: read past a request boundary during a handover")

func (s *source) Read(p []byte) (int, error) {
	if !s.exact {
		return s.r.Read(p)
	}
	if s.need <= 0 {
		return 0, errBoundary
	}
	if len(p) > s.need {
		p = p[:s.need]
	}
	n, err := s.r.Read(p)
	s.need -= n
	return n, err
}

// expect tells the source that the reader is about to read n more bytes
// of the current request through the buffered reader.
func (c *conn) expect(n int) {
	if c.src.exact {
		c.src.need = max(0, n-c.br.Buffered())
	}
}

// handingOver reports whether a handover asked this connection to stop;
// from then on the source reads exactly.
func (c *conn) handingOver() bool {
	if !c.detaching.Load() {
		return false
	}
	c.src.exact = true
	return true
}

// canHandOver: a plain (not TLS) socket whose fd can be duplicated.
func (c *conn) canHandOver() bool {
	if c.tlsConfig != nil || c.batch != nil || c.sess == nil {
		return false
	}
	_, ok := c.nc.(interface{ File() (*os.File, error) })
	return ok
}

// retryRead decides what to do with a read error during a handover: the
// read deadline that woke the reader (Drain) is cleared and the read
// goes on, once. Any other error ends the connection as usual.
func (c *conn) retryRead(err error, deadline time.Time) bool {
	if !c.handingOver() || c.wokenForHandover || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	c.wokenForHandover = true
	if d, ok := c.nc.(deadliner); ok {
		_ = d.SetReadDeadline(deadline)
	}
	return true
}

// readHeader reads the next request header into hdr. stop: a handover
// stopped the reader at a request boundary, nothing of the next request
// read; it is still in the socket.
func (c *conn) readHeader(hdr []byte) (stop bool, err error) {
	for n := 0; n < len(hdr); {
		c.expect(len(hdr) - n)
		m, err := c.br.Read(hdr[n:])
		n += m
		if err == nil {
			continue
		}
		if n == 0 && c.br.Buffered() == 0 && c.handingOver() &&
			(errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, errBoundary)) {
			return true, nil
		}
		if c.retryRead(err, time.Time{}) {
			continue
		}
		if n > 0 && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return false, err
	}
	return false, nil
}

// handOver ends a connection a handover stopped at a request boundary,
// its replies all written: its socket is duplicated for the next
// server, then closed here.
func (c *conn) handOver() {
	if c.broken.Load() {
		return
	}
	f, err := c.nc.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		c.log.Warn("nbd: cannot hand the connection over; closing it", "err", err)
		return
	}
	c.srv.handedMu.Lock()
	c.srv.handed = append(c.srv.handed, HandedConn{File: f, State: ConnState{
		Export: c.sess.name, Size: c.st.size, ReadOnly: c.st.readOnly, Structured: c.st.structured,
		MetaAlloc: c.st.metaAlloc, Flags: c.sess.flags, MaxPayload: c.st.maxPayload}})
	c.srv.handedMu.Unlock()
}
