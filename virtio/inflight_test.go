package virtio

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// Guest layout of the inflight tests' raw front-end (one region, GPA =
// memfd offset): the ring at 1 MiB, per-request header, status and
// indirect table at 2 MiB + 256·slot, data at 4 MiB + 4 KiB·slot.
const (
	ifRing    = 0x100000
	ifScratch = 0x200000
	ifData    = 0x400000
	ifSize    = 128
)

// inflightHandshake negotiates like QEMU 7.2 with INFLIGHT_SHMFD, Linux's
// features and one memory region.
func inflightHandshake(t *testing.T, f *rawFront) {
	t.Helper()
	features := f.u64(reqGetFeatures)
	pf := f.u64(reqGetProtocolFeatures)
	if pf&bit(protoInflightShmfd) == 0 {
		t.Fatalf("INFLIGHT_SHMFD not offered (%#x)", pf)
	}
	f.send(reqSetProtocolFeatures, 0, encodeU64(pf))
	f.send(reqSetOwner, 0, nil)
	f.send(reqSetFeatures, 0, encodeU64(qemuFeaturesLinux&features))
	f.setCall()
	f.regions = []memRegion{f.region(0, 0, len(f.mem))}
	if st := f.ack(reqSetMemTable, encodeMemTable(f.regions), f.dupMemfd()); st != 0 {
		t.Fatalf("SET_MEM_TABLE: %d", st)
	}
	f.scratch = ifScratch
}

// getInflight sends GET_INFLIGHT_FD and maps the region it returns.
func getInflight(t *testing.T, f *rawFront, queues, size uint16) (inflightMsg, int, []byte) {
	t.Helper()
	f.send(reqGetInflightFd, 0, encodeInflight(inflightMsg{NumQueues: queues, QueueSize: size}))
	f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, err := f.mc.read()
	if err != nil || m.Request != reqGetInflightFd || len(m.fds) != 1 {
		t.Fatalf("GET_INFLIGHT_FD reply: %v (request %d, %d fds)", err, m.Request, len(m.fds))
	}
	rep, err := decodeInflight(m)
	if err != nil {
		t.Fatal(err)
	}
	if rep.MmapSize != uint64(queues)*uint64(inflightQueueBytes(int(size))) || rep.NumQueues != queues || rep.QueueSize != size {
		t.Fatalf("GET_INFLIGHT_FD reply %+v", rep)
	}
	fd := m.fds[0]
	region, err := unix.Mmap(fd, int64(rep.MmapOffset), int(rep.MmapSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(region); unix.Close(fd) })
	return rep, fd, region
}

func setInflight(t *testing.T, f *rawFront, i inflightMsg, fd int) {
	t.Helper()
	d, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	if st := f.ack(reqSetInflightFd, encodeInflight(i), d); st != 0 {
		t.Fatalf("SET_INFLIGHT_FD refused")
	}
}

// startRingAt starts queue 0 over the ring at ifRing with the given base,
// keeping the ring's contents (a restarted front-end's ring); the driver
// side continues at availIdx and lastUsed.
func startRingAt(t *testing.T, f *rawFront, base, availIdx, lastUsed uint16) {
	t.Helper()
	avail := ifRing + descTableSize(ifSize)
	used := alignUp(avail+availSize(ifSize), pageSize)
	r, err := newDriverRing(ifSize, f.mem[ifRing:avail], f.mem[avail:used], f.mem[used:used+usedSize(ifSize)], true)
	if err != nil {
		t.Fatal(err)
	}
	r.availIdx, r.lastUsed = availIdx, lastUsed
	f.ring, f.ringOff = r, ifRing
	f.send(reqSetVringNum, 0, encodeVringState(vringState{Num: ifSize}))
	f.send(reqSetVringBase, 0, encodeVringState(vringState{Num: uint32(base)}))
	f.send(reqSetVringAddr, 0, encodeVringAddr(vringAddr{
		Desc: f.base() + ifRing, Avail: f.base() + uint64(avail), Used: f.base() + uint64(used)}))
	if f.kick >= 0 {
		unix.Close(f.kick)
	}
	f.kick = f.eventfd()
	f.send(reqSetVringKick, 0, encodeU64(0), f.kick)
	if st := f.ack(reqSetVringEnable, encodeVringState(vringState{Num: 1})); st != 0 {
		t.Fatal("SET_VRING_ENABLE refused")
	}
}

