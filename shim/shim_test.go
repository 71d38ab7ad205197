package shim

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/qos"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// Hostile hellos: each is refused (a HELLO_OK with an errno, or the
// socket closed), counted, and the door serves the next client.
func TestHandshakeRefusals(t *testing.T) {
	s, sock := startServer(t, mounts{})
	kick, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	defer unix.Close(kick)
	pipeR, pipeW, _ := os.Pipe()
	defer pipeR.Close()
	defer pipeW.Close()
	cases := []struct {
		name string
		msg  func(size uint64) []byte
		seal bool
		fds  func(memfd int) []int
	}{
		{"bad magic", func(size uint64) []byte { b := helloMsg(4, 64<<10, size); b[0] ^= 0xff; return b }, true, nil},
		{"bad version", func(size uint64) []byte { b := helloMsg(4, 64<<10, size); b[6] = 9; return b }, true, nil},
		{"short", func(size uint64) []byte { return helloMsg(4, 64<<10, size)[:20] }, true, nil},
		{"no fds", func(size uint64) []byte { return helloMsg(4, 64<<10, size) }, true, func(int) []int { return nil }},
		{"unsealed memfd", func(size uint64) []byte { return helloMsg(4, 64<<10, size) }, false, nil},
		{"size lies", func(size uint64) []byte { return helloMsg(4, 64<<10, size*2) }, true, nil},
		{"zero slots", func(size uint64) []byte { return helloMsg(0, 64<<10, size) }, true, nil},
		{"too many slots", func(size uint64) []byte { return helloMsg(MaxSlots+1, 64<<10, size) }, true, nil},
		{"odd slot data", func(size uint64) []byte { return helloMsg(4, 64<<10+1, size) }, true, nil},
		{"geometry not the memfd's", func(size uint64) []byte { return helloMsg(2, 64<<10, size) }, true, nil},
		{"kick is a pipe", func(size uint64) []byte { return helloMsg(4, 64<<10, size) }, true, func(m int) []int { return []int{m, int(pipeW.Fd())} }},
		{"memory is a pipe", func(size uint64) []byte { return helloMsg(4, 64<<10, size) }, true, func(m int) []int { return []int{int(pipeW.Fd()), kick} }},
		{"register first", func(uint64) []byte { b := make([]byte, registerLen); putHeader(b, msgRegister); return b }, true, func(m int) []int { return []int{m} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().ProtocolErrors
			memfd, _, l := newMemfd(t, 4, 64<<10, tc.seal)
			defer unix.Close(memfd)
			fds := []int{memfd, kick}
			if tc.fds != nil {
				fds = tc.fds(memfd)
			}
			c := dial(t, sock)
			send(t, c, tc.msg(uint64(l.size)), fds...)
			if r := reply(t, c); r != nil && (len(r) != helloOKLen || binary.LittleEndian.Uint32(r[8:]) == 0) {
				t.Fatalf("accepted: %x", r)
			}
			testwait.For(t, "the refusal counted", func() bool { return s.Stats().ProtocolErrors > before })
		})
	}
	connect(t, sock) // and a good client is served
	if st := s.Stats(); st.ChannelsOpened != 1 {
		t.Fatalf("channels opened %d, want 1", st.ChannelsOpened)
	}
}

