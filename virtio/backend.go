package virtio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/listen"
)

// backend is one front-end connection to the target: the vhost-user state
// machine. Only its serve goroutine touches the state; ring runners get an
// immutable view (ring memory, guest memory, options) when started.
type backend struct {
	s      *Server
	conn   *net.UnixConn
	mc     *msgConn
	ctx    context.Context // requests' context; cancelled by Close
	cancel context.CancelFunc
	log    *slog.Logger

	features      uint64 // acked by SET_FEATURES
	protoFeatures uint64 // acked by SET_PROTOCOL_FEATURES
	mem           *guestMemory
	rings         []*vring
	inflight      *inflightRegion // SET_INFLIGHT_FD's (or GET's) region; nil before
	replyFds      []int           // fds to send with the next reply (GET_INFLIGHT_FD)
}

// vring is one queue's configuration as the front-end set it.
type vring struct {
	index    int
	num      int
	addr     vringAddr
	addrSet  bool
	base     uint16
	kickFd   int
	kickNoFd bool
	started  bool // a kick fd (or "no fd") arrived since the last GET_VRING_BASE
	enabled  bool // SET_VRING_ENABLE
	call     notifier
	errN     notifier
	run      *runner
}

// notifier is an eventfd the runner writes (call, err) and the connection
// may replace at any time.
type notifier struct {
	mu sync.Mutex
	fd int
}

func (n *notifier) signal() {
	n.mu.Lock()
	signalFd(n.fd)
	n.mu.Unlock()
}

// set replaces the fd (-1: none) and closes the old one.
func (n *notifier) set(fd int) {
	n.mu.Lock()
	old := n.fd
	n.fd = fd
	n.mu.Unlock()
	if old >= 0 {
		unix.Close(old)
	}
}

// newBackend returns the backend of c; parent is the context of its
// requests (door.Server.Serve's connection context).
func newBackend(parent context.Context, s *Server, c *net.UnixConn) *backend {
	ctx, cancel := context.WithCancel(parent)
	b := &backend{
		s: s, conn: c, mc: newMsgConn(c), ctx: ctx, cancel: cancel,
		log:   s.clients.For(listen.ClientKey(c)).With("door", "virtio", "conn", fmt.Sprintf("%p", c)),
		rings: make([]*vring, s.opt.Queues),
	}
	for i := range b.rings {
		b.rings[i] = &vring{index: i, kickFd: -1, call: notifier{fd: -1}, errN: notifier{fd: -1}}
	}
	return b
}

// Drain stops reading messages (door.Conn); Serve then stops the rings
// (draining in-flight requests) and closes. For a handover
// (Server.ShutdownHandover) the reader is woken by a deadline instead, so
// the socket stays whole for the next process: it stops at the next
// message boundary (finishing a message it is in the middle of).
func (b *backend) Drain() {
	if b.s.handover.Load() {
		b.conn.SetReadDeadline(time.Now())
		return
	}
	b.conn.CloseRead()
}

// Close cancels in-flight requests and closes the connection (door.Conn).
func (b *backend) Close() {
	b.cancel()
	b.conn.Close()
}

func (b *backend) acked(feature uint) bool { return b.features&bit(feature) != 0 }

func (b *backend) protoAcked(feature uint) bool { return b.protoFeatures&bit(feature) != 0 }

// Serve reads and handles messages until the front-end goes away or a
// protocol error; then it stops every ring and releases everything
// (door.Conn). A panic closes the connection: it is logged and counted.
func (b *backend) Serve() {
	defer b.close()
	defer door.Recover(b.log, &b.s.panics, "virtio: panic serving connection", nil)
	// Starting a ring reads guest memory: a front-end that truncated its
	// memfd must cost it the connection, not crash the gateway.
	debug.SetPanicOnFault(true)
	for {
		m, err := b.mc.read()
		if err != nil {
			if b.s.handover.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				b.handOver()
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && b.ctx.Err() == nil {
				b.log.Warn("virtio: closing connection", "err", err)
			}
			return
		}
		err = b.handle(m)
		m.closeFds()
		if err != nil {
			b.log.Warn("virtio: closing connection", "request", reqName(m.Request), "err", err)
			return
		}
	}
}

func (b *backend) close() {
	for _, v := range b.rings {
		b.stopRing(v)
		if v.kickFd >= 0 {
			unix.Close(v.kickFd)
			v.kickFd = -1
		}
		v.call.set(-1)
		v.errN.set(-1)
	}
	b.mem.unmapAll()
	b.mem = nil
	b.inflight.close()
	b.inflight = nil
	b.cancel()
	b.conn.Close()
}