// layWrite lays a 4 KiB write of byte fill to sector as head's request
// (an indirect table in its slot) and returns the data.
func layWrite(f *rawFront, head uint16, sector uint64, fill byte) []byte {
	slot := int(head)
	hdr, status, table, data := ifScratch+256*slot, ifScratch+256*slot+64, ifScratch+256*slot+128, ifData+4096*slot
	binary.LittleEndian.PutUint32(f.mem[hdr:], blkTypeOut)
	binary.LittleEndian.PutUint32(f.mem[hdr+4:], 0)
	binary.LittleEndian.PutUint64(f.mem[hdr+8:], sector)
	f.mem[status] = 0xff
	buf := f.mem[data : data+4096]
	for i := range buf {
		buf[i] = fill
	}
	tab := f.mem[table : table+3*descSize]
	writeDesc(tab, 0, desc{addr: uint64(hdr), len: blkHeaderSize, flags: descFlagNext, next: 1})
	writeDesc(tab, 1, desc{addr: uint64(data), len: 4096, flags: descFlagNext, next: 2})
	writeDesc(tab, 2, desc{addr: uint64(status), len: 1, flags: descFlagWrite})
	writeDesc(f.ring.desc, int(head), desc{addr: uint64(table), len: 3 * descSize, flags: descFlagIndirect})
	return bytes.Clone(buf)
}

func statusOf(f *rawFront, head uint16) byte { return f.mem[ifScratch+256*int(head)+64] }

// publish makes heads available and kicks.
func publish(f *rawFront, heads ...uint16) {
	f.ring.setInterrupts(true)
	for _, h := range heads {
		f.ring.publish(h)
	}
	signalFd(f.kick)
}

// collect waits for n used elements and returns their ids in used order.
func collect(t *testing.T, f *rawFront, n int) []uint16 {
	t.Helper()
	var ids []uint16
	testwait.For(t, "completions", func() bool {
		for {
			id, _, ok := f.ring.nextUsed()
			if !ok {
				return len(ids) >= n
			}
			ids = append(ids, uint16(id))
		}
	})
	return ids
}

