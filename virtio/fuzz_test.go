package virtio

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// panicCatcher is a slog handler that remembers error records mentioning a
// panic: runners recover panics (a fault in shared memory must not crash
// the gateway), which would hide bugs from the fuzzer.
type panicCatcher struct {
	mu     sync.Mutex
	panics []string
}

func (h *panicCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (h *panicCatcher) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *panicCatcher) WithGroup(string) slog.Handler            { return h }
func (h *panicCatcher) Handle(_ context.Context, r slog.Record) error {
	text := r.Message
	r.Attrs(func(a slog.Attr) bool {
		text += " " + a.String()
		return true
	})
	if strings.Contains(text, "panic") {
		h.mu.Lock()
		h.panics = append(h.panics, text)
		h.mu.Unlock()
	}
	return nil
}

func (h *panicCatcher) check(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.panics) > 0 {
		t.Fatalf("recovered panic: %s", h.panics[0])
	}
}

// fuzzMsg encodes one message of FuzzMessage's input stream: a byte with
// the number of fds to attach (each a dup of the fuzz memfd), the header,
// the payload.
func fuzzMsg(nfds byte, req, flags uint32, payload []byte) []byte {
	b := []byte{nfds}
	var h [headerSize]byte
	encodeHeader(h[:], header{Request: req, Flags: flags, Size: uint32(len(payload))})
	return append(append(b, h[:]...), payload...)
}

// FuzzMessage feeds streams of vhost-user messages (with real fds) to the
// back-end state machine: parsing, memory tables, ring setup, and the rings
// it starts over the fuzzed memory. It must not panic, leak a recovered
// panic, or let an out-of-range request reach the export.
func FuzzMessage(f *testing.F) {
	region := make([]byte, 8+memRegionSize)
	binary.LittleEndian.PutUint64(region[8:], 0x10000)  // gpa
	binary.LittleEndian.PutUint64(region[16:], 0x10000) // size
	binary.LittleEndian.PutUint64(region[24:], 0x10000) // uva
	table := append(encodeU64(1), region[8:]...)
	seq := [][]byte{
		fuzzMsg(0, reqGetFeatures, 1, nil),
		fuzzMsg(0, reqSetFeatures, 1, encodeU64(0x170006e46)),
		fuzzMsg(0, reqSetProtocolFeatures, 1, encodeU64(0x8209)),
		fuzzMsg(0, reqGetConfig, 9, encodeConfig(configMsg{Size: 57, Data: make([]byte, 57)})),
		fuzzMsg(1, reqSetMemTable, 9, table[:8+memRegionSize]),
		fuzzMsg(1, reqAddMemReg, 9, region),
		fuzzMsg(0, reqSetVringNum, 9, encodeVringState(vringState{Num: 8})),
		fuzzMsg(0, reqSetVringAddr, 9, encodeVringAddr(vringAddr{Desc: 0x10000, Avail: 0x11000, Used: 0x12000})),
		fuzzMsg(0, reqSetVringKick, 9, encodeU64(vringStateNoFd)),
		fuzzMsg(0, reqSetVringEnable, 9, encodeVringState(vringState{Num: 1})),
		fuzzMsg(0, reqGetVringBase, 1, encodeVringState(vringState{})),
		fuzzMsg(0, reqRemMemReg, 9, region),
	}
	for _, m := range seq {
		f.Add(m)
	}
	var all []byte
	for _, m := range seq {
		all = append(all, m...)
	}
	f.Add(all)
	// With inflight tracking: the region is the fuzzer's memfd, so a ring
	// start reads fuzzer bytes as marks, counters and indices.
	inflight := [][]byte{
		fuzzMsg(0, reqSetProtocolFeatures, 1, encodeU64(0x9209)),
		fuzzMsg(0, reqGetInflightFd, 1, encodeInflight(inflightMsg{NumQueues: 2, QueueSize: 8})),
		fuzzMsg(1, reqSetInflightFd, 9, encodeInflight(inflightMsg{MmapSize: 0x1000, MmapOffset: 0x10000, NumQueues: 2, QueueSize: 8})),
	}
	var withInflight []byte
	for _, m := range append(inflight, seq[1:]...) {
		withInflight = append(withInflight, m...)
	}
	f.Add(withInflight)
	f.Add(fuzzMsg(0, reqSetMemTable, 9, make([]byte, 300)))
	f.Add(fuzzMsg(8, reqSetMemTable, 9, append(encodeU64(8), make([]byte, 8*memRegionSize)...)))

	f.Fuzz(func(t *testing.T, data []byte) {
		memfd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC)
		if err != nil {
			t.Skip(err)
		}
		defer unix.Close(memfd)
		unix.Ftruncate(memfd, 0x20000)
		// The memory the fuzzer's regions map: its own bytes, repeated.
		if len(data) > 0 {
			fill := make([]byte, 0x20000)
			for i := range fill {
				fill[i] = data[i%len(data)]
			}
			unix.Pwrite(memfd, fill, 0)
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Skip(err)
		}
		ours := os.NewFile(uintptr(fds[0]), "ours")
		nc, err := net.FileConn(ours)
		ours.Close()
		if err != nil {
			t.Fatal(err)
		}
		peer := os.NewFile(uintptr(fds[1]), "peer")
		go func() { // drain replies
			b := make([]byte, 4096)
			for {
				if _, err := peer.Read(b); err != nil {
					return
				}
			}
		}()
		defer peer.Close()

		pc := &panicCatcher{}
		exp := newMemExport(1 << 20)
		srv := NewServer(exp, ServerOptions{Queues: 2, Logger: slog.New(pc), InlineBelow: time.Hour})
		b := newBackend(context.Background(), srv, nc.(*net.UnixConn))
		for len(data) >= 1+headerSize {
			nfds := int(data[0] % (maxFds + 1))
			h, err := decodeHeader(data[1 : 1+headerSize])
			if err != nil {
				break
			}
			data = data[1+headerSize:]
			n := min(int(h.Size), len(data))
			m := &message{header: h, payload: data[:n]}
			m.Size = uint32(n)
			data = data[n:]
			for range nfds {
				d, err := unix.Dup(memfd)
				if err != nil {
					t.Fatal(err)
				}
				m.fds = append(m.fds, d)
			}
			err = b.handle(m)
			m.closeFds()
			if err != nil {
				break
			}
		}
		b.close()
		pc.check(t)
		if n := exp.badRange.Load(); n != 0 {
			t.Fatalf("%d out-of-range requests reached the export", n)
		}
	})
}

