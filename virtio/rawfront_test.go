package virtio

import (
	"encoding/binary"
	"net"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawFront is a hand-driven vhost-user front-end for tests: it sends exactly
// the messages a test lists (QEMU's order, hostile values), lays out guest
// memory in regions of one memfd like QEMU, and runs one request at a time
// on one ring.
type rawFront struct {
	t       *testing.T
	conn    *net.UnixConn
	mc      *msgConn
	memfd   int
	mem     []byte
	regions []memRegion // as told to the target
	kick    int
	call    int
	ring    *driverRing
	ringOff int
	scratch int // memfd offset of a free area for headers, tables, status
}

func newRawFront(t *testing.T, sock string, memSize int) *rawFront {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.MemfdCreate("rawfront", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(memSize)); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	f := &rawFront{t: t, conn: c, mc: newMsgConn(c), memfd: fd, mem: mem, kick: -1, call: -1}
	t.Cleanup(func() {
		c.Close()
		unix.Munmap(mem)
		unix.Close(fd)
		if f.kick >= 0 {
			unix.Close(f.kick)
		}
		if f.call >= 0 {
			unix.Close(f.call)
		}
	})
	return f
}

func (f *rawFront) base() uint64 { return uint64(uintptr(unsafe.Pointer(&f.mem[0]))) }

// region describes memfd bytes [off, off+size) at guest-physical gpa.
func (f *rawFront) region(gpa uint64, off, size int) memRegion {
	return memRegion{GPA: gpa, Size: uint64(size), UVA: f.base() + uint64(off), MmapOffset: uint64(off)}
}

// gpa returns the guest-physical address of memfd offset off.
func (f *rawFront) gpa(off int) uint64 {
	for _, r := range f.regions {
		if uint64(off) >= r.MmapOffset && uint64(off) < r.MmapOffset+r.Size {
			return r.GPA + uint64(off) - r.MmapOffset
		}
	}
	f.t.Fatalf("memfd offset %#x is in no region", off)
	return 0
}

// off returns the memfd offset of guest-physical address gpa.
func (f *rawFront) off(gpa uint64) int {
	for _, r := range f.regions {
		if gpa >= r.GPA && gpa < r.GPA+r.Size {
			return int(r.MmapOffset + gpa - r.GPA)
		}
	}
	f.t.Fatalf("gpa %#x is in no region", gpa)
	return 0
}

func (f *rawFront) dupMemfd() int {
	d, err := unix.Dup(f.memfd)
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

func (f *rawFront) eventfd() int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		f.t.Fatal(err)
	}
	return fd
}

// send sends a message; fds passed are closed afterwards (as QEMU keeps its own).
func (f *rawFront) send(req, flags uint32, payload []byte, fds ...int) {
	f.t.Helper()
	if err := f.mc.write(req, flags, payload, fds); err != nil {
		f.t.Fatal(err)
	}
}

// roundTrip sends a request and returns the reply's payload.
func (f *rawFront) roundTrip(req uint32, payload []byte) []byte {
	f.t.Helper()
	f.send(req, 0, payload)
	return f.reply(req)
}

func (f *rawFront) reply(req uint32) []byte {
	f.t.Helper()
	f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := f.mc.read()
	if err != nil {
		f.t.Fatalf("waiting for %s reply: %v", reqName(req), err)
	}
	if m.Request != req || m.Flags != flagVersion|flagReply {
		f.t.Fatalf("reply %s flags %#x, want %s flags 0x5", reqName(m.Request), m.Flags, reqName(req))
	}
	return m.payload
}

