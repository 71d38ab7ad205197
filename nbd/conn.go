package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-storage/sluice/internal/bufpool"
	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/listen"
)

// Connection phases, for Shutdown.
const (
	phaseHandshake = iota
	phaseTransmission
	phaseDone
)

// conn is one client connection. One reader goroutine (run) parses requests
// and reads WRITE payloads. It runs a request itself when the export has
// been answering such requests quickly (latency.go), and otherwise hands it
// to a per-connection pool of worker goroutines, so slow requests run
// concurrently and replies go out in completion order (reply.go).
type conn struct {
	srv *Server
	log *slog.Logger // the server's, capped per client (internal/logcap)
	tb  *budget      // the export's tenant's in-flight budget (limits.go)
	// tlsConfig: the listener requires TLS (tls.go).
	tlsConfig *tls.Config
	nc        io.ReadWriteCloser
	src       *source // under br (handover.go)
	br        *bufio.Reader
	raw       syscall.RawConn // for large WRITE payloads (payload.go); nil if not a socket or under TLS
	sock      syscall.RawConn // the socket, also under TLS, for the idle spin (spin.go); nil if not a socket
	idle      idleWait        // the reader's spin (spin.go)
	batch     *recordBatcher  // under nc once TLS is on (tls.go)
	ctx       context.Context // passed to Export; cancelled on a hard close
	cancel    context.CancelFunc

	sess   *session
	st     exportState
	preset bool // the session was set before Start, without a handshake

	// Reply writing: see reply.go. Guarded by wmu.
	wmu      sync.Mutex
	pending  net.Buffers // queued reply bytes, in order
	pendReqs []*request  // requests whose buffers pending refers to
	spare    net.Buffers
	spareReq []*request
	flushing bool        // a goroutine is writing; it will pick up what is queued
	wv       net.Buffers // used by the flushing goroutine only
	broken   atomic.Bool

	// Execution. workers is owned by the reader goroutine.
	work     chan *request
	done     chan struct{} // closed when the connection is finished; workers exit
	workers  int
	inflight sync.WaitGroup
	active   atomic.Int32 // requests in flight (inflight's count, readable)

	// In-flight payload budget: the reader waits while used > budget.
	budgetUsed atomic.Int64
	budgetWake chan struct{}

	lat latency // recent export latency, to choose inline execution

	mu       sync.Mutex // guards phase
	phase    int
	shutting atomic.Bool

	// A handover (handover.go): detaching is set by Drain; the reader
	// owns the rest.
	detaching        atomic.Bool
	wokenForHandover bool // the read deadline that woke the reader was cleared
	stoppedForHand   bool // the reader stopped at a request boundary

	closeOnce sync.Once
}

// request is one transmission-phase request on its way through a worker.
// Requests are pooled by the server.
type request struct {
	h      requestHeader
	buf    *bufpool.Buf // READ/WRITE data
	weight int64        // budget held
	hdr    [32]byte     // reply header scratch
	greq   gatewayRequest
	queued bool // its reply is queued; the writer releases it
	inline bool // run by the reader: its reply waits for flushDeferred
}

func newConn(s *Server, parent context.Context, nc io.ReadWriteCloser) *conn {
	ctx, cancel := context.WithCancel(parent)
	src := &source{r: nc}
	c := &conn{
		srv:        s,
		log:        s.clients.For(listen.ClientKey(nc)),
		nc:         nc,
		src:        src,
		br:         bufio.NewReaderSize(src, 128<<10),
		raw:        rawConn(nc),
		sock:       rawConn(nc),
		idle:       newIdleWait(s.spinMax),
		ctx:        ctx,
		cancel:     cancel,
		work:       make(chan *request),
		done:       make(chan struct{}),
		budgetWake: make(chan struct{}, 1),
	}
	c.lat.init()
	return c
}