// chainMem is FuzzDescriptorChain's guest memory: one region of Go memory.
const (
	chainGPA   = 0x100000
	chainSize  = 0x10000
	chainAvail = 0x1000
	chainUsed  = 0x2000
)

// FuzzDescriptorChain runs the target's request path over a ring whose
// descriptor table, avail ring and memory are all fuzzer bytes. Input:
// byte 0 picks the ring size (1..256), byte 1 the features (bit 0 indirect,
// bit 1 EVENT_IDX), bytes 2-3 how many avail entries to publish; the rest is
// copied over the region from its start (descriptor table first, avail ring
// at 0x1000).
func FuzzDescriptorChain(f *testing.F) {
	le := binary.LittleEndian
	valid := func(typ uint32, indirect bool) []byte {
		mem := make([]byte, 0x3100)
		// Header at 0x3000, data at 0x3010 (512), status at 0x3210.
		hdr, dat, st := uint64(chainGPA+0x3000), uint64(chainGPA+0x3010), uint64(chainGPA+0x3210)
		descs := []desc{{hdr, 16, rN, 1}, {dat, 512, rN, 2}, {st, 1, rW, 0}}
		if typ == blkTypeIn || typ == blkTypeGetID {
			descs[1].flags |= rW
		}
		tab := mem[:]
		if indirect {
			writeDesc(mem, 0, desc{chainGPA + 0x2800, 48, rI, 0})
			tab = mem[0x2800:]
		}
		for i, d := range descs {
			writeDesc(tab, i, d)
		}
		le.PutUint16(mem[chainAvail+4:], 0) // ring[0] = head 0
		le.PutUint32(mem[0x3000:], typ)
		return append([]byte{3, 3, 1, 0}, mem...)
	}
	f.Add(valid(blkTypeIn, false))
	f.Add(valid(blkTypeOut, true))
	f.Add(valid(blkTypeDiscard, false))
	f.Add(valid(blkTypeGetID, true))
	loop := valid(blkTypeIn, false)
	le.PutUint16(loop[4+2*descSize+14:], 0)
	loop[4+2*descSize+12] |= rN
	f.Add(loop)
	f.Add([]byte{8, 1, 0xff, 0xff})

	f.Fuzz(fuzzChainBody)
}

