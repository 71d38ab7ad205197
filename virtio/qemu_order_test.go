package virtio

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// QEMU 7.2's feature words, from the capture in notes/virtio.md §4.
const (
	qemuProtocolFeatures = 0x8f2b
	qemuFeaturesSeaBIOS  = 0x140000046 // VERSION_1|PROTOCOL_FEATURES|SIZE_MAX|SEG_MAX|BLK_SIZE
	qemuFeaturesLinux    = 0x170006e46 // + FLUSH,TOPOLOGY,MQ,DISCARD,WRITE_ZEROES,INDIRECT,EVENT_IDX
)

// TestQEMUSequenceMemSlots replays what QEMU 7.2 sends to a vhost-user-blk
// back-end that offers CONFIGURE_MEM_SLOTS: GET_CONFIG before SET_FEATURES,
// two regions of one memfd added with ADD_MEM_REG, a SeaBIOS start and stop,
// then a Linux start with new ring addresses, EVENT_IDX and indirect
// descriptors.
func TestQEMUSequenceMemSlots(t *testing.T) {
	exp := newMemExport(8 << 20)
	_, sock := startServer(t, exp, ServerOptions{})
	f := newRawFront(t, sock, 16<<20)

	features := f.u64(reqGetFeatures)
	for _, b := range []uint{featVersion1, featProtocolFeatures, featEventIdx, featIndirectDesc, blkFeatFlush, blkFeatDiscard, blkFeatWriteZeroes} {
		if features&bit(b) == 0 {
			t.Errorf("feature bit %d not offered (features %#x)", b, features)
		}
	}
	pf := f.u64(reqGetProtocolFeatures)
	for _, b := range []uint{protoMQ, protoReplyAck, protoConfig, protoConfigureMemSlots} {
		if pf&bit(b) == 0 {
			t.Errorf("protocol feature %d not offered (%#x)", b, pf)
		}
	}
	f.send(reqSetProtocolFeatures, 0, encodeU64(pf&qemuProtocolFeatures))
	if n := f.u64(reqGetQueueNum); n != defaultQueues {
		t.Errorf("GET_QUEUE_NUM = %d", n)
	}
	if n := f.u64(reqGetMaxMemSlots); n != defaultMaxMemSlots {
		t.Errorf("GET_MAX_MEM_SLOTS = %d", n)
	}
	f.send(reqSetOwner, 0, nil)
	f.u64(reqGetFeatures)
	f.setCall()
	f.send(reqSetVringErr, 0, encodeU64(0), f.eventfd())

	// GET_CONFIG before SET_FEATURES, 57 bytes as QEMU asks.
	p := f.roundTrip(reqGetConfig, encodeConfig(configMsg{Size: 57, Data: make([]byte, 57)}))
	if len(p) != configHdrSize+57 {
		t.Fatalf("GET_CONFIG reply %d bytes, want %d", len(p), configHdrSize+57)
	}
	cfg := decodeBlkConfig(p[configHdrSize:])
	if cfg.Capacity != 8<<20/512 || cfg.BlkSize != 512 || cfg.SegMax != serverSegMax || cfg.NumQueues != defaultQueues ||
		cfg.MaxDiscardSeg != maxDiscardSegs || cfg.WriteZeroesMayUnmap != 1 {
		t.Errorf("config %+v", cfg)
	}

	// Start #1: SeaBIOS. Regions like QEMU's: [0, 0xa0000) and
	// [0xc0000, end) of one memfd, each with its own fd.
	f.send(reqSetFeatures, 0, encodeU64(qemuFeaturesSeaBIOS&features))
	f.setCall()
	f.send(reqSetFeatures, 0, encodeU64(qemuFeaturesSeaBIOS&features))
	lo := f.region(0, 0, 0xa0000)
	hi := f.region(0xc0000, 0xc0000, len(f.mem)-0xc0000)
	f.regions = []memRegion{lo, hi}
	if st := f.ack(reqAddMemReg, encodeSingleRegion(lo), f.dupMemfd()); st != 0 {
		t.Fatalf("ADD_MEM_REG low: %d", st)
	}
	if st := f.ack(reqAddMemReg, encodeSingleRegion(hi), f.dupMemfd()); st != 0 {
		t.Fatalf("ADD_MEM_REG high: %d", st)
	}
	f.scratch = 0x300000
	f.startRing(128, 0x100000, false)
	// GET_ID into low memory: GPA 0x1000 is memfd offset 0x1000.
	if st, n := f.io(blkTypeGetID, 0, []seg{{0x1000, 20}}, false); st != blkStatusOK || n != 21 {
		t.Fatalf("GET_ID: status %d used len %d", st, n)
	}
	if id := string(bytes.TrimRight(f.mem[0x1000:0x1014], "\x00")); id != defaultSerial {
		t.Errorf("GET_ID = %q", id)
	}
	f.send(reqSetVringEnable, 0, encodeVringState(vringState{Index: 0, Num: 0}))
	if got := binary.LittleEndian.Uint32(f.roundTrip(reqGetVringBase, encodeVringState(vringState{}))[4:]); got != 1 {
		t.Errorf("GET_VRING_BASE after SeaBIOS = %d, want 1", got)
	}

	// Start #2: Linux, new ring addresses, EVENT_IDX and indirect.
	f.send(reqSetFeatures, 0, encodeU64(qemuFeaturesLinux&features))
	f.setCall()
	f.send(reqSetFeatures, 0, encodeU64(qemuFeaturesLinux&features))
	f.startRing(128, 0x200000, true)
	data := f.mem[0x400000 : 0x400000+64<<10]
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	want := bytes.Clone(data)
	// A write scattered over 16 segments (a bounce buffer on the target).
	var segs []seg
	for i := 0; i < 16; i++ {
		segs = append(segs, seg{f.gpa(0x400000 + i*4096), 4096})
	}
	if st, n := f.io(blkTypeOut, 8, segs, true); st != blkStatusOK || n != 1 {
		t.Fatalf("OUT: status %d used len %d", st, n)
	}
	if !bytes.Equal(exp.snapshot()[4096:4096+64<<10], want) {
		t.Fatal("export does not hold the written data")
	}
	clear(data)
	// Read it back in one segment (zero copy on the target).
	if st, n := f.io(blkTypeIn, 8, []seg{{f.gpa(0x400000), 64 << 10}}, true); st != blkStatusOK || n != 64<<10+1 {
		t.Fatalf("IN: status %d used len %d", st, n)
	}
	if !bytes.Equal(data, want) {
		t.Fatal("read back differs")
	}
	if st, _ := f.io(blkTypeFlush, 0, nil, true); st != blkStatusOK {
		t.Fatalf("FLUSH: %d", st)
	}

	// REM_MEM_REG of the low region: buffers there now fail, others work.
	if st := f.ack(reqRemMemReg, encodeSingleRegion(lo)); st != 0 {
		t.Fatalf("REM_MEM_REG: %d", st)
	}
	if st, _ := f.io(blkTypeIn, 0, []seg{{0x1000, 512}}, true); st != blkStatusIOErr {
		t.Errorf("IN into a removed region: status %d, want IOERR", st)
	}
	if st, _ := f.io(blkTypeIn, 0, []seg{{f.gpa(0x400000), 512}}, true); st != blkStatusOK {
		t.Errorf("IN after REM_MEM_REG: status %d", st)
	}
	if st := f.ack(reqRemMemReg, encodeSingleRegion(lo)); st == 0 {
		t.Error("removing an absent region succeeded")
	}
	f.send(reqSetVringEnable, 0, encodeVringState(vringState{Index: 0, Num: 0}))
	if got := binary.LittleEndian.Uint32(f.roundTrip(reqGetVringBase, encodeVringState(vringState{}))[4:]); got != 5 {
		t.Errorf("GET_VRING_BASE after Linux = %d, want 5", got)
	}
}