// Serve serves the connection until it ends (door.Conn). A panic closes
// the connection: it is logged and counted in Server.Panics.
func (c *conn) Serve() {
	defer c.cancel()
	defer door.Recover(c.log, &c.srv.panics, "nbd: connection panic", func() {
		c.abort()
		c.finish()
	})

	if c.preset {
		// Handed off or resumed (handoff.go, handover.go): the session
		// was set without a handshake.
		if !c.setPhase(phaseTransmission) {
			// A shutdown came before the first read: nothing of the
			// stream was read, so a handover takes the socket as it is.
			c.stoppedForHand = c.detaching.Load()
			c.finish()
			return
		}
		c.transmit()
		c.finish()
		return
	}
	if d, ok := c.nc.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(time.Now().Add(handshakeTimeout))
	}
	n := &negotiator{
		r:          c.br,
		w:          c.nc,
		exports:    c.srv.exports,
		readOnly:   c.srv.readOnly,
		maxPayload: c.srv.maxPayload,
		log:        c.log,
		shutdown:   c.isShutting,
		peer:       peerOf(c.nc),
		tlsConfig:  c.tlsConfig,
		upgrade:    c.upgradeTLS,
	}
	sess, err := n.negotiate()
	if err != nil {
		if !errors.Is(err, errAbort) && !isClosedErr(err) {
			c.log.Debug("nbd: handshake ended", "err", err)
		}
		c.closeTransport()
		c.setPhase(phaseDone)
		return
	}
	if d, ok := c.nc.(interface{ SetDeadline(time.Time) error }); ok {
		_ = d.SetDeadline(time.Time{})
	}
	c.setSession(sess)
	if !c.setPhase(phaseTransmission) {
		// Shutdown began during the handshake.
		c.closeTransport()
		return
	}
	c.log.Debug("nbd: client connected", "export", sess.name, "size", sess.size,
		"structured", sess.structured, "readonly", sess.readOnly)
	c.transmit()
	c.finish()
}

// setSession records the negotiated export for the transmission phase.
func (c *conn) setSession(sess *session) {
	c.sess = sess
	c.tb = c.srv.lim.tenant(sess.name)
	c.st = exportState{
		size:       sess.size,
		readOnly:   sess.readOnly,
		structured: sess.structured,
		metaAlloc:  sess.metaAlloc,
		maxPayload: uint32(c.srv.maxPayload),
	}
}

// finish waits for in-flight requests, stops the workers and closes
// (after duplicating the socket for a handover if the reader stopped
// for one).
func (c *conn) finish() {
	c.inflight.Wait()
	c.setPhase(phaseDone)
	select {
	case <-c.done:
	default:
		close(c.done)
	}
	if c.stoppedForHand {
		c.handOver()
	}
	c.closeTransport()
}

// setPhase moves to phase p; moving to transmission fails when shutting down.
func (c *conn) setPhase(p int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p == phaseTransmission && c.shutting.Load() {
		return false
	}
	c.phase = p
	return true
}

func (c *conn) isShutting() bool { return c.shutting.Load() }

// Drain starts a graceful stop (door.Conn): a connection still negotiating
// is closed; one in transmission stops reading (requests already buffered
// get ESHUTDOWN) and closes once in-flight requests have been answered.
// For a handover (ShutdownHandover) a connection in transmission that
// can be handed over stops at a request boundary instead, answers every
// request it read, and is handed over (handover.go).
//
// detaching is set before shutting: the reader answers ESHUTDOWN to a
// request it reads while shutting and not detaching, so it must never
// see shutting without detaching on a connection being handed over.
// A connection whose session was preset (a handoff or a resumed one)
// and that has not begun to serve yet is not closed here: Serve sees
// shutting before its first read and hands it over or closes it.
func (c *conn) Drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	transmitting := c.phase == phaseTransmission || c.phase == phaseHandshake && c.preset
	if transmitting && c.srv.handover.Load() && c.canHandOver() {
		c.detaching.Store(true)
	}
	c.shutting.Store(true)
	switch c.phase {
	case phaseHandshake:
		if !c.preset {
			c.closeTransport()
		}
	case phaseTransmission:
		if d, ok := c.nc.(interface{ SetReadDeadline(time.Time) error }); ok {
			_ = d.SetReadDeadline(time.Now())
		} else {
			c.closeTransport()
		}
	}
}

// Close closes the connection at once and cancels in-flight requests
// (door.Conn).
func (c *conn) Close() { c.abort() }

// abort closes the connection at once and cancels in-flight requests.
func (c *conn) abort() {
	c.cancel()
	c.closeTransport()
}

func (c *conn) closeTransport() {
	c.closeOnce.Do(func() {
		c.broken.Store(true)
		_ = c.nc.Close()
	})
}

