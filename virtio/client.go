package virtio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/waiter"
)

// Options configure Dial. The zero value is usable.
type Options struct {
	// Queues is the number of request queues to use (default 1); capped
	// by what the target offers.
	Queues int
	// QueueSize is each ring's size: a power of two up to 32768
	// (default 128, like QEMU).
	QueueSize int
	// QueueDepth is the number of requests in flight per queue (default 32;
	// capped by the ring: QueueSize with indirect descriptors, QueueSize
	// divided by the descriptors per request without).
	QueueDepth int
	// MaxIO is the largest request in bytes (default 256 KiB, a multiple
	// of 4 KiB); larger reads and writes are split and run concurrently.
	// It is lowered to fit the target's seg_max × size_max.
	MaxIO int
	// HugePages backs the shared memory with 2 MiB hugetlbfs pages, which
	// SPDK needs; the host must have enough free huge pages.
	HugePages bool
	// DisableIndirect and DisableEventIdx decline those features even when
	// the target offers them.
	DisableIndirect bool
	DisableEventIdx bool
	// DisableFlush declines FLUSH even when offered: the target must then
	// complete every write, discard and write-zeroes durably (write-through,
	// as the virtio-blk spec requires), and Flush returns nil.
	DisableFlush bool
	// Wait tunes how each queue's poller waits for completions.
	Wait WaitOptions
	// ControlTimeout bounds each control-message round trip (default 5 s).
	ControlTimeout time.Duration
	Logger         *slog.Logger
}

// Client defaults.
const (
	defaultClientQueueSize = 128
	defaultClientDepth     = 32
	defaultMaxIO           = 256 << 10
	defaultControlTimeout  = 5 * time.Second
	// clientGPABase is the guest-physical address of our memory: chosen
	// unlike our virtual addresses so a target that mixes the two fails.
	clientGPABase  = 1 << 40
	configReadSize = blkConfigSize
)

// Client is a vhost-user-blk initiator: one connection to a target, with
// its queues and shared memory. It is safe for concurrent use; it
// implements the gateway/device.Device interface and, with Do, the export
// interfaces of the doors.
type Client struct {
	opt Options
	log *slog.Logger

	conn       *net.UnixConn
	mc         *msgConn
	ctlMu      sync.Mutex    // one control round trip at a time
	replies    chan *message // replies, once the reader goroutine runs
	readerDone chan struct{}

	features      uint64 // negotiated
	protoFeatures uint64 // negotiated
	cfg           blkConfig
	size          int64
	maxIO         int
	segSize       int

	shm    *sharedMemory
	queues []*cqueue
	rr     atomic.Uint32

	bogus atomic.Uint64   // used elements that matched no request in flight
	waits waiter.Counters // the queue pollers'

	ioMu     sync.RWMutex // IO calls hold it shared; Close takes it to unmap
	closed   atomic.Bool
	dead     chan struct{} // closed when the connection is unusable
	deadOnce sync.Once
	deadErr  error
}

// Dial connects to the vhost-user-blk target listening on socketPath,
// negotiates features, shares memory and starts the queues.
func Dial(ctx context.Context, socketPath string, opts Options) (*Client, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("virtio: dial %s: %w", socketPath, err)
	}
	conn := nc.(*net.UnixConn)
	c := &Client{
		opt: opts, log: opts.Logger.With("virtio_target", socketPath),
		conn: conn, mc: newMsgConn(conn), dead: make(chan struct{}),
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake()
	stop()
	conn.SetDeadline(time.Time{})
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		c.teardown()
		return nil, fmt.Errorf("virtio: connect %s: %w", socketPath, err)
	}
	c.replies = make(chan *message, 1)
	c.readerDone = make(chan struct{})
	go c.reader()
	for _, q := range c.queues {
		go q.poll()
	}
	return c, nil
}