// TestQEMUSequenceMemTable replays QEMU without CONFIGURE_MEM_SLOTS:
// SET_MEM_TABLE before the start and again while the ring runs. The two
// regions are adjacent in guest-physical space but not in the memfd, so a
// buffer across the boundary is two pieces on the target.
func TestQEMUSequenceMemTable(t *testing.T) {
	exp := newMemExport(8 << 20)
	_, sock := startServer(t, exp, ServerOptions{})
	f := newRawFront(t, sock, 8<<20)
	features := f.u64(reqGetFeatures)
	pf := f.u64(reqGetProtocolFeatures)
	f.send(reqSetProtocolFeatures, 0, encodeU64(pf&qemuProtocolFeatures&^bit(protoConfigureMemSlots)))
	f.send(reqSetOwner, 0, nil)
	f.send(reqSetFeatures, 0, encodeU64(features&^(bit(featEventIdx)|bit(featIndirectDesc))))
	f.setCall()

	a := f.region(0, 4<<20, 4<<20) // GPA [0, 4M) is memfd [4M, 8M)
	b := f.region(4<<20, 0, 4<<20) // GPA [4M, 8M) is memfd [0, 4M)
	f.regions = []memRegion{a, b}
	table := encodeMemTable(f.regions)
	if st := f.ack(reqSetMemTable, table, f.dupMemfd(), f.dupMemfd()); st != 0 {
		t.Fatalf("SET_MEM_TABLE: %d", st)
	}
	f.scratch = 0x200000
	f.startRing(64, 0x100000, false)
	// Again while running, as QEMU does after the first ENABLE.
	if st := f.ack(reqSetMemTable, table, f.dupMemfd(), f.dupMemfd()); st != 0 {
		t.Fatalf("SET_MEM_TABLE while running: %d", st)
	}
	// 8 KiB across the GPA boundary at 4 MiB.
	start := uint64(4<<20 - 4096)
	for i := range 8192 {
		f.mem[f.off(start+uint64(i))] = byte(i % 251)
	}
	if st, _ := f.io(blkTypeOut, 0, []seg{{start, 8192}}, false); st != blkStatusOK {
		t.Fatalf("OUT across regions: status %d", st)
	}
	for i := range 8192 {
		f.mem[f.off(start+uint64(i))] = 0
	}
	if st, n := f.io(blkTypeIn, 0, []seg{{start, 8192}}, false); st != blkStatusOK || n != 8193 {
		t.Fatalf("IN across regions: status %d len %d", st, n)
	}
	for i := range 8192 {
		if f.mem[f.off(start+uint64(i))] != byte(i%251) {
			t.Fatalf("byte %d differs after the read across regions", i)
		}
	}
	if got := binary.LittleEndian.Uint32(f.roundTrip(reqGetVringBase, encodeVringState(vringState{}))[4:]); got != 2 {
		t.Errorf("GET_VRING_BASE = %d, want 2", got)
	}
	// Bad tables are refused with a status, and the connection stays up.
	bad := encodeMemTable([]memRegion{f.region(0, 0, 16<<20)}) // past the end of the memfd
	if st := f.ack(reqSetMemTable, bad, f.dupMemfd()); st == 0 {
		t.Error("region past the end of the memfd accepted")
	}
	overlap := encodeMemTable([]memRegion{f.region(0, 0, 1<<20), f.region(1<<19, 1<<20, 1<<20)})
	if st := f.ack(reqSetMemTable, overlap, f.dupMemfd(), f.dupMemfd()); st == 0 {
		t.Error("overlapping regions accepted")
	}
	if f.u64(reqGetQueueNum) != defaultQueues {
		t.Error("connection unusable after refused tables")
	}
}

