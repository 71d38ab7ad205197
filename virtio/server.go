package virtio

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/bufpool"
	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/listen"
	"github.com/sluice-storage/sluice/internal/logcap"
	"github.com/sluice-storage/sluice/internal/waiter"
)

// Export is one volume as the vhost-user-blk target sees it.
// *gateway.Volume satisfies it.
//
// An Export may also implement interface{ ReadOnly() bool }; when it reports
// true the device is offered read-only (VIRTIO_BLK_F_RO).
type Export interface {
	Size() int64
	// Do runs one request. The server sets req.Door to ServerOptions.Door
	// (gateway.DoorVirtio by default). req.Buf may point into the
	// front-end's shared memory: Do must not keep it after returning.
	Do(ctx context.Context, req *gateway.Request) error
}

// ServerOptions configure a Server. The zero value is usable.
type ServerOptions struct {
	ReadOnly bool // offer the device read-only whatever the export says
	// Queues is the number of request queues offered (GET_QUEUE_NUM and
	// num_queues); default 4, at most 64.
	Queues int
	// BlockSize is the logical block size in the config space (blk_size);
	// default 512; a power of two from 512 to 64 KiB.
	BlockSize int
	// Serial is the GET_ID answer, at most 20 bytes; default "sluice".
	Serial string
	// Wait tunes how each queue's poller waits for kicks.
	Wait WaitOptions
	// Allow, if set, decides by the connecting process's uid (SO_PEERCRED)
	// whether it may use the export; a refused connection is closed.
	Allow func(uid int) bool
	// InlineBelow: a request runs on the queue's poller goroutine while
	// requests of its kind average less than this in Export.Do; otherwise
	// it runs on its own goroutine so a slow export sees the full queue
	// depth. Default 20 µs; negative: never inline.
	InlineBelow time.Duration
	// Door labels requests (default gateway.DoorVirtio).
	Door   gateway.Door
	Logger *slog.Logger
}

// Defaults and limits of the target.
const (
	defaultQueues      = 4
	defaultBlockSize   = 512
	defaultSerial      = "sluice"
	defaultInlineBelow = 20 * time.Microsecond
	// serverSegMax is seg_max in the config: data segments per request.
	// Chains may be seg_max+2 long (header and status) even when that is
	// more than the queue size (Linux with indirect descriptors).
	serverSegMax = 126
	// maxRequestBytes bounds one IN/OUT request's data (bounce buffers).
	maxRequestBytes = 32 << 20
	// Discard/write-zeroes limits in the config space.
	maxDiscardSectors = 1 << 22 // 2 GiB per segment
	maxDiscardSegs    = 32
)

// Server serves one Export as a vhost-user-blk back-end on unix sockets.
// Create it with NewServer.
type Server struct {
	exp      Export
	opt      ServerOptions
	readOnly bool
	log      *slog.Logger
	clients  *logcap.Clients // log budgets per client (peer uid)
	bufs     bufpool.Pool
	door     *door.Server[*backend] // listeners and live connections

	brokenRings    atomic.Uint64   // rings stopped for a protocol violation or a fault
	waits          waiter.Counters // every ring poller's, over the server's life
	rejectedChains atomic.Uint64   // requests failed for a bad descriptor chain or header
	panics         atomic.Uint64   // requests and connections that panicked

	handover atomic.Bool // ShutdownHandover: connections stop for the next process
	handedMu sync.Mutex
	handed   []HandedConn
}

// ServerStats are counters of misbehaving front-ends and of the ring
// pollers' waiting.
type ServerStats struct {
	BrokenRings    uint64 // rings stopped for a ring-protocol violation or a memory fault
	RejectedChains uint64 // requests failed for a bad descriptor chain or header
	// Panics counts requests that panicked here, in the export (a
	// *gateway.Volume recovers panics in Do and counts them itself) or in
	// this package, each failed with IOERR (see the package doc), and
	// connections whose message loop panicked, each closed.
	Panics uint64
	Wait   WaitStats
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{BrokenRings: s.brokenRings.Load(), RejectedChains: s.rejectedChains.Load(),
		Panics: s.panics.Load(), Wait: s.waits.Stats()}
}

