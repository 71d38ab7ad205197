package shim

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"sort"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/listen"
	"github.com/sluice-storage/sluice/internal/waiter"
)

// Mounts are the gateway's own FUSE mounts, as the shim checks a file it
// is handed against them (the FUSE door's Manager, adapted by the gateway
// command).
type Mounts interface {
	// ByDevice returns the fs mount whose device number is dev.
	ByDevice(dev uint64) (Mount, bool)
}

// Mount is one live fs mount. Its files' inode numbers are the volume's
// (the FUSE door's node IDs are the engine's inodes).
type Mount struct {
	Dir      string
	Volume   *gateway.Volume
	ReadOnly bool
	// Renames counts renames and links through the mount; a handle looks
	// its file's path up again when it moves. nil: never.
	Renames func() uint64
	// Settle returns once the mount's kernel caches have dropped what
	// changes made so far made stale. nil: nothing to wait for.
	Settle func()
	// PageCached says whether the kernel may hold pages of inode ino
	// that a process read or wrote through the mount. A shim write to
	// such a file waits (Settle) until the kernel has dropped the pages
	// it made stale, so a read through the kernel never sees old bytes;
	// and the shim's read-only buffered fds read through the kernel
	// (regCached). nil: the shim serves every read itself.
	PageCached func(ino uint64) bool
}

// Options configure a Server. The zero value is usable.
type Options struct {
	Logger *slog.Logger
	// MaxChannels caps the client processes served at once (default 1024).
	MaxChannels int
	// MaxHandles caps the fds one channel may register (default 65536).
	MaxHandles int
	// Wait is how a channel's poller waits for requests (internal/waiter;
	// the zero value is the adaptive mode the virtio door uses). Unless
	// Wait.Spinners is set, at most GOMAXPROCS/2 (at least 1) of the
	// server's pollers spin at once: a poller per client process (a
	// PostgreSQL server has one per backend) would otherwise spin on
	// every core the requests need.
	Wait waiter.Options
	// InlineBelow: a request runs on the channel's poller while requests
	// of its class (reads, writes, syncs) have averaged less than this in
	// Volume.Do, otherwise on its own goroutine (default 20 µs, as the
	// virtio door; negative: always its own goroutine). A request alone
	// on an idle channel runs inline under 10x this.
	InlineBelow time.Duration
}

const (
	defaultMaxChannels = 1024
	defaultMaxHandles  = 65536
	defaultInlineBelow = 20 * time.Microsecond
	// idleInline: a request alone on an idle channel runs inline while
	// its class averages under idleInline x InlineBelow (channel.start).
	idleInline = 10
)

// Server is the shim door: a socket and the channels of the processes
// that connected to it.
type Server struct {
	mounts Mounts
	opt    Options
	log    *slog.Logger
	door   *door.Server[*channel]
	ids    atomic.Uint32
	stats  counters
	waits  waiter.Counters // every channel poller's
	lens   lengths         // the length tables' watches (lengths.go)
}

// NewServer returns a Server that serves files of mounts.
func NewServer(mounts Mounts, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxChannels <= 0 {
		opts.MaxChannels = defaultMaxChannels
	}
	if opts.MaxHandles <= 0 {
		opts.MaxHandles = defaultMaxHandles
	}
	if opts.InlineBelow == 0 {
		opts.InlineBelow = defaultInlineBelow
	}
	if opts.Wait.Spinners == nil {
		opts.Wait.Spinners = waiter.NewSpinners(runtime.GOMAXPROCS(0) / 2)
	}
	s := &Server{mounts: mounts, opt: opts, log: opts.Logger}
	s.door = door.New[*channel](door.Options{Name: "shim", Logger: opts.Logger, MaxConns: opts.MaxChannels, Panics: &s.stats.panics})
	return s
}