// TestTruncatedMemory: a front-end that shrinks its memfd under the target
// costs its ring (SIGBUS becomes a recovered panic), not the gateway.
func TestTruncatedMemory(t *testing.T) {
	exp := newMemExport(1 << 20)
	_, sock := startServer(t, exp, ServerOptions{})
	f := newRawFront(t, sock, 4<<20)
	features := f.u64(reqGetFeatures)
	pf := f.u64(reqGetProtocolFeatures)
	f.send(reqSetProtocolFeatures, 0, encodeU64(pf))
	f.send(reqSetFeatures, 0, encodeU64(features))
	f.setCall()
	f.regions = []memRegion{f.region(0, 0, 4<<20)}
	if st := f.ack(reqSetMemTable, encodeMemTable(f.regions), f.dupMemfd()); st != 0 {
		t.Fatal(st)
	}
	f.scratch = 0x200000
	f.startRing(64, 0x100000, true)
	if st, _ := f.io(blkTypeIn, 0, []seg{{0x300000, 4096}}, false); st != blkStatusOK {
		t.Fatalf("IN: %d", st)
	}
	if err := unix.Ftruncate(f.memfd, 0); err != nil {
		t.Fatal(err)
	}
	signalFd(f.kick) // the runner wakes and touches the ring: SIGBUS
	// The server still answers on this connection and serves new ones.
	if f.u64(reqGetQueueNum) != defaultQueues {
		t.Error("connection lost")
	}
	f.roundTrip(reqGetVringBase, encodeVringState(vringState{}))
	c := dial(t, sock, Options{})
	if _, err := c.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatalf("new client after a faulting one: %v", err)
	}
}