// transmit is the reader loop. It returns when the client disconnects, on a
// protocol violation, or when shutdown stops it.
func (c *conn) transmit() {
	var hdr [requestHeaderLen]byte
	defer c.flushDeferred()
	for {
		if c.handingOver() && c.br.Buffered() == 0 {
			// A request boundary with nothing read past it.
			c.stoppedForHand = true
			return
		}
		var waitStart time.Time
		if !c.inputReady(requestHeaderLen) {
			c.flushDeferred() // about to block: send what the reader queued
			waitStart = time.Now()
			if c.sock != nil && c.active.Load() == 0 && c.idle.worth() {
				c.srv.countSpin(c.idle.spin(c.sock))
			}
		}
		stop, err := c.readHeader(hdr[:])
		if stop {
			c.stoppedForHand = true
			return
		}
		if err != nil {
			if errors.Is(err, errBoundary) {
				c.log.Error("nbd: closing connection", "err", err)
			} else if !c.isShutting() && !isClosedErr(err) && !errors.Is(err, io.EOF) {
				c.log.Debug("nbd: read request", "err", err)
			}
			return
		}
		if !waitStart.IsZero() {
			c.idle.observe(time.Since(waitStart))
		}
		h, err := parseRequestHeader(hdr[:])
		if err != nil {
			// Bad magic: the stream cannot be trusted any more.
			c.log.Warn("nbd: closing connection", "err", err)
			c.abort()
			return
		}
		if h.typ == cmdDisc {
			return
		}
		if c.isShutting() && !c.handingOver() {
			if h.typ == cmdWrite && !c.skipPayload(h.length) {
				return
			}
			c.replyError(nil, h, errnoShutdown)
			continue
		}
		if e := checkRequest(h, c.st); e != 0 {
			if h.typ == cmdWrite && !c.skipPayload(h.length) {
				c.replyError(nil, h, e)
				c.log.Warn("nbd: closing connection after an oversized write", "length", h.length)
				return
			}
			c.replyError(nil, h, e)
			continue
		}
		r := c.srv.reqs.Get().(*request)
		r.h = h
		if h.typ == cmdRead || h.typ == cmdWrite {
			if !c.acquireAll(int64(h.length)) {
				c.srv.reqs.Put(r)
				return // the connection is ending
			}
			r.weight = int64(h.length)
			r.buf = c.srv.bufs.Get(int(h.length))
			if h.typ == cmdWrite {
				if err := c.readPayloadTimed(r.buf.B); err != nil {
					if !c.isShutting() && !isClosedErr(err) {
						c.log.Debug("nbd: read write payload", "err", err)
					}
					c.inflight.Add(1)
					c.active.Add(1)
					c.releaseRequest(r)
					return
				}
			}
		}
		c.inflight.Add(1)
		idle := c.active.Add(1) == 1 && !c.inputReady(1)
		if c.lat.fast(h.typ, idle) {
			r.inline = true
			c.execute(r)
		} else {
			c.dispatch(r)
		}
	}
}

// skipPayload discards a WRITE payload the server will not use. It reports
// false when the payload is too large to skip safely (or the read failed);
// the caller must then close the connection.
func (c *conn) skipPayload(n uint32) bool {
	limit := int64(2 * c.srv.maxPayload)
	if limit < 64<<20 {
		limit = 64 << 20
	}
	if int64(n) > limit {
		return false
	}
	if !c.inputReady(int(n)) {
		c.flushDeferred()
	}
	for left := int64(n); left > 0; {
		c.expect(int(left))
		m, err := io.CopyN(io.Discard, c.br, left)
		left -= m
		if err != nil && !c.retryRead(err, time.Time{}) {
			return false
		}
	}
	return true
}

// dispatch hands r to an idle worker, starts a new one, or waits for one.
func (c *conn) dispatch(r *request) {
	select {
	case c.work <- r:
		return
	default:
	}
	if c.workers < maxWorkers {
		c.workers++
		go c.worker(r)
		return
	}
	c.flushDeferred()
	c.work <- r
}

func (c *conn) worker(r *request) {
	for {
		c.execute(r)
		select {
		case r = <-c.work:
		case <-c.done:
			return
		}
	}
}

