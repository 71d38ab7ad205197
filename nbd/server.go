package nbd

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/bufpool"
	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/logcap"
)

// Export is one volume as the NBD server sees it. *gateway.Volume satisfies it.
//
// An Export may also implement interface{ ReadOnly() bool }; when it reports
// true the export is served read-only.
type Export interface {
	Size() int64
	// Do runs one request. The server sets req.Door to gateway.DoorNBD.
	Do(ctx context.Context, req *gateway.Request) error
	// Extents returns the allocation map of [off, off+length) for BLOCK_STATUS.
	Extents(ctx context.Context, off, length int64) ([]gateway.Extent, error)
}

// Exports resolves export names ("tenant/volume").
type Exports interface {
	// Lookup returns the export called name; the error wraps
	// gateway.ErrNotFound for unknown names.
	Lookup(name string) (Export, error)
	Names() []string
}

// Peer is what the server knows of a client when it asks an Authorizer.
type Peer struct {
	// UID is the client's local user: a unix socket peer's (SO_PEERCRED)
	// or the owner of a loopback TCP socket. -1 when unknown (a remote
	// TCP client).
	UID int
	// TLS: the client came through STARTTLS; its identity is then its
	// certificate alone.
	TLS bool
	// Tenant is the common name of the client certificate verified in
	// the TLS handshake ("" without TLS or without a verified one).
	Tenant string
	// Addr is the client's address ("" for a unix socket).
	Addr string
}

// Authorizer is an optional interface of Exports: when implemented, a
// client sees in LIST, and may open with INFO, GO or EXPORT_NAME, only
// the exports Authorize allows; any other name is answered as unknown,
// so a client cannot tell another tenant's export from a missing one.
type Authorizer interface {
	Authorize(p Peer, name string) bool
}

// Options configure a Server. The zero value is usable.
type Options struct {
	ReadOnly   bool // serve every export read-only
	MaxPayload int  // largest READ/WRITE payload; default 32 MiB, at least 4 KiB, at most 1 GiB
	Logger     *slog.Logger

	// Limits (limits.go); zero: the Default* values.
	MaxConns          int           // connections in all
	MaxConnsPerClient int           // connections per client (unix peer uid, TCP peer IP)
	TenantInflight    int64         // payload bytes in flight per tenant
	TotalInflight     int64         // payload bytes in flight in all
	StallTimeout      time.Duration // a payload or a reply write that makes no progress this long closes the connection

	// SpinMax bounds how long a reader on an idle connection polls its
	// socket before it parks (spin.go); zero: DefaultSpinMax; negative:
	// never spin.
	SpinMax time.Duration
}

// Defaults and limits.
const (
	DefaultMaxPayload = 32 << 20
	minMaxPayload     = 4 << 10
	maxMaxPayload     = 1 << 30

	handshakeTimeout = 30 * time.Second // whole option phase
	maxOptions       = 1024             // options per connection before we hang up
	maxOptionData    = 64 << 10         // option payload we are willing to buffer

	maxWorkers     = 128      // goroutines executing requests, per connection
	inflightBudget = 64 << 20 // payload bytes held by in-flight requests, per connection
)

// Server serves Exports over NBD. Create it with NewServer.
type Server struct {
	exports    Exports
	readOnly   bool
	maxPayload int
	log        *slog.Logger
	clients    *logcap.Clients // log budgets per client
	lim        *limits         // connection caps and shared in-flight budgets
	bufs       bufpool.Pool
	reqs       sync.Pool // *request

	// door holds the listeners and the live connections, and enforces
	// the connection caps (Options.MaxConns, MaxConnsPerClient).
	door *door.Server[*conn]

	spinMax time.Duration // Options.SpinMax resolved; <= 0: never spin

	// A handover (handover.go): set by ShutdownHandover; connections
	// stopped for it are collected in handed.
	handover atomic.Bool
	handedMu sync.Mutex
	handed   []HandedConn

	panics     atomic.Uint64 // requests and connections whose handling panicked
	spinHits   atomic.Uint64 // idle spins that saw the next request arrive
	spinMisses atomic.Uint64 // idle spins that ended with the reader parking
}

