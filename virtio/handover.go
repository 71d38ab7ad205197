package virtio

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/handover"
)

// Planned handover of vhost-user connections (`sluice gateway --takeover`,
// docs/HANDOVER.md). The old process stops each connection at a message
// boundary and each ring after its in-flight requests completed, and
// hands over the socket, the memory and inflight regions' fds, the
// eventfds and what the front-end set up (handover.VirtioConn); the new
// process sets the same up again (Adopt) and serves on. The front-end
// sees nothing but a pause: no reconnect, no message.

// HandedConn is a connection stopped for a handover: its state and its
// fds, in the order handover.VirtioConn says. The fds are the caller's
// (Close them once sent).
type HandedConn struct {
	State handover.VirtioConn
	FDs   []int
}

// Close closes the fds.
func (h HandedConn) Close() { closeAll(h.FDs) }

// ShutdownHandover is Shutdown for a planned handover: each connection
// stops reading at a message boundary (answering the message it is in the
// middle of), its rings stop once their in-flight requests completed and
// were published, and it is returned instead of closed. A connection that
// cannot be (a duplicate fd fails) is closed as by Shutdown: its front-end
// reconnects if it can.
func (s *Server) ShutdownHandover(ctx context.Context) ([]HandedConn, error) {
	s.handover.Store(true)
	err := s.door.Shutdown(ctx)
	s.handedMu.Lock()
	defer s.handedMu.Unlock()
	out := s.handed
	s.handed = nil
	return out, err
}

func dupFd(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }

// handOver stops every ring and records the connection for
// ShutdownHandover. Serve's close then releases this process's copies.
func (b *backend) handOver() {
	b.stopAll()
	h, err := b.capture()
	if err != nil {
		closeAll(h.FDs)
		b.log.Warn("virtio: connection not handed over; closed", "err", err)
		return
	}
	b.s.handedMu.Lock()
	b.s.handed = append(b.s.handed, h)
	b.s.handedMu.Unlock()
	b.log.Info("virtio: connection stopped for a handover", "regions", len(h.State.Regions), "rings", len(h.State.Rings))
}

// capture duplicates the connection's fds and describes its setup. On an
// error the fds duplicated so far are in the result, for the caller to
// close.
func (b *backend) capture() (HandedConn, error) {
	h := HandedConn{State: handover.VirtioConn{Features: b.features, ProtocolFeatures: b.protoFeatures}}
	add := func(fd int) error {
		d, err := dupFd(fd)
		if err != nil {
			return fmt.Errorf("virtio: duplicate fd for a handover: %w", err)
		}
		h.FDs = append(h.FDs, d)
		return nil
	}
	rc, err := b.conn.SyscallConn()
	if err != nil {
		return h, err
	}
	var derr error
	if err := rc.Control(func(fd uintptr) { derr = add(int(fd)) }); err != nil || derr != nil {
		return h, errors.Join(err, derr)
	}
	if b.mem != nil {
		for _, r := range b.mem.regions {
			if err := add(r.fd); err != nil {
				return h, err
			}
			h.State.Regions = append(h.State.Regions, handover.VirtioRegion{GPA: r.GPA, Size: r.Size, UVA: r.UVA, MmapOffset: r.MmapOffset})
		}
	}
	if r := b.inflight; r != nil {
		if err := add(r.fd); err != nil {
			return h, err
		}
		h.State.Inflight = &handover.VirtioInflight{MmapSize: uint64(len(r.data)), MmapOffset: r.offset,
			NumQueues: uint16(r.numQueues), QueueSize: uint16(r.queueSize)}
	}
	for _, v := range b.rings {
		rs := handover.VirtioRing{Index: v.index, Num: v.num, AddrSet: v.addrSet, AddrFlags: v.addr.Flags,
			Desc: v.addr.Desc, Used: v.addr.Used, Avail: v.addr.Avail, Log: v.addr.Log, Base: v.base,
			Started: v.started, Enabled: v.enabled, KickNoFd: v.kickNoFd}
		if v.kickFd >= 0 {
			if err := add(v.kickFd); err != nil {
				return h, err
			}
			rs.Kick = true
		}
		for _, n := range []struct {
			n   *notifier
			has *bool
		}{{&v.call, &rs.Call}, {&v.errN, &rs.Err}} {
			n.n.mu.Lock()
			fd := n.n.fd
			var err error
			if fd >= 0 {
				err = add(fd)
				*n.has = err == nil
			}
			n.n.mu.Unlock()
			if err != nil {
				return h, err
			}
		}
		h.State.Rings = append(h.State.Rings, rs)
	}
	return h, nil
}