// Listen creates the door's socket at path (SOCK_SEQPACKET), mode 0666:
// any local user may connect, because access is proven per file (the fd
// a client hands over), never by reaching the socket. It binds a
// temporary name and renames it into place, so the path never names a
// socket nobody listens on.
func Listen(path string) (*net.UnixListener, error) {
	return listen.Unix("unixpacket", path, 0o666)
}

// Serve accepts clients on l until Shutdown, l is closed, or ctx ends
// (internal/door's rules).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	return s.door.Serve(ctx, l, func(ctx context.Context, nc net.Conn) (*channel, bool) {
		uc, ok := nc.(*net.UnixConn)
		if !ok {
			s.log.Warn("shim: refusing a connection that is not a unix socket")
			return nil, false
		}
		return newChannel(ctx, s, uc), true
	})
}

// Shutdown stops accepting, lets every channel finish the requests in
// flight (new ones are answered "fall back") and closes them; after ctx
// ends it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error { return s.door.Shutdown(ctx) }

// ChannelInfo describes one client process's channel.
type ChannelInfo struct {
	ID       uint32 `json:"id"`
	PID      int32  `json:"pid"`
	UID      uint32 `json:"uid"`
	Slots    int    `json:"slots"`
	SlotData int    `json:"slot_data"`
	Handles  int    `json:"handles"`
	Requests uint64 `json:"requests"`
}

// Channels lists the live channels by id.
func (s *Server) Channels() []ChannelInfo {
	var out []ChannelInfo
	for _, c := range s.door.Conns() {
		if info, ok := c.info(); ok {
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// counters are the door's, read by the Prometheus collector and Stats.
type counters struct {
	opened     atomic.Uint64
	requests   [numOpCodes]atomic.Uint64
	failed     [numOpCodes]atomic.Uint64 // answered with an errno
	refused    [numReasons]atomic.Uint64 // registrations refused, by reason
	fallbacks  [numReasons]atomic.Uint64 // requests answered "fall back", by reason
	registered atomic.Uint64
	handles    atomic.Int64
	bad        atomic.Uint64 // requests or messages that broke the protocol
	panics     atomic.Uint64
	inline     atomic.Uint64 // requests run on their channel's poller
}

// Stats is a snapshot of the door's counters.
type Stats struct {
	Channels        int               `json:"channels"`
	ChannelsOpened  uint64            `json:"channels_opened"`
	Handles         int64             `json:"handles"`
	Registrations   uint64            `json:"registrations"`
	Requests        map[string]uint64 `json:"requests"`
	Errors          map[string]uint64 `json:"errors"`
	Refused         map[string]uint64 `json:"refused"`
	Fallbacks       map[string]uint64 `json:"fallbacks"`
	ProtocolErrors  uint64            `json:"protocol_errors"`
	RecoveredPanics uint64            `json:"recovered_panics"`
}

// Stats returns the door's counters (maps hold the non-zero entries).
func (s *Server) Stats() Stats {
	c := &s.stats
	st := Stats{
		Channels: s.door.Len(), ChannelsOpened: c.opened.Load(), Handles: c.handles.Load(), Registrations: c.registered.Load(),
		Requests: map[string]uint64{}, Errors: map[string]uint64{}, Refused: map[string]uint64{}, Fallbacks: map[string]uint64{},
		ProtocolErrors: c.bad.Load(), RecoveredPanics: c.panics.Load(),
	}
	for op := uint32(1); op < numOpCodes; op++ {
		if n := c.requests[op].Load(); n != 0 {
			st.Requests[opName(op)] = n
		}
		if n := c.failed[op].Load(); n != 0 {
			st.Errors[opName(op)] = n
		}
	}
	for r := uint32(1); r < numReasons; r++ {
		if n := c.refused[r].Load(); n != 0 {
			st.Refused[ReasonName(r)] = n
		}
		if n := c.fallbacks[r].Load(); n != 0 {
			st.Fallbacks[ReasonName(r)] = n
		}
	}
	return st
}