// acquire takes n bytes of the in-flight budget, waiting while it is spent.
// A request larger than the whole budget runs alone.
func (c *conn) acquire(n int64) {
	for {
		used := c.budgetUsed.Load()
		if used == 0 || used+n <= inflightBudget {
			if c.budgetUsed.CompareAndSwap(used, used+n) {
				return
			}
			continue
		}
		c.flushDeferred() // deferred replies hold budget
		<-c.budgetWake
	}
}

// acquireAll takes n bytes of the connection's, its tenant's and the
// server's in-flight budgets; false if the connection ends while waiting.
func (c *conn) acquireAll(n int64) bool {
	c.acquire(n)
	if !c.tb.tryAcquire(n) {
		c.flushDeferred() // deferred replies hold budget
		if !c.tb.acquire(c.ctx, n) {
			c.releaseConn(n)
			return false
		}
	}
	if !c.srv.lim.total.tryAcquire(n) {
		c.flushDeferred()
		if !c.srv.lim.total.acquire(c.ctx, n) {
			c.tb.release(n)
			c.releaseConn(n)
			return false
		}
	}
	return true
}

// release returns n bytes to every budget acquireAll took them from.
func (c *conn) release(n int64) {
	if n == 0 {
		return
	}
	c.srv.lim.total.release(n)
	c.tb.release(n)
	c.releaseConn(n)
}

func (c *conn) releaseConn(n int64) {
	c.budgetUsed.Add(-n)
	select {
	case c.budgetWake <- struct{}{}:
	default:
	}
}

// releaseRequest returns r's buffer, budget and itself to the pools and
// marks it finished. It runs once the reply is written (or dropped).
func (c *conn) releaseRequest(r *request) {
	if r.buf != nil {
		c.srv.bufs.Put(r.buf)
		r.buf = nil
	}
	c.release(r.weight)
	r.weight = 0
	r.greq = gatewayRequest{}
	r.queued = false
	r.inline = false
	c.srv.reqs.Put(r)
	c.active.Add(-1)
	c.inflight.Done()
}

// execute runs one request and queues its reply. A panic before the reply
// is queued (in the export or in exec) fails the request with EIO and the
// connection serves on. A panic once the reply is queued is in the reply
// writer, which leaves the reply stream in an unknown state: the
// connection is closed. Either way it is logged with its stack and counted.
func (c *conn) execute(r *request) {
	defer func() {
		if p := recover(); p != nil {
			door.Panicked(c.log, &c.srv.panics, "nbd: request panicked", p,
				"cmd", r.h.typ, "handle", r.h.handle, "replied", r.queued)
			if r.queued {
				c.abort() // the request belongs to the writer
				return
			}
			c.replyError(r, r.h, errnoIO)
		}
	}()
	c.exec(r) // every path queues exactly one reply, which releases r
}

// isClosedErr reports errors that just mean the peer or we closed the socket.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF)
}

// peerOf identifies the client of a connection for an Authorizer.
func peerOf(nc io.ReadWriteCloser) Peer {
	p := Peer{UID: -1}
	c, ok := nc.(net.Conn)
	if !ok {
		return p
	}
	if cred, ok := listen.PeerCred(c); ok {
		p.UID = int(cred.Uid)
		return p
	}
	p.Addr = c.RemoteAddr().String()
	if uid, ok := listen.LoopbackUID(c); ok {
		p.UID = uid
	}
	return p
}

// deadliner is a transport with deadlines (every net.Conn).
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// readPayloadTimed is readPayload bounded by the stall timeout: a client
// that sends a WRITE header and then nothing loses the connection instead
// of holding its buffer for ever. The stall deadline replaces the one a
// Drain may have set meanwhile (the payload must be read either way), so
// afterwards the deadline is the Drain's again, not none: else the
// reader's next header read would wait for an idle client with no
// deadline and hold the stop until its timeout. Under c.mu, as Drain
// sets it.
func (c *conn) readPayloadTimed(b []byte) error {
	d, ok := c.nc.(deadliner)
	if ok {
		_ = d.SetReadDeadline(time.Now().Add(c.srv.lim.stall))
		defer func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.shutting.Load() {
				_ = d.SetReadDeadline(time.Now())
			} else {
				_ = d.SetReadDeadline(time.Time{})
			}
		}()
	}
	return c.readPayload(b)
}