// handle runs one message. A returned error closes the connection (it wraps
// errProtocol or a socket error); requests that are merely refused are
// answered with a failure when the front-end asked for a reply.
func (b *backend) handle(m *message) error {
	b.log.Debug("virtio: message", "request", reqName(m.Request), "flags", m.Flags, "size", m.Size, "fds", len(m.fds))
	if m.Flags&flagReply != 0 {
		return fmt.Errorf("%w: unexpected reply flag", errProtocol)
	}
	p, err := parsePayload(m)
	if err != nil {
		return err
	}
	reply, err := b.dispatch(m, p)
	if errors.Is(err, errProtocol) {
		return err
	}
	if reply != nil {
		fds := b.replyFds
		b.replyFds = nil
		return b.mc.write(m.Request, flagReply, reply, fds)
	}
	if err != nil {
		b.log.Warn("virtio: request refused", "request", reqName(m.Request), "err", err)
	}
	if m.Flags&flagNeedReply != 0 && b.protoAcked(protoReplyAck) {
		var status uint64
		if err != nil {
			status = 1
		}
		return b.mc.write(m.Request, flagReply, encodeU64(status), nil)
	}
	return nil
}

func (b *backend) offeredFeatures() uint64 {
	f := bit(featVersion1) | bit(featProtocolFeatures) | bit(featIndirectDesc) | bit(featEventIdx) |
		bit(blkFeatSegMax) | bit(blkFeatBlkSize) | bit(blkFeatFlush) | bit(blkFeatMQ)
	if b.s.readOnly {
		f |= bit(blkFeatRO)
	} else {
		f |= bit(blkFeatDiscard) | bit(blkFeatWriteZeroes)
	}
	return f
}

const offeredProtocolFeatures = 1<<protoMQ | 1<<protoReplyAck | 1<<protoConfig | 1<<protoConfigureMemSlots | 1<<protoInflightShmfd

// ring returns the vring for a queue index from a message.
func (b *backend) ring(index uint32) (*vring, error) {
	if index >= uint32(len(b.rings)) {
		return nil, fmt.Errorf("%w: queue index %d (have %d)", errProtocol, index, len(b.rings))
	}
	return b.rings[index], nil
}

// dispatch acts on one parsed message. A non-nil reply is sent as is.
func (b *backend) dispatch(m *message, p any) ([]byte, error) {
	switch m.Request {
	case reqGetFeatures:
		return encodeU64(b.offeredFeatures()), nil
	case reqSetFeatures:
		f := p.(uint64)
		if extra := f &^ b.offeredFeatures(); extra != 0 {
			b.log.Warn("virtio: front-end acked features we did not offer; ignoring them", "features", fmt.Sprintf("%#x", extra))
			f &^= extra
		}
		if f != b.features {
			// Ring behaviour (EVENT_IDX, indirect, enable) depends on them.
			b.stopAll()
			b.features = f
			return nil, b.reconcileAll()
		}
		return nil, nil
	case reqGetProtocolFeatures:
		return encodeU64(offeredProtocolFeatures), nil
	case reqSetProtocolFeatures:
		b.protoFeatures = p.(uint64) & offeredProtocolFeatures
		return nil, nil
	case reqGetQueueNum:
		return encodeU64(uint64(len(b.rings))), nil
	case reqGetMaxMemSlots:
		return encodeU64(defaultMaxMemSlots), nil
	case reqSetOwner:
		return nil, nil
	case reqResetOwner, reqResetDevice:
		b.reset()
		return nil, nil
	case reqSetMemTable:
		return nil, b.setMemTable(m, p.([]memRegion))
	case reqAddMemReg:
		return nil, b.addMemReg(m, p.(memRegion))
	case reqRemMemReg:
		return nil, b.remMemReg(p.(memRegion))
	case reqSetVringNum, reqSetVringBase, reqSetVringEnable:
		return nil, b.setVringState(m.Request, p.(vringState))
	case reqSetVringAddr:
		return nil, b.setVringAddr(p.(vringAddr))
	case reqGetVringBase:
		return b.getVringBase(p.(vringState))
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		return nil, b.setVringFd(m, p.(uint64))
	case reqGetConfig:
		return b.getConfig(p.(configMsg)), nil
	case reqSetConfig:
		return nil, nil // nothing in our config space is writable
	case reqSetBackendReqFd:
		return nil, errors.New("BACKEND_REQ not offered")
	case reqGetInflightFd:
		return b.getInflightFd(p.(inflightMsg)), nil
	case reqSetInflightFd:
		return nil, b.setInflightFd(m, p.(inflightMsg))
	case reqGetStatus:
		// An always-replied request for a feature we do not offer: the
		// front-end would wait for a reply forever, so hang up instead.
		return nil, fmt.Errorf("%w: %s without the protocol feature", errProtocol, reqName(m.Request))
	}
	return nil, fmt.Errorf("unsupported request %s", reqName(m.Request))
}