// writeGate holds writes while armed; released, it fails them without
// writing (the process they ran in is, for the test, dead).
type writeGate struct {
	*memExport
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (g *writeGate) Do(ctx context.Context, req *gateway.Request) error {
	if req.Op == gateway.OpWrite && g.armed.Load() {
		g.entered <- struct{}{}
		<-g.release
		return errors.New("writeGate: the back-end died")
	}
	return g.memExport.Do(ctx, req)
}

func regionQueue(region []byte) *inflightQueue {
	return &inflightQueue{b: region[:inflightQueueBytes(ifSize)], size: ifSize}
}

// TestInflightTracking: GET_INFLIGHT_FD gives a zeroed, sized memfd; a
// request held in the export is marked in it (inflight 1, a counter), and
// once completed its mark is cleared, last_batch_head names it and used_idx
// follows used.idx.
func TestInflightTracking(t *testing.T) {
	g := &writeGate{memExport: newMemExport(1 << 20), entered: make(chan struct{}, 4), release: make(chan struct{})}
	_, sock := startServer(t, g, ServerOptions{InlineBelow: -1})
	f := newRawFront(t, sock, 8<<20)
	inflightHandshake(t, f)
	rep, fd, region := getInflight(t, f, 1, ifSize)
	if !bytes.Equal(region, make([]byte, len(region))) {
		t.Fatal("a new inflight region is not zeroed")
	}
	setInflight(t, f, rep, fd)
	startRingAt(t, f, 0, 0, 0)
	q := regionQueue(region)
	testwait.For(t, "the region initialized", func() bool { return q.u16(inflightOffVersion) == inflightVersion })
	if q.u16(inflightOffDescNum) != ifSize {
		t.Errorf("desc_num %d", q.u16(inflightOffDescNum))
	}
	for i := range uint16(3) {
		layWrite(f, i, uint64(i)*8, byte(i+1))
		publish(f, i)
		if ids := collect(t, f, 1); ids[0] != i || statusOf(f, i) != blkStatusOK {
			t.Fatalf("request %d: ids %v status %d", i, ids, statusOf(f, i))
		}
		if q.flag(i) != 0 || q.count(i) != uint64(i) || q.u16(inflightOffLastBatch) != i || q.u16(inflightOffUsedIdx) != i+1 {
			t.Fatalf("after request %d: inflight %d counter %d last_batch_head %d used_idx %d", i,
				q.flag(i), q.count(i), q.u16(inflightOffLastBatch), q.u16(inflightOffUsedIdx))
		}
	}
	g.armed.Store(true)
	layWrite(f, 5, 80, 9)
	publish(f, 5)
	<-g.entered
	if q.flag(5) != 1 || q.count(5) != 3 {
		t.Errorf("a request in the export: inflight %d counter %d, want 1 and 3", q.flag(5), q.count(5))
	}
	close(g.release)
	collect(t, f, 1)
	if q.flag(5) != 0 || q.u16(inflightOffUsedIdx) != 4 {
		t.Errorf("after completion: inflight %d used_idx %d", q.flag(5), q.u16(inflightOffUsedIdx))
	}
}

// TestInflightResubmitAfterDeath emulates a SIGKILL: two writes are held in
// back-end A's export while the test copies guest memory and the inflight
// region (what a killed process leaves behind), then A is let go and the
// copies put back. Back-end B, given the region with SET_INFLIGHT_FD and
// the base QEMU sets after losing its back-end (used.idx), runs the two
// writes again, oldest first, before the next request; the write A had
// completed is not run again.
func TestInflightResubmitAfterDeath(t *testing.T) {
	gA := &writeGate{memExport: newMemExport(1 << 20), entered: make(chan struct{}, 4), release: make(chan struct{})}
	_, sockA := startServer(t, gA, ServerOptions{InlineBelow: -1})
	f := newRawFront(t, sockA, 8<<20)
	inflightHandshake(t, f)
	rep, fd, region := getInflight(t, f, 1, ifSize)
	setInflight(t, f, rep, fd)
	startRingAt(t, f, 0, 0, 0)

	want := map[uint64][]byte{0: layWrite(f, 0, 0, 1)}
	publish(f, 0)
	collect(t, f, 1)
	gA.armed.Store(true)
	// Heads 7 then 4: the counter, not the head, gives the order.
	want[8] = layWrite(f, 7, 8, 7)
	publish(f, 7)
	<-gA.entered
	want[16] = layWrite(f, 4, 16, 4)
	publish(f, 4)
	<-gA.entered
	memSnap, regSnap := bytes.Clone(f.mem), bytes.Clone(region)
	close(gA.release)
	collect(t, f, 2) // A failed them (for the test it is dead): it no longer touches the region
	f.conn.Close()

	exp := newMemExport(1 << 20)
	_, sockB := startServer(t, exp, ServerOptions{})
	f2 := newRawFront(t, sockB, 8<<20)
	copy(f2.mem, memSnap)
	copy(region, regSnap)
	inflightHandshake(t, f2)
	setInflight(t, f2, rep, fd)
	startRingAt(t, f2, 1, 3, 1) // QEMU: base = used.idx after a lost back-end
	if ids := collect(t, f2, 2); ids[0] != 7 || ids[1] != 4 {
		t.Fatalf("resubmitted %v, want [7 4] (counter order)", ids)
	}
	if statusOf(f2, 7) != blkStatusOK || statusOf(f2, 4) != blkStatusOK {
		t.Fatalf("statuses %d %d", statusOf(f2, 7), statusOf(f2, 4))
	}
	want[24] = layWrite(f2, 2, 24, 2)
	publish(f2, 2)
	if ids := collect(t, f2, 1); ids[0] != 2 {
		t.Fatalf("next request completed as %v", ids)
	}
	if n := exp.ops[gateway.OpWrite].Load(); n != 3 {
		t.Errorf("B ran %d writes, want 3 (two resubmitted, one new)", n)
	}
	data := exp.snapshot()
	for sector, w := range want {
		if sector == 0 {
			continue // A's completed write: on A's export
		}
		if !bytes.Equal(data[sector*512:sector*512+4096], w) {
			t.Errorf("sector %d does not hold its write", sector)
		}
	}
	q := regionQueue(region)
	for h := range uint16(ifSize) {
		if q.flag(h) != 0 {
			t.Errorf("head %d still marked", h)
		}
	}
	if q.u16(inflightOffUsedIdx) != 4 {
		t.Errorf("used_idx %d, want 4", q.u16(inflightOffUsedIdx))
	}
	if got := binary.LittleEndian.Uint32(f2.roundTrip(reqGetVringBase, encodeVringState(vringState{}))[4:]); got != 4 {
		t.Errorf("GET_VRING_BASE %d, want 4", got)
	}
}

// TestInflightRecover checks the region's reading directly: a fresh part,
// a death between publishing used.idx and clearing the mark, and hostile
// contents (indices out of range, odd flag values, every head marked).
func TestInflightRecover(t *testing.T) {
	const n = 8
	mk := func() *inflightQueue {
		return &inflightQueue{b: make([]byte, inflightQueueBytes(n)), size: n}
	}
	q := mk()
	if rec := q.recover(n, 5); !rec.fresh || q.u16(inflightOffVersion) != 1 || q.u16(inflightOffUsedIdx) != 5 {
		t.Fatalf("fresh region: %+v", rec)
	}

	q = mk()
	q.put16(inflightOffVersion, 1)
	q.put16(inflightOffUsedIdx, 4)
	q.put16(inflightOffLastBatch, 6)
	for h, c := range map[uint16]uint64{2: 9, 3: 5, 6: 7} {
		q.counter = c
		q.get(h)
	}
	rec := q.recover(n, 5) // died after used.idx 5 was published for head 6
	if rec.fresh || len(rec.resubmit) != 2 || rec.resubmit[0] != 3 || rec.resubmit[1] != 2 || rec.lastAvail != 7 {
		t.Fatalf("torn completion: %+v", rec)
	}
	if q.flag(6) != 0 || q.u16(inflightOffUsedIdx) != 5 || q.counter != 10 {
		t.Errorf("after recovery: mark of 6 %d, used_idx %d, counter %d", q.flag(6), q.u16(inflightOffUsedIdx), q.counter)
	}

	q = mk()
	q.put16(inflightOffVersion, 0xffff)
	q.put16(inflightOffLastBatch, 0xffff)
	q.put16(inflightOffDescNum, 0xffff)
	for h := range uint16(n) {
		q.desc(h)[0] = 1
		binary.LittleEndian.PutUint64(q.desc(h)[8:], ^uint64(0))
	}
	q.desc(1)[0] = 2
	rec = q.recover(4, 0xfffe) // a ring smaller than the region
	if len(rec.resubmit) != 3 || rec.lastAvail != 1 {
		t.Errorf("hostile region: %+v", rec)
	}
	if q.u16(inflightOffDescNum) != n {
		t.Errorf("desc_num %d", q.u16(inflightOffDescNum))
	}
}

// TestInflightHostileMessages: bad SET_INFLIGHT_FD and GET_INFLIGHT_FD
// requests are refused (or answered with no region) and the connection
// carries on; a region whose every head is marked and also available
// again breaks that ring only.
func TestInflightHostileMessages(t *testing.T) {
	srv, sock := startServer(t, newMemExport(1<<20), ServerOptions{Logger: quietLogger()})
	f := newRawFront(t, sock, 8<<20)
	inflightHandshake(t, f)
	for _, i := range []inflightMsg{{NumQueues: 0, QueueSize: 128}, {NumQueues: 1, QueueSize: 100}, {NumQueues: 65, QueueSize: 128}} {
		f.send(reqGetInflightFd, 0, encodeInflight(i))
		if p := f.reply(reqGetInflightFd); binary.LittleEndian.Uint64(p) != 0 {
			t.Errorf("GET_INFLIGHT_FD %+v gave a region", i)
		}
	}
	small, err := unix.MemfdCreate("small", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(small)
	unix.Ftruncate(small, 4096)
	for _, i := range []inflightMsg{
		{MmapSize: 100, NumQueues: 1, QueueSize: 128},                             // too small for its queues
		{MmapSize: 1 << 20, NumQueues: 1, QueueSize: 1024},                        // past the end of the file
		{MmapSize: 4096, MmapOffset: 4096, NumQueues: 1, QueueSize: 128},          // offset past the end
		{MmapSize: 4096, MmapOffset: ^uint64(0) - 10, NumQueues: 1, QueueSize: 8}, // wrapping offset
		{MmapSize: 4096, NumQueues: 9, QueueSize: 8},                              // more queues than we have
	} {
		d, _ := unix.Dup(small)
		if st := f.ack(reqSetInflightFd, encodeInflight(i), d); st == 0 {
			t.Errorf("SET_INFLIGHT_FD %+v accepted", i)
		}
	}
	// Every head marked (their chains are zeros: rejected), used.idx 0:
	// next avail 128; the driver's index then jumps far past it: a ring
	// violation, not a hang or a crash.
	rep, fd, region := getInflight(t, f, 1, ifSize)
	q := regionQueue(region)
	q.put16(inflightOffVersion, 1)
	for h := range uint16(ifSize) {
		q.desc(h)[0] = 1
	}
	setInflight(t, f, rep, fd)
	before := srv.Stats().BrokenRings
	startRingAt(t, f, 0, 0, 0)
	f.ring.availIdx = 400
	publish(f, 0)
	testwait.For(t, "the ring is counted broken", func() bool { return srv.Stats().BrokenRings > before })
	if f.u64(reqGetQueueNum) != defaultQueues {
		t.Error("connection unusable")
	}
}
