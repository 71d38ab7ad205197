package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/door"
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
	kick *os.File // the client's kick eventfd, non-blocking (netpoller)
	// running[i] is true while slot i's request runs: a slot submitted
	// again meanwhile is ignored, so a channel runs at most l.slots
	// requests at once.
	running []atomic.Bool

	mu      sync.Mutex
	files   map[uint64]*file
	next    uint64 // the last handle given out
	ready   bool   // the handshake is done (info may read l)
	served  atomic.Uint64
	inf     sync.WaitGroup // requests running
	polling sync.WaitGroup // the poller

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
	c.s.stats.opened.Add(1)
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
		if c.kick != nil {
			c.kick.SetReadDeadline(time.Unix(1, 0))
		}
		c.polling.Wait()
		c.inf.Wait()
		c.cancel()
		c.conn.Close()
		if c.kick != nil {
			c.kick.Close()
		}
		c.mu.Lock()
		for h, f := range c.files {
			f.close()
			delete(c.files, h)
			c.s.stats.handles.Add(-1)
		}
		c.ready = false
		c.mu.Unlock()
		if c.mem != nil {
			unix.Munmap(c.mem)
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
	if _, err := c.conn.Write(encodeHelloOK(0, c.id)); err != nil {
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
	dup, err := unix.FcntlInt(uintptr(evfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Munmap(mem)
		return fmt.Errorf("dup the kick eventfd: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		unix.Munmap(mem)
		return fmt.Errorf("kick eventfd non-blocking: %w", err)
	}
	c.mem, c.l, c.pid = mem, l, max(c.pid, int32(h.PID))
	c.kick = os.NewFile(uintptr(dup), "shim-kick")
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

// poll is the channel's poller: it takes submitted slots and starts their
// requests, and sleeps on the kick eventfd when there are none (after a
// short spin). A fault in the shared memory ends the poller, not the
// gateway.
func (c *channel) poll() {
	defer c.polling.Done()
	defer door.Recover(c.log, &c.s.stats.panics, "shim: panic in a channel's poller", func() { c.conn.Close() })
	debug.SetPanicOnFault(true)
	for {
		if c.stopping.Load() {
			return
		}
		if c.take() > 0 {
			continue
		}
		if !c.wait() {
			return
		}
	}
}

// take claims every submitted slot and starts it; it returns how many.
func (c *channel) take() int {
	n := 0
	for w := 0; w*64 < c.l.slots; w++ {
		set := atomic.SwapUint64(c.bits(w), 0)
		for set != 0 {
			bit := 0
			for set&(1<<bit) == 0 {
				bit++
			}
			set &^= 1 << bit
			if i := w*64 + bit; i < c.l.slots {
				c.start(i)
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

// wait returns when a slot may be submitted (true) or the poller must
// stop (false): it spins for Options.Spin, then announces that it
// sleeps (the header's idle word: clients kick the eventfd only then),
// checks once more and blocks on the eventfd, re-checking every second
// in case a kick was lost.
func (c *channel) wait() bool {
	start := time.Now()
	for i := 1; c.s.opt.Spin > 0; i++ {
		if c.pending() {
			return true
		}
		if i%16 == 0 {
			if c.stopping.Load() {
				return false
			}
			if time.Since(start) > c.s.opt.Spin {
				break
			}
			runtime.Gosched()
		}
	}
	idle := c.word(hdrIdle)
	atomic.StoreUint32(idle, 1)
	defer atomic.StoreUint32(idle, 0)
	var b [8]byte
	for !c.pending() {
		c.kick.SetReadDeadline(time.Now().Add(time.Second))
		if c.stopping.Load() {
			return false
		}
		_, err := c.kick.Read(b[:])
		if c.stopping.Load() {
			return false
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			c.log.Warn("shim: the kick eventfd failed; closing the channel", "err", err)
			c.conn.Close()
			return false
		}
	}
	return true
}

// start runs slot i's request on a goroutine of its own, unless it is
// already running (a client that submits a slot twice).
func (c *channel) start(i int) {
	if !c.running[i].CompareAndSwap(false, true) {
		c.s.stats.bad.Add(1)
		return
	}
	c.inf.Add(1)
	go c.run(i)
}

// run serves slot i: copy the record out, check and execute it, publish
// the completion and wake the client thread if it sleeps.
func (c *channel) run(i int) {
	defer c.inf.Done()
	rec := c.mem[pageSize+i*recordLen : pageSize+(i+1)*recordLen]
	res := result{status: statusDone, value: -int64(unix.EIO)}
	defer func() {
		if p := recover(); p != nil {
			door.Panicked(c.log, &c.s.stats.panics, "shim: request panicked; failed with EIO", p, "slot", i)
			res = result{status: statusDone, value: -int64(unix.EIO)}
		}
		c.complete(i, rec, res)
	}()
	debug.SetPanicOnFault(true)
	if atomic.LoadUint32(c.word(pageSize+i*recordLen+recState)) != slotSubmitted {
		c.s.stats.bad.Add(1)
		res = result{status: statusDone, value: -int64(unix.EINVAL)}
		return
	}
	var copied [recordLen]byte
	copy(copied[:], rec)
	r := decodeRecord(copied[:])
	if c.draining.Load() {
		res = result{status: statusFallback, reason: ReasonGone}
	} else {
		res = c.exec(r)
	}
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
