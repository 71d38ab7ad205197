// Package door is the plumbing every door of the gateway shares (nbd,
// virtio, and the shim to come): the accept loop, the registry of live
// connections with its caps, the order of a shutdown, and the panic
// policy. A door keeps only its protocol.
//
// # How a door plugs in
//
// A door's connection type (a pointer) satisfies Conn: Serve runs it to
// its end, Drain asks it to end gracefully, Close ends it at once. The
// door creates one Server for its listeners, hands Serve a function that
// turns an accepted socket into a connection, and calls Shutdown when the
// gateway stops:
//
//	d := door.New[*conn](door.Options{Name: "shim", Log: log, MaxConns: 256})
//	go d.Serve(ctx, l, func(ctx context.Context, nc net.Conn) (*conn, bool) {
//		return newConn(ctx, nc), true // false refuses nc (log why); d closes it
//	})
//	...
//	err := d.Shutdown(ctx) // drain, then force once ctx ends
//
// A connection the door did not accept (the NBD door's handoff of a
// socket to the kernel) joins with Start; it is not counted against the
// caps and only Shutdown ends it.
//
// # Accepting
//
// Serve accepts on one listener until the listener is closed, Shutdown is
// called or ctx ends; it may run for several listeners at once. An
// accept error that passes (out of file descriptors, ECONNABORTED) waits
// and accepts again (listen.Backoff): it never stops the door. Each
// accepted socket is counted against Options.MaxConns (accepted
// connections in all) and Options.MaxConnsPerPeer (per peer, as
// listen.ClientKey names it: a unix peer's uid, a TCP peer's IP); past
// either it is closed at once and the refusal logged at WARN, with the
// log budget of that peer (Options.PeerLog). Otherwise open makes it a
// connection, which is registered and served on its own goroutine.
//
// open is given the connection's context, not Serve's ctx: a graceful
// Shutdown lets connections finish after Serve has returned. The
// connection's context is cancelled when Serve's ctx ends (a hard stop)
// or once the last connection of that Serve is gone.
//
// # Stopping
//
// Two ways, as the gateway needs them:
//
//   - Serve's ctx ends (a hard stop of one listener): Serve closes the
//     listener, cancels its connections' context, Closes each of its
//     connections, waits for them and returns ctx.Err().
//   - Shutdown (the graceful stop of the whole door): no new connection
//     is registered, every listener is closed (their Serve returns nil),
//     every connection is asked to Drain, and Shutdown waits until all
//     have ended. If its ctx ends first, it Closes every connection,
//     waits for them, and returns ctx.Err().
//
// # Panics
//
// A panic in a door must cost at most the request or the connection it
// happened in, never the gateway. Where a door recovers one it calls
// Panicked (inside a deferred recover) or defers Recover: the panic is
// logged at ERROR with its value and stack, and counted in the door's
// counter. A connection's Serve defers Recover itself, to clean up in its
// own order; as a safety net the registry also recovers a panic that
// escapes Serve, logs it, counts it in Options.Panics and Closes the
// connection.
package door

import (
	"context"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/sluice-storage/sluice/internal/listen"
)

// Conn is what a door's connection type provides to the registry. It is
// comparable: the registry keys its map by it (use a pointer type).
type Conn interface {
	comparable
	// Serve runs the connection until it ends. The registry calls it
	// once, on the connection's own goroutine, and forgets the
	// connection when it returns.
	Serve()
	// Drain asks for a graceful end: take no new work, finish and answer
	// what is in flight, then return from Serve. It must not block; it
	// may come before Serve has started and more than once.
	Drain()
	// Close ends the connection at once: in-flight work sees a cancelled
	// context and the transport is closed. It must not block; Serve
	// returns soon after.
	Close()
}

// Options configure a Server. The zero value is usable: no caps, the
// default logger.
type Options struct {
	// Name is the door's, the prefix of its log messages ("nbd").
	Name   string
	Logger *slog.Logger
	// PeerLog, if set, returns the logger for a peer's messages (a log
	// budget per peer, internal/logcap); default Logger.
	PeerLog func(peer string) *slog.Logger
	// MaxConns caps the accepted connections in all; 0: no cap.
	MaxConns int
	// MaxConnsPerPeer caps the accepted connections per peer; 0: no cap.
	MaxConnsPerPeer int
	// Panics, if set, counts the panics the registry recovers from Serve.
	Panics *atomic.Uint64
}

// Server is a door's listeners and live connections. Create it with New.
type Server[C Conn] struct {
	opt Options
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[C]entry
	accepted  int            // conns counted against the caps
	perPeer   map[string]int // accepted per peer
	shutdown  bool
	wg        sync.WaitGroup // every registered connection
}

// entry is what the registry knows of a connection.
type entry struct {
	peer  string // the peer counted against the caps; "" if not counted
	group *group // the Serve call that accepted it; nil for Start
}

// group is one Serve call's connections.
type group struct{ wg sync.WaitGroup }

// New returns a Server with no listener and no connection.
func New[C Conn](opts Options) *Server[C] {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server[C]{
		opt:       opts,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[C]entry),
		perPeer:   make(map[string]int),
	}
}

