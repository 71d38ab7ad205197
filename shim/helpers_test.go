package shim

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/testwait"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openVolume opens a gateway on a temporary directory with one fs volume.
func openVolume(t testing.TB) *gateway.Volume {
	t.Helper()
	_, v := openGatewayVolume(t)
	return v
}

// openGatewayVolume is openVolume with its gateway (to set rules).
func openGatewayVolume(t testing.TB) (*gateway.Gateway, *gateway.Volume) {
	t.Helper()
	ctx := context.Background()
	g, err := gateway.Open(ctx, gateway.Config{DataDir: t.TempDir(), PoolSize: 256 << 20, AutomationInterval: -1, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	if _, err := g.CreateVolume(ctx, gateway.CreateOptions{Tenant: "t", Name: "fs", Kind: gateway.KindFS, Size: 128 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := g.Volume("t/fs")
	if err != nil {
		t.Fatal(err)
	}
	return g, v
}

// mounts is the FUSE door's mounts as the gateway command adapts them.
type mounts struct{ ms []*fuse.Mount }

func (m mounts) ByDevice(dev uint64) (Mount, bool) {
	for _, mt := range m.ms {
		if mt.Dev == dev {
			return Mount{Dir: mt.Dir, Volume: mt.Vol(), ReadOnly: mt.ReadOnly(), Renames: mt.Renames, Settle: mt.Settle}, true
		}
	}
	return Mount{}, false
}

// mountVolume mounts v with the FUSE door in this process. It needs root
// and /dev/fuse: without them the test is skipped, except under CI=true
// (where the integration tests mount too), where it fails.
func mountVolume(t *testing.T, v *gateway.Volume) *fuse.Mount {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("a FUSE mount needs root and /dev/fuse; CI=true requires them")
		}
		t.Skip("a FUSE mount needs root and /dev/fuse")
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := fuse.MountVolume(context.Background(), v, dir, fuse.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
		m.Wait()
	})
	return m
}

// startServer serves mounts on a socket in a temporary directory.
func startServer(t *testing.T, ms Mounts) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "shim.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ms, Options{Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.Serve(ctx, l)
		close(done)
	}()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		cancel()
		<-done
	})
	return s, sock
}

// client is a test's side of a channel, written from docs/SHIM.md.
type client struct {
	t    *testing.T
	conn *net.UnixConn
	mem  []byte
	kick int
	l    layout
	// The gateway's length table, mapped read-only.
	lensFd int
	lens   []byte
}

// newMemfd makes a sealed memfd of the geometry's size with its header.
func newMemfd(t *testing.T, slots, slotData uint32, seal bool) (int, []byte, layout) {
	t.Helper()
	l := layout{slots: int(slots), slotData: int(slotData)}
	l.dataStart = pageSize + (l.slots*recordLen+pageSize-1)/pageSize*pageSize
	l.size = l.dataStart + l.slots*l.slotData
	fd, err := unix.MemfdCreate("shim-test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Ftruncate(fd, int64(l.size)); err != nil {
		t.Fatal(err)
	}
	if seal {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := unix.Mmap(fd, 0, l.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	le := binary.LittleEndian
	le.PutUint32(mem[hdrMagic:], shmMagic)
	le.PutUint32(mem[hdrVersion:], Version)
	le.PutUint32(mem[hdrSlots:], slots)
	le.PutUint32(mem[hdrSlotData:], slotData)
	le.PutUint64(mem[hdrSize:], uint64(l.size))
	return fd, mem, l
}

func helloMsg(slots, slotData uint32, size uint64) []byte {
	b := make([]byte, helloLen)
	putHeader(b, msgHello)
	le := binary.LittleEndian
	le.PutUint32(b[8:], slots)
	le.PutUint32(b[12:], slotData)
	le.PutUint64(b[16:], size)
	le.PutUint32(b[24:], uint32(os.Getpid()))
	return b
}

func dial(t *testing.T, sock string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func send(t *testing.T, c *net.UnixConn, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
}

// reply reads one message; nil when the gateway closed the socket.
func reply(t *testing.T, c *net.UnixConn) []byte {
	t.Helper()
	b := make([]byte, 128)
	n, err := c.Read(b)
	if err != nil || n == 0 {
		return nil
	}
	return b[:n]
}

// connect opens a channel with a good hello.
func connect(t *testing.T, sock string) *client {
	t.Helper()
	memfd, mem, l := newMemfd(t, 4, 64<<10, true)
	defer unix.Close(memfd)
	kick, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(kick) })
	c := &client{t: t, conn: dial(t, sock), mem: mem, kick: kick, l: l}
	send(t, c.conn, helloMsg(4, 64<<10, uint64(l.size)), memfd, kick)
	r, oob := make([]byte, 128), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.conn.ReadMsgUnix(r, oob)
	if err != nil || n != helloOKLen || binary.LittleEndian.Uint16(r[4:]) != msgHelloOK || binary.LittleEndian.Uint32(r[8:]) != 0 {
		t.Fatalf("hello refused: %x (%v)", r[:n], err)
	}
	// The length table's memfd, mapped read-only as the library does.
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("HELLO_OK without the length table: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("HELLO_OK's fds: %v %v", fds, err)
	}
	c.lensFd = fds[0]
	t.Cleanup(func() { unix.Close(c.lensFd) })
	var st unix.Stat_t
	if err := unix.Fstat(c.lensFd, &st); err != nil {
		t.Fatal(err)
	}
	if c.lens, err = unix.Mmap(c.lensFd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(c.lens) })
	return c
}