// The data calls through the ring, checked against the mount.
func TestRequests(t *testing.T) {
	v := openVolume(t)
	m := mountVolume(t, v)
	s, sock := startServer(t, mounts{[]*fuse.Mount{m}})
	c := connect(t, sock)
	if err := os.Mkdir(filepath.Join(m.Dir, "db"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(m.Dir, "db", "f")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := c.register(int(f.Fd()))
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	if r.Reason != ReasonNone || r.Flags != regReadable|regWritable || r.Ino != st.Ino || r.Dev != st.Dev {
		t.Fatalf("register: %+v; the kernel says dev %d ino %d", r, st.Dev, st.Ino)
	}
	payload := bytes.Repeat([]byte("sluice!"), 1000)
	if status, _, n := c.do(req{op: opWrite, handle: r.Handle, offset: 4096, length: int64(len(payload))}, payload); status != statusDone || n != int64(len(payload)) {
		t.Fatalf("write: status %d result %d", status, n)
	}
	// A durable write (pwritev2's RWF_DSYNC) of the same bytes.
	if status, _, n := c.do(req{op: opWrite, arg: writeFUA, handle: r.Handle, offset: 4096, length: int64(len(payload))}, payload); status != statusDone || n != int64(len(payload)) {
		t.Fatalf("FUA write: status %d result %d", status, n)
	}
	// Through the mount, as another process would read it.
	got, err := os.ReadFile(path)
	if err != nil || len(got) != 4096+len(payload) || !bytes.Equal(got[4096:], payload) || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("the mount reads %d bytes (err %v), want the shim's write", len(got), err)
	}
	// A write through the mount is read through the ring.
	if _, err := f.WriteAt([]byte("MOUNT"), 10); err != nil {
		t.Fatal(err)
	}
	if _, _, n := c.do(req{op: opRead, handle: r.Handle, offset: 8, length: 10}, nil); n != 10 || string(c.data()[:10]) != "\x00\x00MOUNT\x00\x00\x00" {
		t.Fatalf("read: %d %q", n, c.data()[:10])
	}
	if _, _, n := c.do(req{op: opRead, handle: r.Handle, offset: 1 << 20, length: 100}, nil); n != 0 {
		t.Fatalf("read past the end: %d, want 0", n)
	}
	if _, _, n := c.do(req{op: opFstat, handle: r.Handle, length: statLen}, nil); n != statLen ||
		binary.LittleEndian.Uint64(c.data()[8:]) != uint64(4096+len(payload)) || binary.LittleEndian.Uint64(c.data()) != st.Ino {
		t.Fatalf("fstat: %d, size %d", n, binary.LittleEndian.Uint64(c.data()[8:]))
	}
	for _, op := range []uint32{opFsync, opFdatasync} {
		if status, _, n := c.do(req{op: op, handle: r.Handle}, nil); status != statusDone || n != 0 {
			t.Fatalf("%s: %d", opName(op), n)
		}
	}
	if _, _, n := c.do(req{op: opFtruncate, handle: r.Handle, length: 100}, nil); n != 0 {
		t.Fatalf("ftruncate: %d", n)
	}
	if fi, _ := os.Stat(path); fi.Size() != 100 {
		t.Fatalf("size through the mount after ftruncate: %d (the write of the length settles the kernel's cache)", fi.Size())
	}
	if _, _, n := c.do(req{op: opFallocate, handle: r.Handle, offset: 0, length: 8192}, nil); n != 0 {
		t.Fatalf("fallocate: %d", n)
	}
	if _, _, n := c.do(req{op: opFallocate, arg: unix.FALLOC_FL_COLLAPSE_RANGE, handle: r.Handle, length: 4096}, nil); n != -int64(unix.EOPNOTSUPP) {
		t.Fatalf("fallocate collapse: %d, want -EOPNOTSUPP", n)
	}
	// The requests were the shim door's, labelled with the file's path.
	if p := c.files(t, s, r.Handle).path(); p != "db/f" {
		t.Errorf("path %q, want db/f", p)
	}
	if err := os.Rename(path, filepath.Join(m.Dir, "db", "g")); err != nil {
		t.Fatal(err)
	}
	if p := c.files(t, s, r.Handle).path(); p != "db/g" {
		t.Errorf("path after a rename %q, want db/g", p)
	}
	shimOps := 0
	for _, o := range v.Stats() {
		if o.Door == "shim" {
			shimOps += int(o.Ops)
		}
	}
	// write twice, read, fsync, fdatasync, ftruncate, fallocate: the read
	// past the end, fstat and the refused mode never reach Volume.Do.
	if shimOps != 7 {
		t.Errorf("the volume counted %d shim requests, want 7", shimOps)
	}
}

// files finds the channel's registered file of handle h.
func (c *client) files(t *testing.T, s *Server, h uint64) *file {
	t.Helper()
	for _, ch := range s.door.Conns() {
		if f := ch.file(h); f != nil {
			return f
		}
	}
	t.Fatalf("no channel holds handle %d", h)
	return nil
}

// Refusals at registration, and what a registered fd may not do.
func TestRegisterRefusals(t *testing.T) {
	v := openVolume(t)
	m := mountVolume(t, v)
	s, sock := startServer(t, mounts{[]*fuse.Mount{m}})
	c := connect(t, sock)
	path := filepath.Join(m.Dir, "f")
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(flags int) int {
		fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	local, err := os.Create(filepath.Join(t.TempDir(), "local"))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	mdir, _ := unix.Open(m.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	defer unix.Close(mdir)
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	for _, tc := range []struct {
		name string
		fd   int
		want uint32
	}{
		{"a file not on a sluice mount", int(local.Fd()), ReasonNotSluice},
		{"O_APPEND", open(unix.O_WRONLY | unix.O_APPEND), ReasonAppend},
		{"O_PATH", open(unix.O_PATH), ReasonPath},
		{"a directory of the mount", mdir, ReasonNotRegular},
		{"a pipe", int(pw.Fd()), ReasonNotRegular},
	} {
		if r := c.register(tc.fd); r.Reason != tc.want || r.Handle != 0 {
			t.Errorf("%s: %+v, want reason %s", tc.name, r, ReasonName(tc.want))
		}
	}
	if st := s.Stats(); st.Refused["not_sluice"] != 1 || st.Refused["o_append"] != 1 || st.Refused["not_regular"] != 2 || st.Handles != 0 {
		t.Errorf("stats %+v", st)
	}
	// A read-only fd reads but cannot write, truncate or allocate (the
	// kernel's errnos); a write-only fd cannot read.
	ro := c.register(open(unix.O_RDONLY))
	if ro.Reason != ReasonNone || ro.Flags != regReadable {
		t.Fatalf("read-only fd: %+v", ro)
	}
	if _, _, n := c.do(req{op: opRead, handle: ro.Handle, length: 4}, nil); n != 4 || string(c.data()[:4]) != "data" {
		t.Fatalf("read on a read-only fd: %d", n)
	}
	for _, tc := range []struct {
		r    req
		want unix.Errno
	}{
		{req{op: opWrite, handle: ro.Handle, length: 4}, unix.EBADF},
		{req{op: opFtruncate, handle: ro.Handle, length: 0}, unix.EINVAL},
		{req{op: opFallocate, handle: ro.Handle, length: 4096}, unix.EBADF},
	} {
		if _, _, n := c.do(tc.r, []byte("XXXX")); n != -int64(tc.want) {
			t.Errorf("%s on a read-only fd: %d, want -%v", opName(tc.r.op), n, tc.want)
		}
	}
	wo := c.register(open(unix.O_WRONLY))
	if _, _, n := c.do(req{op: opRead, handle: wo.Handle, length: 4}, nil); n != -int64(unix.EBADF) {
		t.Errorf("read on a write-only fd: %d, want -EBADF", n)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Fatalf("the file holds %q after refused writes", b)
	}
	fd := open(unix.O_RDWR)
	rw := c.register(fd)
	// Unregister lets the gateway's copy go.
	b := make([]byte, unregisterLen)
	putHeader(b, msgUnregister)
	binary.LittleEndian.PutUint64(b[8:], rw.Handle)
	send(t, c.conn, b)
	testwait.For(t, "the handle released", func() bool { return s.Stats().Handles == 2 })
	if status, reason, _ := c.do(req{op: opRead, handle: rw.Handle, length: 4}, nil); status != statusFallback || reason != ReasonStale {
		t.Errorf("a request on an unregistered handle: status %d reason %s, want fall back (stale_handle)", status, ReasonName(reason))
	}
}

// Hostile requests fail EINVAL (or fall back), never touch memory outside
// the data regions, and leave the channel serving.
func TestHostileRequests(t *testing.T) {
	s, c, f := serveOneFile(t, openVolume(t))
	h := c.register(int(f.Fd())).Handle
	end := uint64(c.l.size)
	for _, tc := range []struct {
		name string
		r    req
	}{
		{"data in the header", req{op: opRead, handle: h, length: 16, data: 8}},
		{"data in the records", req{op: opWrite, handle: h, length: 16, data: pageSize + 8}},
		{"data past the end", req{op: opRead, handle: h, length: 16, data: end - 8}},
		{"data offset wraps", req{op: opRead, handle: h, length: 16, data: math.MaxUint64 - 4}},
		{"longer than a slot", req{op: opWrite, handle: h, length: int64(c.l.slotData) + 1}},
		{"negative length", req{op: opRead, handle: h, length: -1}},
		{"negative offset", req{op: opWrite, handle: h, offset: -4096, length: 16}},
		{"offset overflows", req{op: opWrite, handle: h, offset: math.MaxInt64 - 2, length: 16}},
		{"stat into the header", req{op: opFstat, handle: h, data: 16}},
		{"negative truncate", req{op: opFtruncate, handle: h, length: -1}},
		{"fallocate nothing", req{op: opFallocate, handle: h, length: 0}},
		{"write with an unknown flag", req{op: opWrite, arg: writeFUA << 1, handle: h, length: 16}},
		{"unknown op", req{op: 99, handle: h}},
	} {
		hdr := append([]byte(nil), c.mem[:pageSize]...)
		if status, _, n := c.do(tc.r, nil); status != statusDone || n != -int64(unix.EINVAL) {
			t.Errorf("%s: status %d result %d, want -EINVAL", tc.name, status, n)
		}
		hdr2 := c.mem[:pageSize]
		if !bytes.Equal(hdr[:hdrIdle], hdr2[:hdrIdle]) || !bytes.Equal(hdr[hdrIdle+4:], hdr2[hdrIdle+4:]) {
			t.Errorf("%s: the header changed", tc.name)
		}
	}
	if status, reason, _ := c.do(req{op: opRead, handle: 12345, length: 4}, nil); status != statusFallback || reason != ReasonStale {
		t.Errorf("unknown handle: status %d reason %s", status, ReasonName(reason))
	}
	if fi, _ := f.Stat(); fi.Size() != 0 {
		t.Errorf("hostile requests changed the file: %d bytes", fi.Size())
	}
	// A slot submitted without its state (a bit set, state free) is
	// answered EINVAL; the channel still serves.
	var one [8]byte
	one[0] = 1
	before := s.Stats().ProtocolErrors
	c.mem[hdrSubmitted] |= 1 << 1
	unix.Write(c.kick, one[:])
	testwait.For(t, "the bad slot counted", func() bool { return s.Stats().ProtocolErrors > before })
	if _, _, n := c.do(req{op: opWrite, handle: h, length: 3}, []byte("ok!")); n != 3 {
		t.Fatalf("the channel stopped serving: %d", n)
	}
	// The client going away releases its channel and handles.
	c.conn.Close()
	testwait.For(t, "the channel closed", func() bool { st := s.Stats(); return st.Channels == 0 && st.Handles == 0 })
}

// The length table: a registered file's length is in the word REGISTERED
// names, kept current by writes and truncates through the ring and
// through the mount (another process's), before they return; the client
// can map the table only read-only.
func TestLengthTable(t *testing.T) {
	v := openVolume(t)
	m := mountVolume(t, v)
	_, sock := startServer(t, mounts{[]*fuse.Mount{m}})
	c := connect(t, sock)
	path := filepath.Join(m.Dir, "rel")
	if err := os.WriteFile(path, make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := c.register(int(f.Fd()))
	if r.Reason != ReasonNone || r.LengthWord == 0 {
		t.Fatalf("register: %+v, want a length word", r)
	}
	if n := c.length(r.LengthWord); n != 8192 {
		t.Fatalf("word at registration %d, want 8192", n)
	}
	payload := []byte("an extending write through the ring")
	if _, _, n := c.do(req{op: opWrite, handle: r.Handle, offset: 10000, length: int64(len(payload))}, payload); n != int64(len(payload)) {
		t.Fatalf("write: %d", n)
	}
	if n := c.length(r.LengthWord); n != 10000+int64(len(payload)) {
		t.Fatalf("word after the ring's write %d, want %d", n, 10000+len(payload))
	}
	// Another process's write through the mount: the word moves before
	// its write returns.
	g, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("x"), 1<<20); err != nil {
		t.Fatal(err)
	}
	g.Close()
	if n := c.length(r.LengthWord); n != 1<<20+1 {
		t.Fatalf("word after the mount's write %d, want %d", n, 1<<20+1)
	}
	if _, _, n := c.do(req{op: opFtruncate, handle: r.Handle, length: 100}, nil); n != 0 {
		t.Fatalf("ftruncate: %d", n)
	}
	if n := c.length(r.LengthWord); n != 100 {
		t.Fatalf("word after ftruncate %d, want 100", n)
	}
	if err := os.Truncate(path, 50); err != nil {
		t.Fatal(err)
	}
	if n := c.length(r.LengthWord); n != 50 {
		t.Fatalf("word after a truncate through the mount %d, want 50", n)
	}
	// Read-only for the client: no writable mapping, no write(2).
	if _, err := unix.Mmap(c.lensFd, 0, len(c.lens), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Fatal("the client mapped the length table writable")
	}
	if _, err := unix.Pwrite(c.lensFd, []byte{1}, 8); err == nil {
		t.Fatal("the client wrote to the length table")
	}
}

// A request alone on an idle channel runs on the poller while its class
// averages under 10x InlineBelow (a hand-off would only add a wake-up);
// above that, beside a request running off the poller, or on a volume a
// QoS rule routes (a throttled request would hold the poller), it runs
// on a goroutine of its own. Under InlineBelow it runs inline anyway.
func TestIdleChannelInline(t *testing.T) {
	g, v := openGatewayVolume(t)
	s, c, f := serveOneFile(t, v)
	r := c.register(int(f.Fd()))
	chans := s.door.Conns()
	if len(chans) != 1 {
		t.Fatalf("%d channels", len(chans))
	}
	ch := chans[0]
	payload := bytes.Repeat([]byte("x"), 4096)
	check := func(what string, avg time.Duration, inline bool) {
		t.Helper()
		ch.avgNs[classWrite].Store(int64(avg))
		before := s.stats.inline.Load()
		if status, _, n := c.do(req{op: opWrite, handle: r.Handle, length: int64(len(payload))}, payload); status != statusDone || n != int64(len(payload)) {
			t.Fatalf("%s: write: status %d result %d", what, status, n)
		}
		if got := s.stats.inline.Load() > before; got != inline {
			t.Errorf("%s, writes averaging %v: inline %v, want %v", what, avg, got, inline)
		}
	}
	check("idle", 5*time.Microsecond, true)
	check("idle", 100*time.Microsecond, true)
	check("idle", 300*time.Microsecond, false)
	ch.offPoll.Add(1) // as if another request ran on a goroutine
	check("not idle", 100*time.Microsecond, false)
	check("not idle", 5*time.Microsecond, true)
	ch.offPoll.Add(-1)
	if _, err := g.SetQoSRule(context.Background(), gateway.QoSRule{Tenant: "t", Volume: "fs", Limits: qos.Limits{IOPS: 1e9}}); err != nil {
		t.Fatal(err)
	}
	check("QoS-routed", 100*time.Microsecond, false)
	check("QoS-routed", 5*time.Microsecond, true)
}

// serveOneFile starts a server on v mounted, connects a channel and
// opens a file "f" on the mount (closed when the test ends).
func serveOneFile(t *testing.T, v *gateway.Volume) (*Server, *client, *os.File) {
	t.Helper()
	m := mountVolume(t, v)
	s, sock := startServer(t, mounts{[]*fuse.Mount{m}})
	c := connect(t, sock)
	f, err := os.OpenFile(filepath.Join(m.Dir, "f"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return s, c, f
}

// TestReleasedWord: once the client closes its socket the gateway lets go
// of the channel and says so in the header's released word; a client
// thread waiting on a slot of a channel it retired waits for that (or
// the answer) before it falls back, so a request still submitted cannot
// run after the kernel's copy of it.
func TestReleasedWord(t *testing.T) {
	_, sock := startServer(t, mounts{})
	c := connect(t, sock)
	released := (*uint32)(unsafe.Pointer(&c.mem[hdrReleased]))
	if atomic.LoadUint32(released) != 0 {
		t.Fatal("released set on a live channel")
	}
	c.conn.Close()
	testwait.For(t, "the released word", func() bool { return atomic.LoadUint32(released) == 1 })
}