func fuzzChainBody(t *testing.T, data []byte) {
	le := binary.LittleEndian
	{
		if len(data) < 4 {
			return
		}
		n := 1 << (data[0] % 9)
		indirect, eventIdx := data[1]&1 != 0, data[1]&2 != 0
		count := le.Uint16(data[2:])
		buf := make([]byte, chainSize+4096)
		off := int((4096 - uintptr(unsafe.Pointer(&buf[0]))%4096) % 4096)
		mem := buf[off : off+chainSize : off+chainSize]
		copy(mem, data[4:])
		gm := &guestMemory{regions: []*region{{memRegion: memRegion{GPA: chainGPA, Size: chainSize, UVA: chainGPA}, data: mem}}}
		// The driver's avail index: count entries published.
		le.PutUint16(mem[chainAvail+2:], count)
		ring, err := newDeviceRing(n, mem[:descTableSize(n)], mem[chainAvail:chainAvail+availSize(n)], mem[chainUsed:chainUsed+usedSize(n)], 0, eventIdx, indirect)
		if err != nil {
			t.Fatal(err)
		}
		pc := &panicCatcher{}
		exp := newMemExport(1 << 20)
		srv := NewServer(exp, ServerOptions{Logger: slog.New(pc), InlineBelow: time.Hour})
		b := &backend{s: srv, ctx: context.Background(), log: srv.log, mem: gm}
		v := &vring{kickFd: -1, call: notifier{fd: -1}, errN: notifier{fd: -1}}
		r, err := newRunner(b, v, ring, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		first := ring.usedIdx // from fuzzed memory, like the rest
		// Random memory may break the ring protocol: drain then stops with
		// an error, and what it took so far must still hold to the checks.
		taken, _ := r.drain()
		r.inflight.Wait()
		pc.check(t)
		if taken > n {
			t.Fatalf("took %d heads from a ring of %d in one pass", taken, n)
		}
		if got := ring.usedIdx - first; int(got) != taken {
			t.Fatalf("%d used elements after taking %d heads", got, taken)
		}
		for i := range taken {
			e := mem[chainUsed+4+8*((int(first)+i)%n):]
			if id := le.Uint32(e); id >= uint32(n) {
				t.Fatalf("used element %d has id %d (ring of %d)", i, id, n)
			}
		}
		if k := exp.badRange.Load(); k != 0 {
			t.Fatalf("%d out-of-range requests reached the export", k)
		}
	}
}

// FuzzInflightRecover reads fuzzer bytes as one queue's part of an inflight
// region (byte 0 picks the ring size, bytes 1-2 used.idx). Recovery must
// not panic, must resubmit each head at most once and only heads inside the
// ring, oldest counter first, and set the next avail entry to used.idx plus
// their number.
func FuzzInflightRecover(f *testing.F) {
	seed := make([]byte, 3+inflightQueueBytes(8))
	seed[0], seed[1] = 3, 2
	binary.LittleEndian.PutUint16(seed[3+inflightOffVersion:], 1)
	seed[3+inflightHeaderSize+16*5] = 1
	f.Add(seed)
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 3 {
			return
		}
		n := 1 << (data[0] % 9) // 1..256
		size := n << (data[0] >> 6 % 2)
		used := binary.LittleEndian.Uint16(data[1:])
		q := &inflightQueue{b: make([]byte, inflightQueueBytes(size)), size: size}
		copy(q.b, data[3:])
		rec := q.recover(n, used)
		if rec.fresh {
			if len(rec.resubmit) != 0 {
				t.Fatal("a fresh region resubmits")
			}
			return
		}
		if rec.lastAvail != used+uint16(len(rec.resubmit)) {
			t.Fatalf("next avail %d with used %d and %d resubmitted", rec.lastAvail, used, len(rec.resubmit))
		}
		seen := map[uint16]bool{}
		last := uint64(0)
		for i, h := range rec.resubmit {
			if int(h) >= n || seen[h] {
				t.Fatalf("resubmits head %d (ring of %d, seen %v)", h, n, seen[h])
			}
			seen[h] = true
			if c := q.count(h); i > 0 && c < last {
				t.Fatalf("counter %d after %d", c, last)
			} else {
				last = c
			}
		}
	})
}