func (b *backend) reset() {
	b.stopAll()
	for _, v := range b.rings {
		if v.kickFd >= 0 {
			unix.Close(v.kickFd)
		}
		v.kickFd, v.kickNoFd, v.started, v.enabled, v.addrSet, v.num, v.base = -1, false, false, false, false, 0, 0
		v.call.set(-1)
		v.errN.set(-1)
	}
	b.features = 0
}

func (b *backend) setMemTable(m *message, regs []memRegion) error {
	var next *guestMemory
	for i, r := range regs {
		mapped, err := mapRegion(r, m.fds[i])
		if err == nil {
			var n *guestMemory
			if n, err = next.with(mapped); err != nil {
				mapped.unmap()
			} else {
				next = n
			}
		}
		if err != nil {
			next.unmapAll()
			return fmt.Errorf("SET_MEM_TABLE region %d: %w", i, err)
		}
	}
	b.swapMemory(next)
	return b.reconcileAll()
}

func (b *backend) addMemReg(m *message, r memRegion) error {
	fd, err := m.takeFd()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if b.mem.count() >= defaultMaxMemSlots {
		return fmt.Errorf("ADD_MEM_REG: all %d slots in use", defaultMaxMemSlots)
	}
	mapped, err := mapRegion(r, fd)
	if err != nil {
		return fmt.Errorf("ADD_MEM_REG: %w", err)
	}
	next, err := b.mem.with(mapped)
	if err != nil {
		mapped.unmap()
		return fmt.Errorf("ADD_MEM_REG: %w", err)
	}
	// Existing mappings stay valid: rings need not stop to gain a region.
	b.mem = next
	b.restartAll()
	return nil
}

func (b *backend) remMemReg(r memRegion) error {
	next, gone := b.mem.without(r)
	if gone == nil {
		return fmt.Errorf("REM_MEM_REG: no region gpa %#x size %#x uva %#x", r.GPA, r.Size, r.UVA)
	}
	b.stopAll()
	b.mem = next
	gone.unmap()
	return b.reconcileAll()
}

// swapMemory installs a new table with every ring stopped, then unmaps the
// old one.
func (b *backend) swapMemory(next *guestMemory) {
	b.stopAll()
	old := b.mem
	b.mem = next
	old.unmapAll()
}

func (b *backend) setVringState(req uint32, s vringState) error {
	v, err := b.ring(s.Index)
	if err != nil {
		return err
	}
	switch req {
	case reqSetVringNum:
		if s.Num == 0 || s.Num > maxQueueSize || s.Num&(s.Num-1) != 0 {
			return fmt.Errorf("SET_VRING_NUM %d: not a power of two up to %d", s.Num, maxQueueSize)
		}
		b.stopRing(v)
		v.num = int(s.Num)
	case reqSetVringBase:
		if s.Num > 0xffff {
			return fmt.Errorf("SET_VRING_BASE %d: split rings have 16-bit indices", s.Num)
		}
		b.stopRing(v)
		v.base = uint16(s.Num)
	case reqSetVringEnable:
		if s.Num > 1 {
			return fmt.Errorf("SET_VRING_ENABLE %d", s.Num)
		}
		v.enabled = s.Num == 1
	}
	return b.reconcile(v)
}

func (b *backend) setVringAddr(a vringAddr) error {
	v, err := b.ring(a.Index)
	if err != nil {
		return err
	}
	if a.Flags&vringAddrFlagLog != 0 {
		return errors.New("SET_VRING_ADDR: dirty logging not supported")
	}
	b.stopRing(v)
	v.addr, v.addrSet = a, true
	return b.reconcile(v)
}

// getVringBase stops the ring and answers the next avail index it would
// have processed. The kick and call fds are closed: the front-end sends new
// ones before it starts the ring again.
func (b *backend) getVringBase(s vringState) ([]byte, error) {
	v, err := b.ring(s.Index)
	if err != nil {
		return nil, err
	}
	b.stopRing(v)
	v.started = false
	if v.kickFd >= 0 {
		unix.Close(v.kickFd)
		v.kickFd = -1
	}
	v.call.set(-1)
	return encodeVringState(vringState{Index: s.Index, Num: uint32(v.base)}), nil
}