// Adopt serves a connection another server handed over
// (ShutdownHandover there): it maps the front-end's memory and inflight
// region again, sets up every ring as it was and starts those that ran
// (each at the position the old server stopped it, with a call signalled
// in case one was lost), then reads the front-end's messages. It takes
// the fds (closed on error). The peer is authorized again.
func (s *Server) Adopt(st handover.VirtioConn, fds []int) error {
	if len(fds) != st.FDs() || len(fds) == 0 {
		closeAll(fds)
		return fmt.Errorf("virtio: adopt: %d fds, the state needs %d", len(fds), st.FDs())
	}
	f := os.NewFile(uintptr(fds[0]), "vhost-user")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		closeAll(fds[1:])
		return fmt.Errorf("virtio: adopt: %w", err)
	}
	c, ok := nc.(*net.UnixConn)
	if !ok || !s.allowed(c) {
		nc.Close()
		closeAll(fds[1:])
		return errors.New("virtio: adopt: not a unix socket, or its peer may not use the export")
	}
	b := newBackend(context.Background(), s, c)
	if err := b.restore(st, fds[1:]); err != nil {
		b.close()
		return fmt.Errorf("virtio: adopt: %w", err)
	}
	if !s.door.Start(b) {
		b.close()
		return fmt.Errorf("virtio: adopt: server is shutting down: %w", gateway.ErrClosed)
	}
	return nil
}

// restore sets the backend up from st, taking fds (those it does not keep
// are closed, also on error).
func (b *backend) restore(st handover.VirtioConn, fds []int) error {
	i := 0
	next := func() int { i++; return fds[i-1] }
	defer func() { closeAll(fds[i:]) }()
	b.features = st.Features & b.offeredFeatures()
	b.protoFeatures = st.ProtocolFeatures & offeredProtocolFeatures
	for _, r := range st.Regions {
		fd := next()
		mapped, err := mapRegion(memRegion{GPA: r.GPA, Size: r.Size, UVA: r.UVA, MmapOffset: r.MmapOffset}, fd)
		unix.Close(fd)
		if err != nil {
			return err
		}
		m, err := b.mem.with(mapped)
		if err != nil {
			mapped.unmap()
			return err
		}
		b.mem = m
	}
	if in := st.Inflight; in != nil {
		msg := inflightMsg{MmapSize: in.MmapSize, MmapOffset: in.MmapOffset, NumQueues: in.NumQueues, QueueSize: in.QueueSize}
		fd := next()
		if err := checkInflightShape(msg, len(b.rings)); err != nil {
			unix.Close(fd)
			return err
		}
		r, err := mapInflightRegion(msg, fd)
		if err != nil {
			return err
		}
		b.inflight = r
	}
	for _, rs := range st.Rings {
		if rs.Index < 0 || rs.Index >= len(b.rings) {
			return fmt.Errorf("ring %d (have %d)", rs.Index, len(b.rings))
		}
		if rs.Num < 0 || rs.Num > maxQueueSize || rs.Num&(rs.Num-1) != 0 {
			return fmt.Errorf("ring %d of %d entries", rs.Index, rs.Num)
		}
		v := b.rings[rs.Index]
		v.num, v.addrSet, v.base, v.started, v.enabled, v.kickNoFd = rs.Num, rs.AddrSet, rs.Base, rs.Started, rs.Enabled, rs.KickNoFd
		v.addr = vringAddr{Index: uint32(rs.Index), Flags: rs.AddrFlags, Desc: rs.Desc, Used: rs.Used, Avail: rs.Avail, Log: rs.Log}
		if rs.Kick {
			v.kickFd = next()
		}
		if rs.Call {
			v.call.set(next())
		}
		if rs.Err {
			v.errN.set(next())
		}
	}
	if err := b.reconcileAll(); err != nil {
		return err
	}
	for _, v := range b.rings {
		if v.run != nil {
			v.call.signal()
		}
	}
	return nil
}
