package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/door"
	"github.com/sluice-storage/sluice/internal/waiter"
)

// channel is one client process's connection: its control socket, its
// shared memory and the files it registered (a door.Conn).
type channel struct {
	s      *Server
	id     uint32
	conn   *net.UnixConn
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	pid    int32
	uid    uint32

	// Set by the handshake, before the poller starts.
	mem  []byte
	l    layout
	w    *waiter.Waiter // the poller's, on the client's kick eventfd
	lens *lengthTable   // the files' lengths, mapped read-only by the client (lengths.go)
	// running[i] is true while slot i's request runs: a slot submitted
	// again meanwhile is ignored, so a channel runs at most l.slots
	// requests at once.
	running []atomic.Bool

	mu      sync.Mutex
	files   map[uint64]*file
	next    uint64 // the last handle given out
	ready   bool   // the handshake is done (info may read l)
	served  atomic.Uint64
	avgNs   [numClasses]atomic.Int64 // EWMA of a request's time, per class
	inf     sync.WaitGroup           // requests running
	offPoll atomic.Int32             // requests running on their own goroutines
	polling sync.WaitGroup           // the poller

	draining atomic.Bool // Drain: answer new requests "fall back", then end
	stopping atomic.Bool // the poller must return
	closed   sync.Once
}

func newChannel(ctx context.Context, s *Server, conn *net.UnixConn) *channel {
	ctx, cancel := context.WithCancel(ctx)
	c := &channel{s: s, id: s.ids.Add(1), conn: conn, ctx: ctx, cancel: cancel, files: make(map[uint64]*file)}
	if raw, err := conn.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				c.pid, c.uid = cred.Pid, cred.Uid
			}
		})
	}
	c.log = s.log.With("channel", c.id, "pid", c.pid)
	return c
}

// Serve runs the handshake, then the control loop (registrations) while
// the poller serves the ring, until the client goes or Drain or Close.
func (c *channel) Serve() {
	defer c.release()
	defer door.Recover(c.log, &c.s.stats.panics, "shim: panic serving a channel", nil)
	// The handshake and registrations read nothing of the shared memory
	// but its header; a truncated memfd is refused (seals) before that.
	debug.SetPanicOnFault(true)
	if err := c.handshake(); err != nil {
		if !quiet(err) {
			c.s.stats.bad.Add(1)
			c.log.Warn("shim: handshake refused", "err", err)
		}
		return
	}
	c.polling.Add(1)
	go c.poll()
	for {
		if err := c.control(); err != nil {
			if !quiet(err) && !c.draining.Load() {
				c.s.stats.bad.Add(1)
				c.log.Warn("shim: closing channel", "err", err)
			}
			return
		}
	}
}

// quiet reports whether err is the ordinary end of a channel.
func quiet(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded)
}

// Drain: requests in flight finish; new ones are answered "fall back";
// then the socket closes and the client sees the gateway gone.
func (c *channel) Drain() {
	c.draining.Store(true)
	c.conn.SetReadDeadline(time.Unix(1, 0))
}

// Close ends the channel at once.
func (c *channel) Close() {
	c.draining.Store(true)
	c.cancel()
	c.conn.Close()
}

// release stops the poller, waits for running requests, and lets go of
// the shared memory, the eventfd and the registered files.
func (c *channel) release() {
	c.closed.Do(func() {
		c.stopping.Store(true)
		if c.w != nil {
			c.w.Stop()
		}
		c.polling.Wait()
		c.inf.Wait()
		if c.mem != nil {
			// Nothing runs any more: the client's threads waiting on
			// a slot may fall back (before, a client that had retired
			// the channel fell back at once and a request still
			// submitted could run after the kernel's copy).
			atomic.StoreUint32(c.word(hdrReleased), 1)
		}
		c.cancel()
		c.conn.Close()
		if c.w != nil {
			c.w.Close()
		}
		c.mu.Lock()
		for h, f := range c.files {
			f.close(&c.s.lens)
			delete(c.files, h)
			c.s.stats.handles.Add(-1)
		}
		c.ready = false
		c.mu.Unlock()
		if c.mem != nil {
			unix.Munmap(c.mem)
		}
		if c.lens != nil {
			c.lens.close()
		}
	})
}

