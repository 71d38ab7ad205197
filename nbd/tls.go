package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
)

// TLS (the NBD protocol's STARTTLS, as nbdkit and qemu-nbd offer it).
//
// A listener served with ServeTLS requires TLS: before NBD_OPT_STARTTLS
// every option but ABORT is answered NBD_REP_ERR_TLS_REQD (EXPORT_NAME,
// which cannot be refused, ends the connection). STARTTLS is acknowledged
// and the TLS handshake runs on the connection; the rest of the option
// haggling and the whole transmission phase then go through TLS. With a
// tls.Config that verifies client certificates, Peer.Tenant is the
// verified certificate's common name, which an Authorizer binds to the
// tenant whose exports the client may see and use. A second STARTTLS is
// invalid; a listener served with Serve answers STARTTLS as unsupported.

// repErrTLSReqd is NBD_REP_ERR_TLS_REQD.
const repErrTLSReqd uint32 = 1<<31 | 5

// ServeTLS is Serve with TLS required on every connection (see above).
func (s *Server) ServeTLS(ctx context.Context, l net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		return errors.New("nbd: ServeTLS without a TLS config")
	}
	return s.serve(ctx, l, cfg)
}

// startTLS answers NBD_OPT_STARTTLS.
func (n *negotiator) startTLS(opt uint32, data []byte) error {
	switch {
	case n.tlsConfig == nil:
		return n.reply(opt, repErrUnsup, []byte("TLS is not offered on this listener"))
	case len(data) != 0:
		return n.reply(opt, repErrInvalid, []byte("STARTTLS takes no data"))
	case n.tlsDone:
		return n.reply(opt, repErrInvalid, []byte("TLS is already negotiated"))
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return err
	}
	r, w, state, err := n.upgrade(n.tlsConfig)
	if err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	n.r, n.w, n.tlsDone = r, w, true
	n.peer.TLS = true
	if len(state.VerifiedChains) > 0 && len(state.PeerCertificates) > 0 {
		n.peer.Tenant = state.PeerCertificates[0].Subject.CommonName
	}
	return nil
}

// tlsRequired answers an option sent before STARTTLS on a TLS listener;
// handled reports whether it did.
func (n *negotiator) tlsRequired(opt uint32) (handled bool, err error) {
	if n.tlsConfig == nil || n.tlsDone || opt == optStartTLS || opt == optAbort {
		return false, nil
	}
	if opt == optExportName {
		return true, errors.New("nbd: EXPORT_NAME before STARTTLS on a listener that requires TLS")
	}
	return true, n.reply(opt, repErrTLSReqd, []byte("TLS is required: send NBD_OPT_STARTTLS first"))
}

// upgradeTLS runs the server side of the TLS handshake on the connection
// and makes the rest of it go through TLS.
func (c *conn) upgradeTLS(cfg *tls.Config) (io.Reader, io.Writer, tls.ConnectionState, error) {
	nc, ok := c.nc.(net.Conn)
	if !ok {
		return nil, nil, tls.ConnectionState{}, errors.New("transport is not a network connection")
	}
	if c.br.Buffered() > 0 {
		// The client must wait for our ACK before its ClientHello.
		return nil, nil, tls.ConnectionState{}, errors.New("client sent data before the STARTTLS reply")
	}
	// Replies are encrypted record by record; the batcher under the TLS
	// connection gathers one flush's records into one write (writeTLS).
	// Go's small first records (dynamic record sizing) are for web page
	// latency; here they only add records.
	cfg = cfg.Clone()
	cfg.DynamicRecordSizingDisabled = true
	bc := newRecordBatcher(nc)
	bc.waiting = c.flushDeferred
	tc := tls.Server(bc, cfg)
	if err := tc.Handshake(); err != nil { // within the handshake deadline set on nc
		return nil, nil, tls.ConnectionState{}, err
	}
	c.nc, c.raw, c.batch = tc, nil, bc // payloads are read through TLS, not from the socket
	c.br = bufio.NewReaderSize(tc, 128<<10)
	return c.br, tc, tc.ConnectionState(), nil
}

// recordBatcher is the socket under a server's TLS connection. Outside a
// batch it writes through; within one (writeTLS) it gathers the records
// crypto/tls writes, one per reply buffer or per 16 KiB, and the batch
// goes out in one write. Without it a 4 KiB READ reply took two records
// and two syscalls, and 32 queued replies 64 of each.
//
// It also reads for the TLS connection, through a buffer, handing over at
// most one record per Read: crypto/tls then holds no records of its own
// beyond the one it is decrypting, and recordReady tells the reader loop
// whether another request can be read without blocking (so it sends what
// it queued only before it would wait, as on a plain connection). Should a
// record hold no request after all (a TLS 1.3 key update, say), waiting
// still sends the queued replies before the read blocks. Its buffer reads
// the socket through recordSource, which spins before it parks while the
// rest of a record or of a WRITE payload is on its way: at 1 MiB writes
// QD8 a park per piece had the gateway spending a quarter of its CPU on
// context switches (0.87x of nbdkit with TLS; 1.05x with the spin).
type recordBatcher struct {
	net.Conn
	rd      *bufio.Reader
	left    int    // bytes of the current record not yet handed over
	waiting func() // called before a Read waits for the socket
	// inPayload: the reader is reading a WRITE payload, so more records
	// are on their way (set by readPayload; the reader goroutine's).
	inPayload bool

	plain []byte // writeTLS's scratch (the flushing goroutine's)

	mu       sync.Mutex
	batching bool
	buf      []byte
}

// tlsRecordHeaderLen is a TLS record's header: type, version, length.
const tlsRecordHeaderLen = 5

