package fdholder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// holder is the holding process's state.
type holder struct {
	log *slog.Logger

	mu      sync.Mutex
	held    map[string]*heldFD
	clients int
	idle    chan struct{} // signalled when it may be time to exit
}

type heldFD struct {
	fd   int
	gone chan struct{} // closed when removed: its watcher ends
}

// Listen makes the holder's socket at path (mode 0600), removing a stale
// one: the caller has made sure no holder answers there (Dial failed).
func Listen(path string) (*net.UnixListener, error) {
	removeStale(path)
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("fdholder: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve holds fds for the clients of l until no client is connected and
// nothing is held (after the first client came, or firstWait passed
// without one), or ctx ends. It removes the socket's path when it
// returns. Held fds are closed when it returns.
func Serve(ctx context.Context, l *net.UnixListener, firstWait time.Duration, log *slog.Logger) error {
	h := &holder{log: log, held: map[string]*heldFD{}, idle: make(chan struct{}, 1)}
	path := l.Addr().String()
	l.SetUnlinkOnClose(true)
	defer l.Close()
	conns := make(chan *net.UnixConn)
	go func() {
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
		}
	}()
	first := time.NewTimer(firstWait)
	defer first.Stop()
	came := false
	for {
		select {
		case <-ctx.Done():
			h.closeAll()
			return ctx.Err()
		case c, ok := <-conns:
			if !ok {
				h.closeAll()
				return errors.New("fdholder: listener closed")
			}
			came = true
			h.mu.Lock()
			h.clients++
			h.mu.Unlock()
			go h.serveConn(c)
		case <-first.C:
			if !came && h.done() {
				log.Info("fd holder: no gateway came; exiting", "socket", path)
				return nil
			}
		case <-h.idle:
			if came && h.done() {
				log.Info("fd holder: nothing held and no gateway connected; exiting", "socket", path)
				return nil
			}
		}
	}
}

func (h *holder) done() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clients == 0 && len(h.held) == 0
}

func (h *holder) poke() {
	select {
	case h.idle <- struct{}{}:
	default:
	}
}

func (h *holder) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, e := range h.held {
		close(e.gone)
		unix.Close(e.fd)
		delete(h.held, name)
	}
}

func (h *holder) serveConn(c *net.UnixConn) {
	defer func() {
		c.Close()
		h.mu.Lock()
		h.clients--
		h.mu.Unlock()
		h.poke()
	}()
	for {
		var req request
		fds, err := recv(c, &req)
		if err != nil {
			if !errors.Is(err, errClosed) {
				h.log.Warn("fd holder: a client's request", "err", err)
			}
			return
		}
		if err := h.handle(c, req, fds); err != nil {
			h.log.Warn("fd holder: answering", "op", req.Op, "err", err)
			return
		}
	}
}

func (h *holder) handle(c *net.UnixConn, req request, fds []int) error {
	switch req.Op {
	case "put":
		if len(fds) != 1 || req.Name == "" {
			closeAll(fds)
			return send(c, reply{Error: "put wants a name and one fd"})
		}
		h.put(req.Name, fds[0])
		return send(c, reply{OK: true})
	case "remove":
		closeAll(fds)
		h.remove(req.Name)
		return send(c, reply{OK: true})
	case "list":
		closeAll(fds)
		return h.list(c)
	default:
		closeAll(fds)
		return send(c, reply{Error: fmt.Sprintf("unknown op %q", req.Op)})
	}
}

func (h *holder) put(name string, fd int) {
	e := &heldFD{fd: fd, gone: make(chan struct{})}
	h.mu.Lock()
	old := h.held[name]
	h.held[name] = e
	h.mu.Unlock()
	if old != nil {
		close(old.gone)
		unix.Close(old.fd)
	}
	go h.watch(name, e)
	h.log.Info("fd holder: holding", "name", name)
}

func (h *holder) remove(name string) {
	h.mu.Lock()
	e := h.held[name]
	delete(h.held, name)
	h.mu.Unlock()
	if e != nil {
		close(e.gone)
		unix.Close(e.fd)
		h.log.Info("fd holder: released", "name", name)
	}
	h.poke()
}

// watch drops a held fd that reports an error (a FUSE connection
// aborted or unmounted: poll returns POLLERR), checking once a second
// whether it was removed meanwhile. Events 0: a FUSE fd's requests
// (POLLIN) do not wake it.
func (h *holder) watch(name string, e *heldFD) {
	for {
		select {
		case <-e.gone:
			return
		default:
		}
		h.mu.Lock()
		if h.held[name] != e {
			h.mu.Unlock()
			return
		}
		fd := e.fd
		h.mu.Unlock()
		pfd := []unix.PollFd{{Fd: int32(fd), Events: 0}}
		n, err := unix.Poll(pfd, 1000)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if n > 0 && pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			h.mu.Lock()
			still := h.held[name] == e
			h.mu.Unlock()
			if still {
				h.log.Info("fd holder: a held fd's connection ended; dropping it", "name", name)
				h.remove(name)
			}
			return
		}
	}
}

func (h *holder) list(c *net.UnixConn) error {
	h.mu.Lock()
	type entry struct {
		name string
		fd   int
	}
	var es []entry
	for name, e := range h.held {
		// Duplicate under the lock: a remove cannot close it meanwhile.
		nfd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			continue
		}
		es = append(es, entry{name, nfd})
	}
	h.mu.Unlock()
	defer func() {
		for _, e := range es {
			unix.Close(e.fd)
		}
	}()
	if err := send(c, reply{OK: true, Count: len(es)}); err != nil {
		return err
	}
	for _, e := range es {
		if err := send(c, reply{OK: true, Name: e.name}, e.fd); err != nil {
			return err
		}
	}
	return nil
}