func (c *channel) info() (ChannelInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready {
		return ChannelInfo{}, false
	}
	return ChannelInfo{ID: c.id, PID: c.pid, UID: c.uid, Slots: c.l.slots, SlotData: c.l.slotData, Handles: len(c.files), Requests: c.served.Load()}, true
}

// recv reads one control message and the fds that came with it. Fds
// beyond what the message may carry are closed by the caller (closeFds).
func (c *channel) recv() ([]byte, []int, error) {
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return nil, nil, fmt.Errorf("%w: control data: %v", errBadMessage, perr)
		}
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if n == 0 && oobn == 0 {
		closeFds(fds)
		return nil, nil, io.EOF
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeFds(fds)
		return nil, nil, fmt.Errorf("%w: message or its fds truncated", errBadMessage)
	}
	return buf[:n], fds, nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// handshake takes the client's hello: it maps the memfd after checking
// its size and seals, keeps the kick eventfd, and answers.
func (c *channel) handshake() error {
	b, fds, err := c.recv()
	if err != nil {
		return err
	}
	defer closeFds(fds) // the memfd once mapped; the eventfd is dup'ed
	m, err := parseMessage(b, len(fds))
	if err != nil {
		return err
	}
	h, ok := m.(*hello)
	if !ok {
		return fmt.Errorf("%w: the first message is not a hello", errBadMessage)
	}
	if err := c.attach(h, fds[0], fds[1]); err != nil {
		c.conn.Write(encodeHelloOK(int32(unix.EINVAL), 0))
		return err
	}
	c.running = make([]atomic.Bool, c.l.slots)
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	c.log.Debug("shim: channel open", "slots", c.l.slots, "slot_data", c.l.slotData, "uid", c.uid)
	c.s.stats.opened.Add(1) // before the answer: a client that sees it sees the count
	if _, _, err := c.conn.WriteMsgUnix(encodeHelloOK(0, c.id), unix.UnixRights(c.lens.fd), nil); err != nil {
		return err
	}
	return nil
}