// Serve accepts connections on l and serves each with open's Conn, as
// the package doc says. It returns nil after Shutdown or when l is closed,
// and ctx.Err() after ctx ends, once this call's connections are gone.
func (s *Server[C]) Serve(ctx context.Context, l net.Listener, open func(ctx context.Context, nc net.Conn) (C, bool)) error {
	if !s.addListener(l) {
		l.Close()
		return nil
	}
	defer s.removeListener(l)

	connCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	g := &group{}
	defer func() {
		go func() {
			g.wg.Wait()
			cancel()
		}()
	}()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()

	var backoff listen.Backoff
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				// Hard stop: cancel requests, close connections, wait.
				cancel()
				s.closeWhere(g)
				g.wg.Wait()
				return ctx.Err()
			}
			if s.isShutdown() {
				return nil
			}
			if backoff.Retry(ctx, err, s.log, s.opt.Name) {
				continue // EMFILE and the like pass: never stop serving
			}
			return nil
		}
		backoff.Reset()
		s.accept(connCtx, g, nc, open)
	}
}

// accept admits nc under the caps, opens it and starts it.
func (s *Server[C]) accept(ctx context.Context, g *group, nc net.Conn, open func(context.Context, net.Conn) (C, bool)) {
	peer := listen.ClientKey(nc)
	if !s.admit(peer) {
		s.peerLog(peer).Warn(s.opt.Name+": connection refused: too many connections",
			"max_per_client", s.opt.MaxConnsPerPeer, "max", s.opt.MaxConns)
		nc.Close()
		return
	}
	c, ok := open(ctx, nc)
	if !ok {
		s.leave(peer)
		nc.Close()
		return
	}
	if !s.start(c, entry{peer: peer, group: g}) {
		c.Close()
	}
}

// Start registers c, a connection the door did not accept, and serves it
// on its own goroutine. It is not counted against the caps. It returns
// false, and c is not served, once Shutdown has begun.
func (s *Server[C]) Start(c C) bool { return s.start(c, entry{}) }

func (s *Server[C]) start(c C, e entry) bool {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		if e.peer != "" {
			s.leave(e.peer)
		}
		return false
	}
	s.conns[c] = e
	s.wg.Add(1)
	if e.group != nil {
		e.group.wg.Add(1)
	}
	s.mu.Unlock()
	go func() {
		defer s.remove(c)
		defer Recover(s.log, s.opt.Panics, s.opt.Name+": connection panic", c.Close)
		c.Serve()
	}()
	return true
}

func (s *Server[C]) remove(c C) {
	s.mu.Lock()
	e := s.conns[c]
	delete(s.conns, c)
	s.mu.Unlock()
	if e.peer != "" {
		s.leave(e.peer)
	}
	if e.group != nil {
		e.group.wg.Done()
	}
	s.wg.Done()
}

// admit counts a connection from peer; false: over a cap.
func (s *Server[C]) admit(peer string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opt.MaxConns > 0 && s.accepted >= s.opt.MaxConns ||
		s.opt.MaxConnsPerPeer > 0 && s.perPeer[peer] >= s.opt.MaxConnsPerPeer {
		return false
	}
	s.accepted++
	s.perPeer[peer]++
	return true
}

func (s *Server[C]) leave(peer string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accepted--
	if s.perPeer[peer]--; s.perPeer[peer] <= 0 {
		delete(s.perPeer, peer)
	}
}

func (s *Server[C]) peerLog(peer string) *slog.Logger {
	if s.opt.PeerLog != nil {
		return s.opt.PeerLog(peer)
	}
	return s.log
}

func (s *Server[C]) addListener(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server[C]) removeListener(l net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, l)
}

func (s *Server[C]) isShutdown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shutdown
}

// closeWhere Closes the connections accepted by g's Serve (nil: all).
func (s *Server[C]) closeWhere(g *group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c, e := range s.conns {
		if g == nil || e.group == g {
			c.Close()
		}
	}
}

// Shutdown stops accepting, asks every connection to drain and waits for
// all to end. If ctx ends first, it Closes the remaining connections,
// waits for them and returns ctx.Err(). It may be called more than once.
func (s *Server[C]) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Drain()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.closeWhere(nil)
		<-done
		return ctx.Err()
	}
}

// Len returns the number of live connections.
func (s *Server[C]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Conns returns the live connections, in no order.
func (s *Server[C]) Conns() []C {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]C, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Recover is the panic policy, deferred where a panic must not cross (it
// calls recover itself, so defer it directly): a panic is logged at ERROR
// as msg with its value and stack, counted in count (nil: not counted),
// and then is called (nil: nothing), e.g. to close the connection.
func Recover(log *slog.Logger, count *atomic.Uint64, msg string, then func()) {
	if p := recover(); p != nil {
		Panicked(log, count, msg, p)
		if then != nil {
			then()
		}
	}
}

// Panicked logs and counts a panic p that the caller recovered, as
// Recover does; args are logged before the panic and its stack.
func Panicked(log *slog.Logger, count *atomic.Uint64, msg string, p any, args ...any) {
	if count != nil {
		count.Add(1)
	}
	log.Error(msg, append(args, "panic", p, "stack", string(debug.Stack()))...)
}