func newRecordBatcher(nc net.Conn) *recordBatcher {
	b := &recordBatcher{Conn: nc}
	src := &recordSource{nc: nc, rc: rawConn(nc), expect: b.expecting}
	b.rd = bufio.NewReaderSize(src, 256<<10)
	return b
}

// expecting reports whether more bytes are known to be on their way: the
// rest of a record, or the next records of a WRITE payload.
func (b *recordBatcher) expecting() bool { return b.left > 0 || b.inPayload }

// recordSource is the socket as the batcher's buffer reads it. While more
// bytes are known to be on their way it reads like readPayload (payload.go):
// a read that finds the socket empty yields and retries, up to rawSpins
// times, before parking, since the client is mid-send. Otherwise it is the
// connection's Read.
type recordSource struct {
	nc     net.Conn
	rc     syscall.RawConn // nil: not a socket
	expect func() bool
}

func (s *recordSource) Read(p []byte) (int, error) {
	if s.rc == nil || len(p) == 0 || !s.expect() {
		return s.nc.Read(p)
	}
	var n int
	var err error
	rerr := s.rc.Read(func(fd uintptr) bool {
		for spins := 0; ; {
			n, err = recvOnce(fd, p)
			switch {
			case err == syscall.EAGAIN:
				if spins++; spins > rawSpins {
					return false // park until readable; then we are called again
				}
				runtime.Gosched()
			case err == syscall.EINTR:
			case err == io.ErrUnexpectedEOF:
				err = io.EOF
				return true
			default:
				return true
			}
		}
	})
	if rerr != nil {
		return n, rerr
	}
	return n, err
}

// recordLen is the length of the record whose header h is, header included.
func recordLen(h []byte) int {
	return tlsRecordHeaderLen + int(binary.BigEndian.Uint16(h[3:5]))
}

// Read hands over the rest of the current record, or the next one once
// its header is in. Only crypto/tls calls it, from the reader goroutine.
func (b *recordBatcher) Read(p []byte) (int, error) {
	if b.waiting != nil && (b.rd.Buffered() == 0 || b.left == 0 && b.rd.Buffered() < tlsRecordHeaderLen) {
		b.waiting() // about to wait for the socket
	}
	if b.left == 0 {
		h, err := b.rd.Peek(tlsRecordHeaderLen)
		if err != nil {
			if len(h) > 0 { // a short header: let crypto/tls see it and fail
				return b.rd.Read(p)
			}
			return 0, err
		}
		b.left = recordLen(h)
	}
	n, err := b.rd.Read(p[:min(len(p), b.left)])
	b.left -= n
	return n, err
}

// recordReady reports whether the rest of the current record, or a whole
// next one, is buffered.
func (b *recordBatcher) recordReady() bool {
	if b.left != 0 {
		return b.rd.Buffered() >= b.left
	}
	if b.rd.Buffered() < tlsRecordHeaderLen {
		return false
	}
	h, _ := b.rd.Peek(tlsRecordHeaderLen) // buffered: cannot fail
	return b.rd.Buffered() >= recordLen(h)
}

func (b *recordBatcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.batching {
		b.buf = append(b.buf, p...)
		b.mu.Unlock()
		return len(p), nil
	}
	b.mu.Unlock()
	return b.Conn.Write(p)
}

func (b *recordBatcher) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// flush ends the batch and writes it.
func (b *recordBatcher) flush() error {
	b.mu.Lock()
	buf := b.buf
	b.batching = false
	b.mu.Unlock()
	_, err := b.Conn.Write(buf)
	keep := buf[:0] // the buffer is kept unless it grew past a batch
	if cap(buf) > tlsBatchBytes*2 {
		keep = nil
	}
	b.mu.Lock()
	b.buf = keep
	b.mu.Unlock()
	return err
}

// tlsBatchBytes is about how much a TLS reply batch gathers before it is
// written: large enough to make syscalls rare, small enough to keep the
// memory per connection low.
const tlsBatchBytes = 256 << 10

// tlsDirectBytes: a reply buffer this large is not batched (writeTLS).
const tlsDirectBytes = 64 << 10

// writeTLS is writeAll's TLS path: runs of small buffers are copied into
// one plaintext of up to about tlsBatchBytes, encrypted as full records
// and written at once; large buffers go out record by record.
func (c *conn) writeTLS(w io.Writer, bufs [][]byte) error {
	for len(bufs) > 0 {
		if len(bufs[0]) >= tlsDirectBytes {
			// A large buffer is many full records, sealed straight from
			// it and written tlsBatchBytes at a time.
			for b := bufs[0]; len(b) > 0; {
				n := min(len(b), tlsBatchBytes)
				c.batch.begin()
				_, err := w.Write(b[:n])
				if ferr := c.batch.flush(); err == nil {
					err = ferr
				}
				if err != nil {
					return err
				}
				b = b[n:]
			}
			bufs = bufs[1:]
			continue
		}
		// Small buffers (reply headers, short reads) are gathered into
		// one plaintext, sealed as full records and written at once.
		plain := c.batch.plain[:0]
		for len(bufs) > 0 && len(bufs[0]) < tlsDirectBytes && len(plain) < tlsBatchBytes {
			plain = append(plain, bufs[0]...)
			bufs = bufs[1:]
		}
		c.batch.begin()
		_, err := w.Write(plain)
		if ferr := c.batch.flush(); err == nil {
			err = ferr
		}
		if cap(plain) <= 2*tlsBatchBytes {
			c.batch.plain = plain[:0]
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// inputReady reports whether n more bytes of requests can be read without
// waiting for the client (at least one more TLS record counts).
func (c *conn) inputReady(n int) bool {
	return c.br.Buffered() >= n || (c.batch != nil && c.batch.recordReady())
}