// attach checks and maps the shared memory and takes the eventfd.
func (c *channel) attach(h *hello, memfd, evfd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(memfd, &st); err != nil {
		return fmt.Errorf("%w: fstat of the memfd: %v", errBadMessage, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: the shared memory is not a memfd (mode %#o)", errBadMessage, st.Mode)
	}
	// Without a shrink seal the client could truncate the memfd under
	// our mapping and make our accesses fault.
	seals, err := unix.FcntlInt(uintptr(memfd), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_SHRINK == 0 {
		return fmt.Errorf("%w: the memfd is not sealed against shrinking (F_SEAL_SHRINK)", errBadMessage)
	}
	l, err := layoutOf(h, st.Size)
	if err != nil {
		return err
	}
	if err := checkEventfd(evfd); err != nil {
		return err
	}
	mem, err := unix.Mmap(memfd, 0, l.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the shared memory: %w", err)
	}
	if le32(mem, hdrMagic) != shmMagic || le32(mem, hdrVersion) != Version ||
		le32(mem, hdrSlots) != h.Slots || le32(mem, hdrSlotData) != h.SlotData {
		unix.Munmap(mem)
		return fmt.Errorf("%w: the shared memory's header does not match the hello", errBadMessage)
	}
	// The waiter reads a non-blocking dup of the eventfd.
	w, err := waiter.New(c.s.opt.Wait, evfd, &c.s.waits)
	if err != nil {
		unix.Munmap(mem)
		return fmt.Errorf("the kick eventfd: %w", err)
	}
	lens, err := newLengthTable(c.s.opt.MaxHandles + 1)
	if err != nil {
		w.Close()
		unix.Munmap(mem)
		return err
	}
	c.mem, c.l, c.pid, c.w, c.lens = mem, l, max(c.pid, int32(h.PID)), w, lens
	return nil
}

// checkEventfd refuses an fd that is not an eventfd: the poller reads it
// (a pipe or a socket would do, a regular file would never block).
func checkEventfd(fd int) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil || link != "anon_inode:[eventfd]" {
		return fmt.Errorf("%w: the kick fd is not an eventfd (%q)", errBadMessage, link)
	}
	return nil
}

func le32(b []byte, off int) uint32 {
	return uint32(b[off]) | uint32(b[off+1])<<8 | uint32(b[off+2])<<16 | uint32(b[off+3])<<24
}

// word is the shared uint32 at off, for atomic access.
func (c *channel) word(off int) *uint32 { return (*uint32)(unsafe.Pointer(&c.mem[off])) }

// bits is the submitted bitmap's i-th uint64.
func (c *channel) bits(i int) *uint64 { return (*uint64)(unsafe.Pointer(&c.mem[hdrSubmitted+8*i])) }

// control handles one control message after the handshake.
func (c *channel) control() error {
	b, fds, err := c.recv()
	if err != nil {
		return err
	}
	m, err := parseMessage(b, len(fds))
	if err != nil {
		closeFds(fds)
		return err
	}
	switch m := m.(type) {
	case *register:
		// The fd is the file's: register keeps it or closes it.
		r := c.register(fds[0], m.FD)
		_, err = c.conn.Write(encodeRegistered(r))
		return err
	case *unregister:
		c.unregister(m.Handle)
		return nil
	}
	closeFds(fds)
	return fmt.Errorf("%w: a second hello", errBadMessage)
}

// poll is the channel's poller: it takes submitted slots and runs their
// requests, and waits with internal/waiter (the virtio door's adaptive
// waiting: spin, short naps, then the kick eventfd) when there are none.
// A fault in the shared memory ends the poller, not the gateway.
func (c *channel) poll() {
	defer c.polling.Done()
	defer door.Recover(c.log, &c.s.stats.panics, "shim: panic in a channel's poller", func() { c.conn.Close() })
	debug.SetPanicOnFault(true)
	for {
		if c.stopping.Load() {
			return
		}
		if n := c.take(); n > 0 {
			c.w.Processed(n)
			continue
		}
		if !c.w.Wait(c) {
			return
		}
	}
}

// Ready and Notify make the channel a waiter.Waitable: work is a
// submitted slot; notifications are the header's idle word (clients kick
// the eventfd only while it is 1). The atomic store is a full barrier.
func (c *channel) Ready() bool { return c.pending() }

// Notify sets the idle word: on, clients kick.
func (c *channel) Notify(on bool) {
	v := uint32(0)
	if on {
		v = 1
	}
	atomic.StoreUint32(c.word(hdrIdle), v)
}

// take claims every submitted slot and starts it; it returns how many.
// A lone request on an idle channel (nothing else claimed, nothing
// running off the poller) may run inline under the looser idleInline
// bound (see start).
func (c *channel) take() int {
	var claimed [MaxSlots / 64]uint64
	words, n := (c.l.slots+63)/64, 0
	for w := 0; w < words; w++ {
		claimed[w] = atomic.SwapUint64(c.bits(w), 0)
		n += bits.OnesCount64(claimed[w])
	}
	idle := n == 1 && c.offPoll.Load() == 0
	n = 0
	for w := 0; w < words; w++ {
		for set := claimed[w]; set != 0; set &= set - 1 {
			if i := w*64 + bits.TrailingZeros64(set); i < c.l.slots {
				c.start(i, idle)
				n++
			}
		}
	}
	return n
}

// pending reports whether any slot is submitted.
func (c *channel) pending() bool {
	for w := 0; w*64 < c.l.slots; w++ {
		if atomic.LoadUint64(c.bits(w)) != 0 {
			return true
		}
	}
	return false
}

// Request classes, for the inline decision.
const (
	classRead  = iota // read, fstat
	classWrite        // write, ftruncate, fallocate
	classSync         // fsync, fdatasync
	numClasses
)

func classOf(op uint32) int {
	switch op {
	case opRead, opFstat:
		return classRead
	case opFsync, opFdatasync:
		return classSync
	}
	return classWrite
}

// start serves slot i, unless it is already running (a client that
// submits a slot twice). It copies the record out of shared memory and
// runs it on the poller while requests of its class have been quick
// (Options.InlineBelow, as the virtio door): handing it to a goroutine
// costs a wake-up, more than a cached 4 KiB read takes. Slower ones
// (throttled files, a sync that waits for the device) run on their own
// goroutine so they do not hold up the channel's other requests.
//
// A request alone on an idle channel runs inline while its class has
// averaged under idleInline (10x InlineBelow), as the NBD door does:
// there is nothing to overlap it with, so the hand-off would only add a
// wake-up, and a second thread to the poller's, to a 128 KiB write. A
// request arriving meanwhile waits for it (on average about that long);
// not on a volume a QoS rule routes (inline).
func (c *channel) start(i int, idle bool) {
	if !c.running[i].CompareAndSwap(false, true) {
		c.s.stats.bad.Add(1)
		return
	}
	rec := c.mem[pageSize+i*recordLen : pageSize+(i+1)*recordLen]
	if atomic.LoadUint32(c.word(pageSize+i*recordLen+recState)) != slotSubmitted {
		c.s.stats.bad.Add(1)
		c.complete(i, rec, failed(unix.EINVAL))
		return
	}
	var copied [recordLen]byte
	copy(copied[:], rec)
	r := decodeRecord(copied[:])
	if c.draining.Load() {
		res := fallback(ReasonGone)
		c.count(r.op, res)
		c.complete(i, rec, res)
		return
	}
	class, f := classOf(r.op), c.file(r.handle)
	if c.inline(f, class, idle) {
		c.s.stats.inline.Add(1)
		c.run(i, rec, r, f, class, false)
		return
	}
	c.inf.Add(1)
	c.offPoll.Add(1)
	go func() {
		defer c.inf.Done()
		debug.SetPanicOnFault(true)
		c.run(i, rec, r, f, class, true)
	}()
}

// inline decides where start runs r (see start). The idle bound is not
// used on a volume a QoS rule routes: a throttled request would hold
// the poller, and every other slot of the channel, for as long as its
// queue holds it, while the class's average still looks quick.
func (c *channel) inline(f *file, class int, idle bool) bool {
	below, avg := c.s.opt.InlineBelow, time.Duration(c.avgNs[class].Load())
	switch {
	case below < 0:
		return false
	case avg < below:
		return true
	case !idle || avg >= idleInline*below:
		return false
	}
	return f != nil && !f.vol.Queued()
}

// run executes slot i's request r on file f (exec), publishes the
// completion and wakes the client thread if it sleeps. A panic fails the
// request with EIO.
// offPoll: r runs on a goroutine of its own, counted in c.offPoll until
// just before its completion is published (a QD1 client's next request
// must find the channel idle).
func (c *channel) run(i int, rec []byte, r record, f *file, class int, offPoll bool) {
	res := failed(unix.EIO)
	defer func() {
		if p := recover(); p != nil {
			door.Panicked(c.log, &c.s.stats.panics, "shim: request panicked; failed with EIO", p, "slot", i)
			res = failed(unix.EIO)
		}
		if offPoll {
			c.offPoll.Add(-1)
		}
		c.complete(i, rec, res)
	}()
	t0 := time.Now()
	res = c.exec(f, r)
	a := &c.avgNs[class]
	old := a.Load()
	a.Store(old + (int64(time.Since(t0))-old)/8)
	c.count(r.op, res)
}

// complete publishes res in slot i and wakes the client's thread if it
// sleeps on the slot (a futex on the state word). running is cleared
// first: the client may submit the slot again the moment it sees DONE.
func (c *channel) complete(i int, rec []byte, res result) {
	putLE64(rec[recResult:], uint64(res.value))
	putLE32(rec[recStatus:], res.status)
	putLE32(rec[recReason:], res.reason)
	c.running[i].Store(false)
	state := c.word(pageSize + i*recordLen + recState)
	atomic.StoreUint32(state, slotDone)
	if atomic.LoadUint32(c.word(pageSize+i*recordLen+recWaiting)) != 0 {
		futexWake(state)
	}
	c.served.Add(1)
}

func (c *channel) count(op uint32, res result) {
	st := &c.s.stats
	if op < numOpCodes {
		st.requests[op].Add(1)
		if res.status == statusDone && res.value < 0 {
			st.failed[op].Add(1)
		}
	}
	if res.status == statusFallback && res.reason < numReasons {
		st.fallbacks[res.reason].Add(1)
	}
}

// futexWake wakes every thread waiting on the shared word w (FUTEX_WAKE
// without the private flag: the waiter is another process).
func futexWake(w *uint32) {
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), 1 /* FUTEX_WAKE */, 1<<30, 0, 0, 0)
}

func putLE32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func putLE64(b []byte, v uint64) {
	putLE32(b, uint32(v))
	putLE32(b[4:], uint32(v>>32))
}