// NewServer returns a server for exp. It does not listen; call Serve.
func NewServer(exp Export, opts ServerOptions) *Server {
	if opts.Queues <= 0 {
		opts.Queues = defaultQueues
	}
	opts.Queues = min(opts.Queues, vhostUserMaxQueues)
	if opts.BlockSize < defaultBlockSize || opts.BlockSize > 64<<10 || opts.BlockSize&(opts.BlockSize-1) != 0 {
		opts.BlockSize = defaultBlockSize
	}
	if opts.Serial == "" {
		opts.Serial = defaultSerial
	}
	if len(opts.Serial) > virtioBlkDeviceIDSize {
		opts.Serial = opts.Serial[:virtioBlkDeviceIDSize]
	}
	if opts.InlineBelow == 0 {
		opts.InlineBelow = defaultInlineBelow
	}
	if opts.Door == gateway.DoorInternal {
		opts.Door = gateway.DoorVirtio
	}
	opts.Wait = opts.Wait.WithDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ro := opts.ReadOnly
	if r, ok := exp.(interface{ ReadOnly() bool }); ok && r.ReadOnly() {
		ro = true
	}
	s := &Server{exp: exp, opt: opts, readOnly: ro, log: log, clients: logcap.NewClients(log, 0, 0)}
	s.door = door.New[*backend](door.Options{Name: "virtio", Logger: log, PeerLog: s.clients.For, Panics: &s.panics})
	return s
}

// Listen creates a unix socket at path with mode 0600. A stale socket left
// by a dead process is removed; a live one (something accepts on it) is an
// error. Put the socket in a directory only the gateway's user can enter:
// the mode is set right after bind.
func Listen(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("virtio: %s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("virtio: %s: %w", path, syscall.EADDRINUSE)
		}
		if rerr := os.Remove(path); rerr != nil {
			return nil, fmt.Errorf("virtio: remove stale socket: %w", rerr)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("virtio: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("virtio: chmod socket: %w", err)
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// ListenAndServe is Listen followed by Serve.
func (s *Server) ListenAndServe(ctx context.Context, path string) error {
	l, err := Listen(path)
	if err != nil {
		return err
	}
	return s.Serve(ctx, l)
}

// Serve accepts front-ends on l until l is closed, Shutdown is called or ctx
// is done, and serves each on its own goroutine. When ctx is done it closes
// l and every connection it accepted (in-flight requests see a cancelled
// context) and waits for them. It returns nil after Shutdown or when l is
// closed, and ctx.Err() after ctx is done. Failed accepts that pass
// (EMFILE) are retried (internal/door).
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	return s.door.Serve(ctx, l, func(ctx context.Context, nc net.Conn) (*backend, bool) {
		c, ok := nc.(*net.UnixConn)
		if !ok || !s.allowed(c) {
			return nil, false
		}
		return newBackend(ctx, s, c), true
	})
}

// Shutdown stops accepting, stops every queue (waiting for the requests
// being served to complete and be published in the used rings) and closes
// every connection. If ctx ends first, the requests' contexts are cancelled
// and ctx.Err() is returned once everything is closed.
func (s *Server) Shutdown(ctx context.Context) error { return s.door.Shutdown(ctx) }

// allowed asks ServerOptions.Allow about the peer of c.
func (s *Server) allowed(c *net.UnixConn) bool {
	if s.opt.Allow == nil {
		return true
	}
	uid := -1
	if cred, ok := listen.PeerCred(c); ok {
		uid = int(cred.Uid)
	}
	if s.opt.Allow(uid) {
		return true
	}
	s.clients.For(listen.ClientKey(c)).Warn("virtio: connection refused: this user may not use the export's tenant", "uid", uid)
	return false
}