func (o *Options) fill() error {
	if o.Queues <= 0 {
		o.Queues = 1
	}
	o.Queues = min(o.Queues, vhostUserMaxQueues)
	if o.QueueSize == 0 {
		o.QueueSize = defaultClientQueueSize
	}
	if o.QueueSize < 1 || o.QueueSize > maxQueueSize || o.QueueSize&(o.QueueSize-1) != 0 {
		return fmt.Errorf("virtio: queue size %d is not a power of two up to %d", o.QueueSize, maxQueueSize)
	}
	if o.QueueDepth <= 0 {
		o.QueueDepth = defaultClientDepth
	}
	if o.MaxIO <= 0 {
		o.MaxIO = defaultMaxIO
	}
	o.MaxIO = max(alignUp(o.MaxIO, pageSize), pageSize)
	if o.ControlTimeout <= 0 {
		o.ControlTimeout = defaultControlTimeout
	}
	o.Wait = o.Wait.WithDefaults()
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

func (c *Client) has(feature uint) bool      { return c.features&bit(feature) != 0 }
func (c *Client) protoHas(feature uint) bool { return c.protoFeatures&bit(feature) != 0 }

// wantedFeatures is what the initiator understands.
func (c *Client) wantedFeatures() uint64 {
	f := bit(featVersion1) | bit(featProtocolFeatures) | bit(featIndirectDesc) | bit(featEventIdx) |
		bit(blkFeatSizeMax) | bit(blkFeatSegMax) | bit(blkFeatBlkSize) | bit(blkFeatFlush) |
		bit(blkFeatRO) | bit(blkFeatMQ) | bit(blkFeatDiscard) | bit(blkFeatWriteZeroes)
	if c.opt.DisableIndirect {
		f &^= bit(featIndirectDesc)
	}
	if c.opt.DisableEventIdx {
		f &^= bit(featEventIdx)
	}
	if c.opt.DisableFlush {
		f &^= bit(blkFeatFlush)
	}
	return f
}

const wantedProtocolFeatures = 1<<protoMQ | 1<<protoReplyAck | 1<<protoConfig

// handshake follows notes/virtio.md §4 "Initiator order".
func (c *Client) handshake() error {
	offered, err := c.getU64(reqGetFeatures)
	if err != nil {
		return err
	}
	if offered&bit(featVersion1) == 0 {
		return fmt.Errorf("target does not offer VIRTIO_F_VERSION_1 (features %#x)", offered)
	}
	queues := 1
	if offered&bit(featProtocolFeatures) != 0 {
		pf, err := c.getU64(reqGetProtocolFeatures)
		if err != nil {
			return err
		}
		c.protoFeatures = pf & wantedProtocolFeatures
		if err := c.send(reqSetProtocolFeatures, encodeU64(c.protoFeatures), nil); err != nil {
			return err
		}
		if c.protoHas(protoMQ) {
			n, err := c.getU64(reqGetQueueNum)
			if err != nil {
				return err
			}
			queues = int(min(max(n, 1), vhostUserMaxQueues))
		}
	}
	if !c.protoHas(protoConfig) {
		return errors.New("target does not offer VHOST_USER_PROTOCOL_F_CONFIG: cannot learn the disk size")
	}
	reply, err := c.roundTrip(reqGetConfig, encodeConfig(configMsg{Size: configReadSize, Data: make([]byte, configReadSize)}), nil, true)
	if err != nil {
		return err
	}
	cm, err := decodeConfig(reply)
	if err != nil || cm.Size != configReadSize {
		return fmt.Errorf("GET_CONFIG: bad reply (%d bytes): %v", len(reply.payload), err)
	}
	c.cfg = decodeBlkConfig(cm.Data)
	if err := c.send(reqSetOwner, nil, nil); err != nil {
		return err
	}
	c.features = offered & c.wantedFeatures()
	if err := c.send(reqSetFeatures, encodeU64(c.features), nil); err != nil {
		return err
	}
	if c.has(blkFeatMQ) {
		queues = min(queues, int(max(c.cfg.NumQueues, 1)))
	} else {
		queues = 1
	}
	c.size = int64(min(c.cfg.Capacity, 1<<53) << sectorShift)
	lay, err := c.plan(min(c.opt.Queues, queues))
	if err != nil {
		return err
	}
	if c.shm, err = newSharedMemory(lay.total, c.opt.HugePages); err != nil {
		return err
	}
	uva := uint64(uintptr(unsafe.Pointer(&c.shm.buf[0])))
	table := encodeMemTable([]memRegion{{GPA: clientGPABase, Size: uint64(len(c.shm.buf)), UVA: uva}})
	if err := c.send(reqSetMemTable, table, []int{c.shm.fd}); err != nil {
		return err
	}
	for i := range lay.queues {
		q, err := newCQueue(c, i, lay)
		if err != nil {
			return err
		}
		c.queues = append(c.queues, q)
		if err := c.startQueue(q, uva); err != nil {
			return err
		}
	}
	return nil
}

// startQueue sends the ring setup in SPDK's order: call first, kick last,
// then enable.
func (c *Client) startQueue(q *cqueue, uva uint64) error {
	idx := uint32(q.index)
	base := uint64(q.ringOff)
	steps := []struct {
		req     uint32
		payload []byte
		fds     []int
	}{
		{reqSetVringNum, encodeVringState(vringState{Index: idx, Num: uint32(q.ring.n)}), nil},
		{reqSetVringBase, encodeVringState(vringState{Index: idx}), nil},
		{reqSetVringAddr, encodeVringAddr(vringAddr{
			Index: idx,
			Desc:  uva + base,
			Avail: uva + base + uint64(q.availOff),
			Used:  uva + base + uint64(q.usedOff),
		}), nil},
		{reqSetVringCall, encodeU64(uint64(idx)), []int{q.callFd}},
		{reqSetVringKick, encodeU64(uint64(idx)), []int{q.kickFd}},
	}
	if c.has(featProtocolFeatures) {
		steps = append(steps, struct {
			req     uint32
			payload []byte
			fds     []int
		}{reqSetVringEnable, encodeVringState(vringState{Index: idx, Num: 1}), nil})
	}
	for _, s := range steps {
		if err := c.send(s.req, s.payload, s.fds); err != nil {
			return fmt.Errorf("queue %d: %w", idx, err)
		}
	}
	return nil
}

// getU64 sends a request without payload and returns its u64 reply.
func (c *Client) getU64(req uint32) (uint64, error) {
	m, err := c.roundTrip(req, nil, nil, true)
	if err != nil {
		return 0, err
	}
	v, err := decodeU64(m)
	if err != nil {
		return 0, fmt.Errorf("%s reply: %w", reqName(req), err)
	}
	return v, nil
}

// send sends a request that has no reply of its own; with REPLY_ACK it
// asks for an ack and fails if the target refused.
func (c *Client) send(req uint32, payload []byte, fds []int) error {
	if !c.protoHas(protoReplyAck) {
		_, err := c.roundTrip(req, payload, fds, false)
		return err
	}
	m, err := c.roundTripFlags(req, flagNeedReply, payload, fds, true)
	if err != nil {
		return err
	}
	v, err := decodeU64(m)
	if err != nil {
		return fmt.Errorf("%s ack: %w", reqName(req), err)
	}
	if v != 0 {
		return fmt.Errorf("target refused %s (status %d)", reqName(req), v)
	}
	return nil
}

func (c *Client) roundTrip(req uint32, payload []byte, fds []int, reply bool) (*message, error) {
	return c.roundTripFlags(req, 0, payload, fds, reply)
}

func (c *Client) roundTripFlags(req, flags uint32, payload []byte, fds []int, reply bool) (*message, error) {
	c.ctlMu.Lock()
	defer c.ctlMu.Unlock()
	if err := c.mc.write(req, flags, payload, fds); err != nil {
		return nil, err
	}
	if !reply {
		return nil, nil
	}
	var m *message
	if c.replies == nil {
		var err error
		if m, err = c.mc.read(); err != nil {
			return nil, fmt.Errorf("%s: %w", reqName(req), err)
		}
	} else {
		t := time.NewTimer(c.opt.ControlTimeout)
		defer t.Stop()
		select {
		case m = <-c.replies:
		case <-c.dead:
			return nil, c.deadErr
		case <-t.C:
			return nil, fmt.Errorf("%s: no reply within %v", reqName(req), c.opt.ControlTimeout)
		}
	}
	m.closeFds()
	if m.Request != req || m.Flags&flagReply == 0 {
		return nil, fmt.Errorf("%w: sent %s, got %s (flags %#x)", errProtocol, reqName(req), reqName(m.Request), m.Flags)
	}
	return m, nil
}

// reader runs after the handshake: it hands replies to roundTrip and notices
// when the target goes away.
func (c *Client) reader() {
	defer close(c.readerDone)
	for {
		m, err := c.mc.read()
		if err != nil {
			c.fail(fmt.Errorf("virtio: connection to target lost: %w: %w", gateway.ErrClosed, err))
			return
		}
		if m.Flags&flagReply == 0 {
			c.log.Warn("virtio: unexpected request from target", "request", reqName(m.Request))
			m.closeFds()
			continue
		}
		select {
		case c.replies <- m:
		default:
			c.log.Warn("virtio: unexpected reply from target", "request", reqName(m.Request))
			m.closeFds()
		}
	}
}

// misbehaved logs a used element that matches no request: the first at
// warning level, the rest at debug level, so a broken target cannot flood
// the log.
func (c *Client) misbehaved(what string, queue int, id uint32) {
	if c.bogus.Add(1) == 1 {
		c.log.Warn("virtio: "+what, "queue", queue, "id", id)
		return
	}
	c.log.Debug("virtio: "+what, "queue", queue, "id", id)
}

// fail marks the client unusable; waiting requests return err.
func (c *Client) fail(err error) {
	c.deadOnce.Do(func() {
		c.deadErr = err
		close(c.dead)
		if !c.closed.Load() {
			c.log.Error("virtio: target connection failed", "err", err)
		}
	})
}

// Close stops the queues (GET_VRING_BASE, so the target finishes what it
// is doing with our memory), fails requests still waiting, and releases the
// connection and the shared memory.
func (c *Client) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	select {
	case <-c.dead:
	default:
		for _, q := range c.queues {
			if _, err := c.roundTrip(reqGetVringBase, encodeVringState(vringState{Index: uint32(q.index)}), nil, true); err != nil {
				c.log.Warn("virtio: stopping queue", "queue", q.index, "err", err)
				break
			}
		}
	}
	for _, q := range c.queues {
		q.w.Stop()
		<-q.done
	}
	c.fail(fmt.Errorf("virtio: client closed: %w", gateway.ErrClosed))
	c.ioMu.Lock() // every IO call has returned
	c.conn.Close()
	<-c.readerDone
	c.teardown()
	c.ioMu.Unlock()
	return nil
}