// Spins counts the idle readers' spins (spin.go): those that saw the next
// request arrive and those that ended with the reader parking.
func (s *Server) Spins() (hits, misses uint64) { return s.spinHits.Load(), s.spinMisses.Load() }

func (s *Server) countSpin(hit bool) {
	if hit {
		s.spinHits.Add(1)
	} else {
		s.spinMisses.Add(1)
	}
}

// Panics counts the requests whose handling panicked in this server, in
// the export (a *gateway.Volume recovers panics in Do and counts them
// itself) or in the door's code, and the connections whose reader
// panicked. A request got EIO, or closed its connection if its reply was
// already queued; a connection was closed (see the package doc).
func (s *Server) Panics() uint64 { return s.panics.Load() }

// NewServer returns a server for exports. It does not listen; call Serve.
func NewServer(exports Exports, opts Options) *Server {
	mp := opts.MaxPayload
	switch {
	case mp <= 0:
		mp = DefaultMaxPayload
	case mp < minMaxPayload:
		mp = minMaxPayload
	case mp > maxMaxPayload:
		mp = maxMaxPayload
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		exports:    exports,
		readOnly:   opts.ReadOnly,
		maxPayload: mp,
		log:        log,
		clients:    logcap.NewClients(log, 0, 0),
		lim:        newLimits(opts),
		spinMax:    opts.SpinMax,
	}
	if s.spinMax == 0 {
		s.spinMax = DefaultSpinMax
	}
	s.door = door.New[*conn](door.Options{
		Name:            "nbd",
		Logger:          log,
		PeerLog:         s.clients.For,
		MaxConns:        s.lim.maxConns,
		MaxConnsPerPeer: s.lim.maxPerClient,
		Panics:          &s.panics,
	})
	s.reqs.New = func() any { return new(request) }
	return s
}

// Serve accepts connections on l until l is closed, Shutdown is called or ctx
// is done. It works for TCP and unix listeners and may be called for several
// listeners at once. When ctx is done, Serve closes l and every connection it
// accepted (in-flight requests see a cancelled context) and waits for them.
// It returns nil after Shutdown or when l is closed, and ctx.Err() after ctx
// is done. Failed accepts that pass (EMFILE) are retried (internal/door).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.serve(ctx, l, nil)
}

// serve is Serve, with TLS required when tlsConfig is set (ServeTLS).
func (s *Server) serve(ctx context.Context, l net.Listener, tlsConfig *tls.Config) error {
	return s.door.Serve(ctx, l, func(ctx context.Context, nc net.Conn) (*conn, bool) {
		tuneSocket(nc)
		c := newConn(s, ctx, nc)
		c.tlsConfig = tlsConfig
		return c, true
	})
}

// Shutdown stops accepting connections, stops reading new requests, waits for
// in-flight requests to finish and their replies to be sent, and closes every
// connection. Requests that the client had already sent and the server had
// buffered get ESHUTDOWN. Connections still negotiating are closed. If ctx
// ends first, the remaining connections are closed at once (their requests'
// contexts are cancelled) and ctx.Err() is returned.
func (s *Server) Shutdown(ctx context.Context) error { return s.door.Shutdown(ctx) }

// socketBuffer is the send and receive buffer asked for on each connection:
// a 1 MiB read reply then goes out in one writev without waiting for the
// client to drain a default-sized (~200 KiB) unix socket buffer.
const socketBuffer = 4 << 20

// tuneSocket sizes the connection's buffers and turns off Nagle on TCP.
func tuneSocket(nc net.Conn) {
	type buffered interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	if b, ok := nc.(buffered); ok {
		b.SetWriteBuffer(socketBuffer)
		b.SetReadBuffer(socketBuffer)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
}
