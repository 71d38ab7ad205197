package virtio

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

// Exports keeps a gateway's vhost-user-blk exports: at most one socket per
// volume, each served by its own Server. Sockets live in a directory of the
// gateway (mode 0700) unless a path is given; they are mode 0600 and
// removed on Unexport and Close. The exports themselves are remembered in
// that directory (RememberedFile, written at each Export and Unexport):
// the next gateway on the data directory serves them again at start
// (Restore), so that a front-end that reconnects after a crash or a stop
// (QEMU's vhost-user chardev with reconnect=N) finds its socket without an
// operator. A planned handover passes the sockets themselves (HandOver,
// Adopt).
type Exports struct {
	g    *gateway.Gateway
	dir  string
	log  *slog.Logger
	opts ServerOptions

	mu     sync.Mutex
	byRef  map[string]*export
	closed bool

	saveMu sync.Mutex // orders writes of RememberedFile
}

type export struct {
	info   ExportInfo
	l      *net.UnixListener
	srv    *Server
	cancel context.CancelFunc
	done   chan struct{}
}

// ExportInfo describes one export.
type ExportInfo struct {
	Volume string `json:"volume"`
	Socket string `json:"socket"`
}

// NewExports returns an empty registry whose default sockets live in dir.
func NewExports(g *gateway.Gateway, dir string, opts ServerOptions) (*Exports, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("virtio socket directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Exports{g: g, dir: dir, log: log, opts: opts, byRef: make(map[string]*export)}, nil
}

// DefaultSocket is where volume ref is exported when no path is given.
func (e *Exports) DefaultSocket(ref string) string {
	return filepath.Join(e.dir, gateway.RefFileName(ref)+".sock")
}

// Export serves block volume ref on socket ("" for the default path) and
// remembers it for the next start. Exporting a volume again where it is
// exported (or with no path) returns the export as it is; at another path
// it is refused (ErrExists).
func (e *Exports) Export(ctx context.Context, ref, socket string) (ExportInfo, error) {
	x, fresh, err := e.serve(ref, socket, nil)
	if err != nil {
		return ExportInfo{}, err
	}
	if fresh {
		if err := e.remember(); err != nil {
			e.log.Warn("virtio export not remembered: it will not be served again after a restart", "volume", ref, "err", err)
		}
	}
	return x.info, nil
}

// Adopt serves block volume ref on a listening socket bound to socket
// that another process handed over (HandOver there), and the connections
// it handed over with it: the same socket, so front-ends queued in its
// backlog or connecting to the path reach this process, and the same
// connections, so their front-ends see a pause. f is the socket; Adopt
// closes it and takes the connections' fds. It returns how many
// connections were adopted; one that cannot be is closed and logged.
func (e *Exports) Adopt(ref, socket string, f *os.File, conns []HandedConn) (int, error) {
	nl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		closeConns(conns)
		return 0, fmt.Errorf("adopt virtio socket %s: %w", socket, err)
	}
	l, ok := nl.(*net.UnixListener)
	if !ok {
		nl.Close()
		closeConns(conns)
		return 0, fmt.Errorf("adopt virtio socket %s: not a unix socket", socket)
	}
	l.SetUnlinkOnClose(true)
	x, _, err := e.serve(ref, socket, l)
	if err != nil {
		l.SetUnlinkOnClose(false) // the path is not ours to remove: the old process's clients may still use it
		l.Close()
		closeConns(conns)
		return 0, err
	}
	n := 0
	for _, c := range conns {
		if err := x.srv.Adopt(c.State, c.FDs); err != nil {
			e.log.Warn("virtio: a handed-over connection could not be adopted; closed", "volume", ref, "err", err)
			continue
		}
		n++
	}
	return n, nil
}

func closeConns(conns []HandedConn) {
	for _, c := range conns {
		c.Close()
	}
}

// serve exports ref on l, or on a new socket at socket when l is nil. An
// export of ref already at socket (or anywhere, socket "") is returned,
// not fresh, when l is nil.
func (e *Exports) serve(ref, socket string, l *net.UnixListener) (x *export, fresh bool, err error) {
	vol, err := e.g.Volume(ref)
	if err != nil {
		return nil, false, err
	}
	if vol.Kind() != gateway.KindBlock {
		return nil, false, fmt.Errorf("%s is an fs volume: %w: only block volumes are virtio-blk devices", ref, gateway.ErrInvalid)
	}
	anywhere := socket == ""
	if anywhere {
		socket = e.DefaultSocket(ref)
	}
	if socket, err = filepath.Abs(socket); err != nil {
		return nil, false, fmt.Errorf("socket path: %w", gateway.ErrInvalid)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, false, gateway.ErrClosed
	}
	if x := e.byRef[ref]; x != nil {
		if l == nil && (anywhere || x.info.Socket == socket) {
			return x, false, nil
		}
		return nil, false, fmt.Errorf("%s is already exported at %s: %w", ref, x.info.Socket, gateway.ErrExists)
	}
	for _, x := range e.byRef {
		if x.info.Socket == socket {
			return nil, false, fmt.Errorf("socket %s serves %s: %w", socket, x.info.Volume, gateway.ErrExists)
		}
	}
	if l == nil {
		if l, err = Listen(socket); err != nil {
			return nil, false, fmt.Errorf("%w: %w", gateway.ErrInvalid, err)
		}
	}
	opts := e.opts
	opts.Logger = e.log.With("volume", ref)
	tenant := vol.Info().Tenant
	opts.Allow = func(uid int) bool { return e.g.MayUse(uid, tenant) }
	srv := NewServer(vol, opts)
	sctx, cancel := context.WithCancel(context.Background())
	x = &export{info: ExportInfo{Volume: ref, Socket: socket}, l: l, srv: srv, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(x.done)
		if err := srv.Serve(sctx, l); err != nil && sctx.Err() == nil {
			e.log.Error("virtio export stopped", "volume", ref, "socket", socket, "err", err)
		}
	}()
	e.byRef[ref] = x
	e.log.Info("virtio export", "volume", ref, "socket", socket)
	return x, true, nil
}