// ack sends with NEED_REPLY and returns the target's u64 status.
func (f *rawFront) ack(req uint32, payload []byte, fds ...int) uint64 {
	f.t.Helper()
	f.send(req, flagNeedReply, payload, fds...)
	p := f.reply(req)
	if len(p) != 8 {
		f.t.Fatalf("%s ack of %d bytes", reqName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

func (f *rawFront) u64(req uint32) uint64 {
	f.t.Helper()
	p := f.roundTrip(req, nil)
	if len(p) != 8 {
		f.t.Fatalf("%s reply of %d bytes", reqName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// startRing lays a zeroed ring of n entries at memfd offset off and sends
// NUM, BASE, ADDR, KICK (new eventfd) and ENABLE, as QEMU does per start.
func (f *rawFront) startRing(n, off int, eventIdx bool) {
	f.t.Helper()
	avail := off + descTableSize(n)
	used := alignUp(avail+availSize(n), pageSize)
	clear(f.mem[off : used+usedSize(n)])
	r, err := newDriverRing(n, f.mem[off:avail], f.mem[avail:used], f.mem[used:used+usedSize(n)], eventIdx)
	if err != nil {
		f.t.Fatal(err)
	}
	f.ring, f.ringOff = r, off
	f.send(reqSetVringNum, 0, encodeVringState(vringState{Index: 0, Num: uint32(n)}))
	f.send(reqSetVringBase, 0, encodeVringState(vringState{Index: 0, Num: 0}))
	f.send(reqSetVringAddr, 0, encodeVringAddr(vringAddr{Index: 0,
		Desc: f.base() + uint64(off), Avail: f.base() + uint64(avail), Used: f.base() + uint64(used)}))
	if f.kick >= 0 {
		unix.Close(f.kick)
	}
	f.kick = f.eventfd()
	f.send(reqSetVringKick, 0, encodeU64(0), f.kick)
	f.send(reqSetVringEnable, 0, encodeVringState(vringState{Index: 0, Num: 1}))
}

func (f *rawFront) setCall() {
	if f.call >= 0 {
		unix.Close(f.call)
	}
	f.call = f.eventfd()
	f.send(reqSetVringCall, 0, encodeU64(0), f.call)
}

// seg is one data buffer: guest-physical address and length.
type seg struct {
	gpa uint64
	n   int
}

// io runs one virtio-blk request with the given data segments (device-
// writable for IN and GET_ID) and returns the status byte and used length.
// Header, status and the indirect table live at f.scratch.
func (f *rawFront) io(typ uint32, sector uint64, data []seg, indirect bool) (byte, uint32) {
	f.t.Helper()
	hdr, status, table := f.scratch, f.scratch+64, f.scratch+128
	binary.LittleEndian.PutUint32(f.mem[hdr:], typ)
	binary.LittleEndian.PutUint32(f.mem[hdr+4:], 0)
	binary.LittleEndian.PutUint64(f.mem[hdr+8:], sector)
	f.mem[status] = 0xff
	descs := []desc{{addr: f.gpa(hdr), len: blkHeaderSize}}
	dflags := uint16(0)
	if typ == blkTypeIn || typ == blkTypeGetID {
		dflags = descFlagWrite
	}
	for _, s := range data {
		descs = append(descs, desc{addr: s.gpa, len: uint32(s.n), flags: dflags})
	}
	descs = append(descs, desc{addr: f.gpa(status), len: 1, flags: descFlagWrite})
	tab, base := f.ring.desc, 0
	if indirect {
		tab = f.mem[table : table+descSize*len(descs)]
	}
	for i, d := range descs {
		if i < len(descs)-1 {
			d.flags |= descFlagNext
			d.next = uint16(base + i + 1)
		}
		writeDesc(tab, base+i, d)
	}
	if indirect {
		writeDesc(f.ring.desc, 0, desc{addr: f.gpa(table), len: uint32(descSize * len(descs)), flags: descFlagIndirect})
	}
	return f.submit(0)
}

// submit publishes head, kicks, and waits for its used element.
func (f *rawFront) submit(head uint16) (byte, uint32) {
	f.t.Helper()
	f.ring.setInterrupts(true)
	if f.ring.publish(head) {
		signalFd(f.kick)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if id, n, ok := f.ring.nextUsed(); ok {
			if id != uint32(head) {
				f.t.Fatalf("used id %d, want %d", id, head)
			}
			return f.mem[f.scratch+64], n
		}
		if time.Now().After(deadline) {
			f.t.Fatal("no completion within 10 s")
		}
		pfd := []unix.PollFd{{Fd: int32(f.call), Events: unix.POLLIN}}
		unix.Poll(pfd, 10)
		if pfd[0].Revents != 0 {
			var b [8]byte
			unix.Read(f.call, b[:])
		}
	}
}