// teardown releases fds and memory (Close, or a failed Dial).
func (c *Client) teardown() {
	c.conn.Close()
	for _, q := range c.queues {
		q.close()
	}
	c.shm.close()
}

// Size is the disk size in bytes (capacity × 512).
func (c *Client) Size() int64 { return c.size }

// BlockSize is the target's logical block size (512 unless it says).
func (c *Client) BlockSize() int {
	if c.has(blkFeatBlkSize) && c.cfg.BlkSize >= sectorSize {
		return int(c.cfg.BlkSize)
	}
	return sectorSize
}

// ReadOnly reports whether the target offered the disk read-only.
func (c *Client) ReadOnly() bool { return c.has(blkFeatRO) }

// Features returns the negotiated virtio feature bits.
func (c *Client) Features() uint64 { return c.features }

// WaitStats returns what the queue pollers did while waiting for
// completions, summed over the queues.
func (c *Client) WaitStats() WaitStats { return c.waits.Stats() }

// Queues returns the number of queues in use.
func (c *Client) Queues() int { return len(c.queues) }

// MaxIO is the largest request the client sends; larger IO is split.
func (c *Client) MaxIO() int { return c.maxIO }

// HasDiscard reports whether the target accepts DISCARD.
func (c *Client) HasDiscard() bool { return c.has(blkFeatDiscard) }

// HasWriteZeroes reports whether the target accepts WRITE_ZEROES.
func (c *Client) HasWriteZeroes() bool { return c.has(blkFeatWriteZeroes) }

// DiscardZeroes reports false: virtio-blk does not promise that discarded
// ranges read back as zeros (use WriteZeroes).
func (c *Client) DiscardZeroes() bool { return false }