// HandedExport is an export stopped for a handover: its listening socket
// (a duplicate, still bound to Socket, which is left in place) for the
// new process's Adopt.
type HandedExport struct {
	ExportInfo
	File  *os.File
	Conns []HandedConn // its connections, stopped (Server.ShutdownHandover)
}

// HandOver stops every export for a planned handover (the registry is
// closed, as by Close): each keeps its listening socket, bound and with
// its path, and returns it with its connections, stopped at a message
// boundary with their rings drained (Server.ShutdownHandover). An export
// whose socket cannot be duplicated is stopped as by Close.
func (e *Exports) HandOver(ctx context.Context) []HandedExport {
	e.mu.Lock()
	e.closed = true
	xs := make([]*export, 0, len(e.byRef))
	for ref, x := range e.byRef {
		xs = append(xs, x)
		delete(e.byRef, ref)
	}
	e.mu.Unlock()
	var out []HandedExport
	for _, x := range xs {
		f, err := x.l.File()
		if err != nil {
			e.log.Warn("virtio export not handed over: its socket", "volume", x.info.Volume, "err", err)
			e.stop(ctx, x)
			continue
		}
		x.l.SetUnlinkOnClose(false)
		conns := e.stopKeep(ctx, x, true)
		out = append(out, HandedExport{ExportInfo: x.info, File: f, Conns: conns})
	}
	return out
}

// Unexport stops serving ref: connected front-ends are disconnected after
// their in-flight requests finish, and the socket is removed.
func (e *Exports) Unexport(ctx context.Context, ref string) error {
	e.mu.Lock()
	x := e.byRef[ref]
	delete(e.byRef, ref)
	e.mu.Unlock()
	if x == nil {
		return fmt.Errorf("%s is not exported over virtio: %w", ref, gateway.ErrNotFound)
	}
	e.stop(ctx, x)
	e.log.Info("virtio unexport", "volume", ref)
	if err := e.remember(); err != nil {
		e.log.Warn("virtio unexport not remembered: the next start serves the volume again", "volume", ref, "err", err)
	}
	return nil
}

func (e *Exports) stop(ctx context.Context, x *export) { e.stopKeep(ctx, x, false) }

// stopKeep stops x; handover leaves its path in place and returns its
// connections stopped for the next process.
func (e *Exports) stopKeep(ctx context.Context, x *export, handover bool) []HandedConn {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var conns []HandedConn
	var err error
	if handover {
		conns, err = x.srv.ShutdownHandover(sctx)
	} else {
		err = x.srv.Shutdown(sctx)
	}
	if err != nil {
		e.log.Warn("virtio shutdown incomplete", "volume", x.info.Volume, "err", err)
	}
	x.cancel()
	<-x.done
	if !handover {
		os.Remove(x.info.Socket)
	}
	st := x.srv.Stats()
	e.log.Info("virtio export stopped", "volume", x.info.Volume, "wakeups", st.Wait.Wakeups, "blocks", st.Wait.Blocks,
		"naps", st.Wait.Naps, "contended", st.Wait.Contended, "rejected_chains", st.RejectedChains, "broken_rings", st.BrokenRings, "panics", st.Panics,
		"handed_conns", len(conns))
	return conns
}

// List returns the exports by volume.
func (e *Exports) List() []ExportInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]ExportInfo, 0, len(e.byRef))
	for _, x := range e.byRef {
		out = append(out, x.info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume < out[j].Volume })
	return out
}

// Close stops every export (gateway shutdown).
func (e *Exports) Close(ctx context.Context) {
	e.mu.Lock()
	e.closed = true
	xs := make([]*export, 0, len(e.byRef))
	for ref, x := range e.byRef {
		xs = append(xs, x)
		delete(e.byRef, ref)
	}
	e.mu.Unlock()
	for _, x := range xs {
		e.stop(ctx, x)
	}
}