// length is word i of the client's length table.
func (c *client) length(i uint32) int64 {
	return int64(atomic.LoadUint64((*uint64)(unsafe.Pointer(&c.lens[8*int(i)]))))
}

// register hands fd over and returns the gateway's answer.
func (c *client) register(fd int) registered {
	c.t.Helper()
	b := make([]byte, registerLen)
	putHeader(b, msgRegister)
	binary.LittleEndian.PutUint32(b[8:], uint32(fd))
	send(c.t, c.conn, b, fd)
	r := reply(c.t, c.conn)
	if len(r) != registeredLen {
		c.t.Fatalf("register: reply %x", r)
	}
	le := binary.LittleEndian
	return registered{Reason: le.Uint32(r[8:]), Flags: le.Uint32(r[12:]), Handle: le.Uint64(r[16:]), Dev: le.Uint64(r[24:]), Ino: le.Uint64(r[32:]),
		LengthWord: le.Uint32(r[40:])}
}

// req is one request as a client writes it into a slot.
type req struct {
	op, arg        uint32
	handle         uint64
	offset, length int64
	data           uint64 // 0: the slot's own data region
}

// do runs r in slot 0 (with data in, for writes) and returns the
// completion: status, reason, result.
func (c *client) do(r req, in []byte) (uint32, uint32, int64) {
	c.t.Helper()
	const i = 0
	rec := c.mem[pageSize+i*recordLen : pageSize+(i+1)*recordLen]
	if r.data == 0 {
		r.data = uint64(c.l.dataStart + i*c.l.slotData)
	}
	if in != nil {
		copy(c.mem[r.data:], in)
	}
	le := binary.LittleEndian
	le.PutUint32(rec[recOp:], r.op)
	le.PutUint32(rec[recArg:], r.arg)
	le.PutUint64(rec[recHandle:], r.handle)
	le.PutUint64(rec[recOffset:], uint64(r.offset))
	le.PutUint64(rec[recLength:], uint64(r.length))
	le.PutUint64(rec[recData:], r.data)
	state := (*uint32)(unsafe.Pointer(&rec[recState]))
	atomic.StoreUint32(state, slotSubmitted)
	atomic.OrUint64((*uint64)(unsafe.Pointer(&c.mem[hdrSubmitted])), 1<<i)
	var one [8]byte
	one[0] = 1
	unix.Write(c.kick, one[:])
	testwait.For(c.t, "the request's completion", func() bool { return atomic.LoadUint32(state) == slotDone })
	atomic.StoreUint32(state, slotFree)
	return le.Uint32(rec[recStatus:]), le.Uint32(rec[recReason:]), int64(le.Uint64(rec[recResult:]))
}

// data is the slot-0 data region.
func (c *client) data() []byte { return c.mem[c.l.dataStart : c.l.dataStart+c.l.slotData] }