func (b *backend) setVringFd(m *message, u uint64) error {
	v, err := b.ring(uint32(u & vringIndexMask))
	if err != nil {
		return err
	}
	if u&^(vringIndexMask|vringStateNoFd) != 0 {
		return fmt.Errorf("%w: %s argument %#x", errProtocol, reqName(m.Request), u)
	}
	fd := -1
	if u&vringStateNoFd == 0 {
		if fd, err = m.takeFd(); err != nil {
			return err
		}
	}
	switch m.Request {
	case reqSetVringKick:
		b.stopRing(v)
		if v.kickFd >= 0 {
			unix.Close(v.kickFd)
		}
		v.kickFd, v.kickNoFd, v.started = fd, fd < 0, true
		return b.reconcile(v)
	case reqSetVringCall:
		v.call.set(fd)
		// A call may have been lost while the front-end switched fds
		// (QEMU masks and unmasks vectors this way): a spurious one is
		// harmless, a lost one hangs the driver.
		if v.run != nil {
			v.call.signal()
		}
	case reqSetVringErr:
		v.errN.set(fd)
	}
	return nil
}

// getConfig answers GET_CONFIG with exactly the bytes asked for, or with an
// empty config (size 0) when the range is outside the config space.
func (b *backend) getConfig(c configMsg) []byte {
	if uint64(c.Offset)+uint64(c.Size) > maxConfigSize {
		return encodeConfig(configMsg{Offset: c.Offset, Flags: c.Flags})
	}
	space := make([]byte, maxConfigSize)
	copy(space, b.config().encode())
	c.Data = space[c.Offset : c.Offset+c.Size]
	return encodeConfig(c)
}

func (b *backend) config() blkConfig {
	bs := uint32(b.s.opt.BlockSize)
	c := blkConfig{
		Capacity:  uint64(max(b.s.exp.Size(), 0)) >> sectorShift,
		SegMax:    serverSegMax,
		BlkSize:   bs,
		NumQueues: uint16(len(b.rings)),
	}
	if !b.s.readOnly {
		c.MaxDiscardSectors = maxDiscardSectors
		c.MaxDiscardSeg = maxDiscardSegs
		c.DiscardSectorAlignment = bs >> sectorShift
		c.MaxWriteZeroesSectors = maxDiscardSectors
		c.MaxWriteZeroesSeg = maxDiscardSegs
		c.WriteZeroesMayUnmap = 1
	}
	return c
}

// Ring lifecycle. A ring runs when it has a size, addresses, a kick (or
// "no fd"), memory, and is enabled (or VHOST_USER_F_PROTOCOL_FEATURES was
// not negotiated, in which case rings are enabled from the start).

func (b *backend) wantRunning(v *vring) bool {
	return v.started && v.num > 0 && v.addrSet && b.mem.count() > 0 &&
		(v.enabled || !b.acked(featProtocolFeatures))
}

func (b *backend) reconcile(v *vring) error {
	want := b.wantRunning(v)
	switch {
	case want && v.run == nil:
		return b.startRing(v)
	case !want && v.run != nil:
		b.stopRing(v)
	}
	return nil
}

func (b *backend) reconcileAll() error {
	var first error
	for _, v := range b.rings {
		if err := b.reconcile(v); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (b *backend) stopAll() {
	for _, v := range b.rings {
		b.stopRing(v)
	}
}

// restartAll stops and restarts running rings so they see the current
// memory table.
func (b *backend) restartAll() {
	for _, v := range b.rings {
		if v.run != nil {
			b.stopRing(v)
			if err := b.startRing(v); err != nil {
				b.log.Warn("virtio: ring restart failed", "queue", v.index, "err", err)
			}
		}
	}
}

// stopRing stops the ring's runner, waiting for its in-flight requests, and
// keeps its position for GET_VRING_BASE or a restart.
func (b *backend) stopRing(v *vring) {
	if v.run == nil {
		return
	}
	v.run.stop()
	v.base = v.run.ring.lastAvail
	v.run = nil
}

func (b *backend) startRing(v *vring) error {
	n := v.num
	descs, err := b.mem.uva(v.addr.Desc, uint64(descTableSize(n)))
	if err == nil {
		var avail, used []byte
		if avail, err = b.mem.uva(v.addr.Avail, uint64(availSize(n))); err == nil {
			if used, err = b.mem.uva(v.addr.Used, uint64(usedSize(n))); err == nil {
				var ring *deviceRing
				ring, err = newDeviceRing(n, descs, avail, used, v.base, b.acked(featEventIdx), b.acked(featIndirectDesc))
				if err == nil {
					track, resubmit := b.trackInflight(v, ring)
					v.run, err = newRunner(b, v, ring, track, resubmit)
				}
			}
		}
	}
	if err != nil {
		v.errN.signal()
		return fmt.Errorf("queue %d: %w", v.index, err)
	}
	b.log.Debug("virtio: ring started", "queue", v.index, "size", n, "base", v.base,
		"event_idx", b.acked(featEventIdx), "indirect", b.acked(featIndirectDesc))
	go v.run.run()
	return nil
}
