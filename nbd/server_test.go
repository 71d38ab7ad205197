package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

const testName = "tenant/vol"

func newTestServer(t *testing.T, size int64, opts Options) (*memExport, string) {
	t.Helper()
	m := newMemExport(size)
	_, sock := startServer(t, memExports{testName: m, "other/vol": newMemExport(4096)}, opts)
	return m, sock
}

func TestBadClientFlags(t *testing.T) {
	_, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.hello(1 << 5)
	rc.expectClosed()
}

func TestOptions(t *testing.T) {
	_, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle)

	// Unknown options, STARTTLS and EXTENDED_HEADERS: ERR_UNSUP, keep going.
	for _, opt := range []uint32{0x1234, optStartTLS, optExtendedHeaders} {
		rc.sendOpt(opt, []byte("junk"))
		if r := rc.readOptReply(); r.typ != repErrUnsup || r.opt != opt {
			t.Fatalf("option %#x: reply %#x for %#x", opt, r.typ, r.opt)
		}
	}
	// LIST.
	rc.sendOpt(optList, nil)
	var names []string
	for {
		r := rc.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("LIST reply %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n]))
	}
	if len(names) != 2 {
		t.Fatalf("LIST: %q", names)
	}
	rc.sendOpt(optList, []byte{1})
	if r := rc.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("LIST with data: %#x", r.typ)
	}
	// INFO for an unknown export.
	rc.sendOpt(optInfo, infoData("nope/nope"))
	if r := rc.readOptReply(); r.typ != repErrUnknown {
		t.Fatalf("INFO unknown: %#x", r.typ)
	}
	// Malformed INFO data.
	for _, d := range [][]byte{nil, {0, 0, 0, 9, 'a'}, append(infoData(testName), 0)} {
		rc.sendOpt(optInfo, d)
		if r := rc.readOptReply(); r.typ != repErrInvalid {
			t.Fatalf("INFO % x: %#x", d, r.typ)
		}
	}
	// INFO for a known export, with INFO_NAME.
	rc.sendOpt(optInfo, infoData(testName, infoName, infoBlockSize, 99))
	got := map[uint16][]byte{}
	for {
		r := rc.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repInfo {
			t.Fatalf("INFO reply %#x", r.typ)
		}
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	if e := got[infoExport]; len(e) != 10 || binary.BigEndian.Uint64(e) != 1<<20 {
		t.Fatalf("INFO_EXPORT % x", e)
	} else {
		f := binary.BigEndian.Uint16(e[8:])
		want := tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagCanMultiConn | tflagSendCache
		if f != want {
			t.Fatalf("flags %#x, want %#x", f, want)
		}
	}
	if string(got[infoName]) != testName {
		t.Fatalf("INFO_NAME %q", got[infoName])
	}
	if bs := got[infoBlockSize]; len(bs) != 12 || binary.BigEndian.Uint32(bs) != 1 ||
		binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != DefaultMaxPayload {
		t.Fatalf("INFO_BLOCK_SIZE % x", bs)
	}
	// Meta contexts need structured replies first.
	rc.sendOpt(optSetMetaContext, metaData(testName, metaAllocation))
	if r := rc.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT before STRUCTURED_REPLY: %#x", r.typ)
	}
	rc.sendOpt(optStructuredReply, []byte{0})
	if r := rc.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("STRUCTURED_REPLY with data: %#x", r.typ)
	}
	rc.sendOpt(optStructuredReply, nil)
	if r := rc.readOptReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: %#x", r.typ)
	}
	for _, q := range [][]string{nil, {"base:"}, {"x-foo:bar", metaAllocation}} {
		rc.sendOpt(optListMetaContext, metaData(testName, q...))
		r := rc.readOptReply()
		if r.typ != repMetaContext || string(r.data[4:]) != metaAllocation {
			t.Fatalf("LIST_META_CONTEXT %q: %#x %q", q, r.typ, r.data)
		}
		if r := rc.readOptReply(); r.typ != repAck {
			t.Fatalf("LIST_META_CONTEXT end: %#x", r.typ)
		}
	}
	rc.sendOpt(optListMetaContext, metaData(testName, "qemu:dirty-bitmap:x"))
	if r := rc.readOptReply(); r.typ != repAck {
		t.Fatalf("LIST_META_CONTEXT no match: %#x", r.typ)
	}
	rc.sendOpt(optSetMetaContext, metaData("nope/nope", metaAllocation))
	if r := rc.readOptReply(); r.typ != repErrUnknown {
		t.Fatalf("SET_META_CONTEXT unknown export: %#x", r.typ)
	}
	rc.sendOpt(optSetMetaContext, []byte{0, 0, 0, 1})
	if r := rc.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT malformed: %#x", r.typ)
	}
	// Oversized option data is skipped and refused.
	rc.sendOpt(optInfo, make([]byte, maxOptionData+1))
	if r := rc.readOptReply(); r.typ != repErrTooBig {
		t.Fatalf("huge option: %#x", r.typ)
	}
	// ABORT: ACK, then the server closes.
	rc.sendOpt(optAbort, nil)
	if r := rc.readOptReply(); r.typ != repAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	rc.expectClosed()
}

func TestBadOptionMagic(t *testing.T) {
	_, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle)
	rc.write(make([]byte, 16))
	rc.expectClosed()
}

func TestExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		t.Run(fmt.Sprint("noZeroes=", noZeroes), func(t *testing.T) {
			m, sock := newTestServer(t, 1<<20, Options{ReadOnly: true})
			rc := dial(t, sock)
			flags := clientFlagFixedNewstyle
			if noZeroes {
				flags |= clientFlagNoZeroes
			}
			rc.hello(flags)
			rc.sendOpt(optExportName, []byte(testName))
			var b [10]byte
			rc.readFull(b[:])
			if binary.BigEndian.Uint64(b[:]) != 1<<20 {
				t.Fatalf("size % x", b)
			}
			if f := binary.BigEndian.Uint16(b[8:]); f&tflagReadOnly == 0 || f&tflagSendTrim != 0 {
				t.Fatalf("flags %#x", f)
			}
			if !noZeroes {
				z := make([]byte, 124)
				rc.readFull(z)
				if !bytes.Equal(z, make([]byte, 124)) {
					t.Fatal("padding not zero")
				}
			}
			m.put([]byte("hello"), 100)
			r := rc.do(0, cmdRead, 100, 5, nil)
			if r.errno != 0 || string(r.data) != "hello" {
				t.Fatalf("read: %d %q", r.errno, r.data)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		_, sock := newTestServer(t, 1<<20, Options{})
		rc := dial(t, sock)
		rc.hello(clientFlagFixedNewstyle)
		rc.sendOpt(optExportName, []byte("nope"))
		rc.expectClosed()
	})
}

func TestCommandsSimple(t *testing.T) {
	m, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	size, _ := rc.connect(testName, false)
	if size != 1<<20 {
		t.Fatalf("size %d", size)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 512) // 8 KiB
	if r := rc.do(cmdFlagFUA, cmdWrite, 4096, uint32(len(data)), data); r.errno != 0 {
		t.Fatalf("write: %d", r.errno)
	}
	if g := m.lastReq.Load(); g.Op != gateway.OpWrite || !g.FUA || g.Offset != 4096 {
		t.Fatalf("write request %+v", g)
	}
	if r := rc.do(0, cmdRead, 4096, uint32(len(data)), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read back: %d", r.errno)
	}
	if r := rc.do(0, cmdFlush, 0, 0, nil); r.errno != 0 || m.flushes.Load() != 1 {
		t.Fatalf("flush: %d, %d flushes", r.errno, m.flushes.Load())
	}
	if r := rc.do(0, cmdTrim, 4096, 4096, nil); r.errno != 0 {
		t.Fatalf("trim: %d", r.errno)
	}
	if g := m.lastReq.Load(); g.Op != gateway.OpDiscard || g.Length != 4096 {
		t.Fatalf("trim request %+v", g)
	}
	if r := rc.do(cmdFlagNoHole, cmdWriteZeroes, 8192, 100, nil); r.errno != 0 {
		t.Fatalf("write zeroes: %d", r.errno)
	}
	if g := m.lastReq.Load(); g.Op != gateway.OpWriteZeroes || !g.NoHole || g.Length != 100 {
		t.Fatalf("write zeroes request %+v", g)
	}
	r := rc.do(0, cmdRead, 4096, uint32(len(data)), nil)
	want := append(make([]byte, 4096+100), data[4096+100:]...)
	if r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read after trim/zero: %d", r.errno)
	}
	calls := m.calls.Load()
	if r := rc.do(0, cmdCache, 0, 4096, nil); r.errno != 0 || m.calls.Load() != calls {
		t.Fatalf("cache: %d", r.errno)
	}

	// Errors; after each the stream must still be in sync (do checks handles).
	cases := []struct {
		name    string
		flags   uint16
		typ     uint16
		off     uint64
		length  uint32
		payload []byte
		errno   uint32
	}{
		{"read past end", 0, cmdRead, 1<<20 - 10, 20, nil, errnoInval},
		{"read at end", 0, cmdRead, 1 << 20, 1, nil, errnoInval},
		{"write past end", 0, cmdWrite, 1<<20 - 10, 20, make([]byte, 20), errnoNoSpace},
		{"trim past end", 0, cmdTrim, 1 << 20, 4096, nil, errnoInval},
		{"zero past end", 0, cmdWriteZeroes, 1<<20 - 1, 2, nil, errnoNoSpace},
		{"cache past end", 0, cmdCache, 1 << 20, 1, nil, errnoInval},
		{"read overflow", 0, cmdRead, 1<<64 - 10, 20, nil, errnoInval},
		{"trim overflow", 0, cmdTrim, 1<<63 - 1, 20, nil, errnoInval},
		{"write overflow", 0, cmdWrite, 1<<64 - 1, 4, make([]byte, 4), errnoInval},
		{"oversized read", 0, cmdRead, 0, DefaultMaxPayload + 1, nil, errnoInval},
		{"oversized write (skipped)", 0, cmdWrite, 0, DefaultMaxPayload + 1, make([]byte, DefaultMaxPayload+1), errnoInval},
		{"zero-length read", 0, cmdRead, 0, 0, nil, errnoInval},
		{"unknown command", 0, 42, 0, 4096, nil, errnoInval},
		{"bad flag on read", cmdFlagNoHole, cmdRead, 0, 4096, nil, errnoInval},
		{"DF without structured", cmdFlagDF, cmdRead, 0, 4096, nil, errnoInval},
		{"unknown flag", 1 << 9, cmdWrite, 0, 4, make([]byte, 4), errnoInval},
		{"fast zero", cmdFlagFastZero, cmdWriteZeroes, 0, 4096, nil, errnoNotSup},
		{"block status without meta", 0, cmdBlockStatus, 0, 4096, nil, errnoInval},
	}
	for _, c := range cases {
		if r := rc.do(c.flags, c.typ, c.off, c.length, c.payload); r.errno != c.errno {
			t.Errorf("%s: errno %d, want %d", c.name, r.errno, c.errno)
		}
	}
	if n := m.outside.Load(); n != 0 {
		t.Fatalf("%d requests reached the export out of bounds", n)
	}
	if r := rc.do(0, cmdRead, 4096+4096+100, 10, nil); r.errno != 0 || !bytes.Equal(r.data, data[4096+100:4096+110]) {
		t.Fatalf("read after errors: %d %q", r.errno, r.data)
	}
	// Export errors map to NBD errors.
	m.setFail(func(req *gateway.Request) error {
		switch req.Offset {
		case 0:
			return fmt.Errorf("disk on fire: %w", gateway.ErrIO)
		case 4096:
			return fmt.Errorf("pool: %w", gateway.ErrNoSpace)
		case 8192:
			return fmt.Errorf("closing: %w", gateway.ErrClosed)
		}
		return nil
	})
	for off, want := range map[uint64]uint32{0: errnoIO, 4096: errnoNoSpace, 8192: errnoShutdown} {
		if r := rc.do(0, cmdRead, off, 512, nil); r.errno != want {
			t.Errorf("injected error at %d: errno %d, want %d", off, r.errno, want)
		}
	}
	m.setFail(nil)
	// DISC: the server closes.
	rc.sendReq(0, cmdDisc, 1, 0, 0, nil)
	rc.expectClosed()
}

func TestBadRequestMagicCloses(t *testing.T) {
	_, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.connect(testName, false)
	b := requestBytes(0, cmdRead, 1, 0, 512, nil)
	b[0] ^= 0xff
	rc.write(b)
	rc.expectClosed()
}

func TestHugeWriteCloses(t *testing.T) {
	_, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.connect(testName, false)
	rc.sendReq(0, cmdWrite, 7, 0, 0xffffffff, nil)
	r := rc.readReply(nil)
	if r.handle != 7 || r.errno != errnoInval {
		t.Fatalf("reply %+v", r)
	}
	rc.expectClosed()
}

func TestReadOnlyExport(t *testing.T) {
	m := newMemExport(1 << 20)
	m.ro = true
	_, sock := startServer(t, memExports{testName: m}, Options{})
	rc := dial(t, sock)
	_, flags := rc.connect(testName, true)
	if flags&tflagReadOnly == 0 || flags&(tflagSendTrim|tflagSendWriteZeroes|tflagSendFUA) != 0 {
		t.Fatalf("flags %#x", flags)
	}
	if flags&tflagSendDF == 0 {
		t.Fatalf("flags %#x: no DF with structured replies", flags)
	}
	for _, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
		var p []byte
		if typ == cmdWrite {
			p = make([]byte, 512)
		}
		if r := rc.do(0, typ, 0, 512, p); r.errno != errnoPerm {
			t.Fatalf("cmd %d on read-only: errno %d", typ, r.errno)
		}
	}
	if r := rc.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush on read-only: %d", r.errno)
	}
	if r := rc.do(cmdFlagDF, cmdRead, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
		t.Fatalf("read on read-only: %d", r.errno)
	}
}

func TestStructuredReplies(t *testing.T) {
	m, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.connect(testName, true)
	data := bytes.Repeat([]byte{0xa5}, 8192)
	if r := rc.do(0, cmdWrite, 64<<10, 8192, data); r.errno != 0 {
		t.Fatalf("write: %d", r.errno)
	}
	r := rc.do(cmdFlagDF, cmdRead, 64<<10, 8192, nil)
	if r.errno != 0 || r.chunks != 1 || !bytes.Equal(r.data, data) {
		t.Fatalf("read: errno %d, %d chunks", r.errno, r.chunks)
	}
	// Errors on READ must be structured too.
	if r := rc.do(0, cmdRead, 1<<20, 512, nil); r.errno != errnoInval || r.data != nil {
		t.Fatalf("read past end: %+v", r)
	}
	m.setFail(func(req *gateway.Request) error {
		if req.Offset == 0 {
			return errors.New("boom")
		}
		return nil
	})
	if r := rc.do(0, cmdRead, 0, 512, nil); r.errno != errnoIO {
		t.Fatalf("failing read: %+v", r)
	}
	m.setFail(nil)

	// Block status: hole [0,64K), data [64K,72K), hole to the end.
	r = rc.do(0, cmdBlockStatus, 0, 1<<20, nil)
	want := []descriptor{{64 << 10, stateHole | stateZero}, {8192, 0}, {1<<20 - 72<<10, stateHole | stateZero}}
	if r.errno != 0 || fmt.Sprint(r.descs) != fmt.Sprint(want) {
		t.Fatalf("block status: errno %d, %v want %v", r.errno, r.descs, want)
	}
	r = rc.do(cmdFlagReqOne, cmdBlockStatus, 60<<10, 100<<10, nil)
	if r.errno != 0 || len(r.descs) != 1 || r.descs[0] != (descriptor{4096, stateHole | stateZero}) {
		t.Fatalf("block status REQ_ONE: %d %v", r.errno, r.descs)
	}
	if r := rc.do(0, cmdBlockStatus, 1<<20-512, 1024, nil); r.errno != errnoInval {
		t.Fatalf("block status past end: %d", r.errno)
	}
	if r := rc.do(cmdFlagDF, cmdBlockStatus, 0, 512, nil); r.errno != errnoInval {
		t.Fatalf("block status with DF: %d", r.errno)
	}
}

func TestMetaContextOtherExport(t *testing.T) {
	_, sock := newTestServer(t, 1<<20, Options{})
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle)
	rc.sendOpt(optStructuredReply, nil)
	rc.readOptReply()
	rc.sendOpt(optSetMetaContext, metaData("other/vol", metaAllocation))
	rc.readOptReply()
	rc.readOptReply()
	rc.sendOpt(optGo, infoData(testName))
	for rc.readOptReply().typ != repAck {
	}
	rc.structured = true
	if r := rc.do(0, cmdBlockStatus, 0, 4096, nil); r.errno != errnoInval {
		t.Fatalf("block status with contexts set for another export: %d", r.errno)
	}
}

func TestOutOfOrderReplies(t *testing.T) {
	m, sock := newTestServer(t, 1<<20, Options{})
	m.delay = func(req *gateway.Request) time.Duration {
		if req.Op == gateway.OpRead && req.Offset == 0 {
			return 300 * time.Millisecond
		}
		return 0
	}
	rc := dial(t, sock)
	rc.connect(testName, false)
	rc.sendReq(0, cmdRead, 1, 0, 4096, nil)
	rc.sendReq(0, cmdRead, 2, 4096, 4096, nil)
	rc.sendReq(0, cmdFlush, 3, 0, 0, nil)
	lens := func(h uint64) int {
		if h == 3 {
			return 0
		}
		return 4096
	}
	var order []uint64
	for range 3 {
		order = append(order, rc.readReply(lens).handle)
	}
	if order[2] != 1 {
		t.Fatalf("reply order %v: the slow request should finish last", order)
	}
}

// TestPipelinedStress pipelines writes then reads, each with its own block,
// on a slow export (worker goroutines) and a fast one (inline execution).
func TestPipelinedStress(t *testing.T) {
	for _, slow := range []bool{true, false} {
		t.Run(fmt.Sprint("slow=", slow), func(t *testing.T) { pipelinedStress(t, slow) })
	}
}

func pipelinedStress(t *testing.T, slow bool) {
	m, sock := newTestServer(t, 8<<20, Options{})
	if slow {
		m.delay = func(req *gateway.Request) time.Duration {
			return time.Duration(rand.IntN(200)) * time.Microsecond
		}
	}
	for _, structured := range []bool{false, true} {
		rc := dial(t, sock)
		rc.connect(testName, structured)
		// Each handle writes its own block, then reads it back.
		const n = 512
		model := make(map[uint64][]byte)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := uint64(1); h <= n; h++ {
				p := bytes.Repeat([]byte{byte(h), byte(h >> 8)}, 2048)
				rc.sendReq(0, cmdWrite, h, h*4096, 4096, p)
			}
		}()
		for h := uint64(1); h <= n; h++ {
			model[h] = bytes.Repeat([]byte{byte(h), byte(h >> 8)}, 2048)
		}
		seen := map[uint64]bool{}
		for range n {
			r := rc.readReply(nil)
			if r.errno != 0 || seen[r.handle] {
				t.Fatalf("write reply %+v", r)
			}
			seen[r.handle] = true
		}
		wg.Wait()
		go func() {
			for h := uint64(1); h <= n; h++ {
				rc.sendReq(0, cmdRead, h, h*4096, 4096, nil)
			}
		}()
		for range n {
			r := rc.readReply(func(uint64) int { return 4096 })
			if r.errno != 0 || !bytes.Equal(r.data, model[r.handle]) {
				t.Fatalf("read reply for %d: errno %d", r.handle, r.errno)
			}
		}
	}
}

func TestShutdownDrains(t *testing.T) {
	m := newMemExport(1 << 20)
	readStarted := make(chan time.Time, 1)
	m.delay = func(req *gateway.Request) time.Duration {
		if req.Offset == 0 {
			readStarted <- time.Now()
			return 300 * time.Millisecond
		}
		return 0
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(memExports{testName: m}, Options{Logger: testLogger(t)})
	served := make(chan error, 1)
	go func() { served <- s.Serve(context.Background(), l) }()

	rc := dial(t, sock)
	rc.connect(testName, false)
	idle := dial(t, sock) // stays in the handshake
	idle.hello(clientFlagFixedNewstyle)

	rc.sendReq(0, cmdRead, 1, 0, 4096, nil)
	started := waitRecv(t, readStarted, "the slow read to reach the export")
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(started); d < 300*time.Millisecond {
		t.Fatalf("Shutdown returned %v after the 300 ms read began, before the in-flight read finished", d)
	}
	r := rc.readReply(func(uint64) int { return 4096 })
	if r.handle != 1 || r.errno != 0 || len(r.data) != 4096 {
		t.Fatalf("drained reply %+v", r)
	}
	rc.expectClosed()
	idle.expectClosed()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

func TestShutdownTimeoutAborts(t *testing.T) {
	m := newMemExport(1 << 20)
	readStarted := make(chan struct{}, 1)
	m.delay = func(*gateway.Request) time.Duration {
		readStarted <- struct{}{}
		return time.Hour
	}
	s, sock := startServer(t, memExports{testName: m}, Options{})
	rc := dial(t, sock)
	rc.connect(testName, false)
	rc.sendReq(0, cmdRead, 1, 0, 4096, nil)
	waitRecv(t, readStarted, "the read to reach the export")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	rc.expectClosed()
}

func TestServeContextCancel(t *testing.T) {
	m := newMemExport(1 << 20)
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(memExports{testName: m}, Options{Logger: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	rc := dial(t, sock)
	rc.connect(testName, false)
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v", err)
	}
	rc.expectClosed()
}

func TestTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip("no TCP loopback:", err)
	}
	m := newMemExport(1 << 20)
	s := NewServer(memExports{testName: m}, Options{Logger: testLogger(t)})
	go s.Serve(context.Background(), l)
	defer s.Shutdown(context.Background())
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	rc.connect(testName, true)
	if r := rc.do(0, cmdWrite, 0, 3, []byte("abc")); r.errno != 0 {
		t.Fatal(r.errno)
	}
	if r := rc.do(0, cmdRead, 0, 3, nil); string(r.data) != "abc" {
		t.Fatalf("%q", r.data)
	}
}

func TestErrnoMapping(t *testing.T) {
	log := testLogger(t)
	cases := map[error]uint32{
		nil:                                     0,
		gateway.ErrOutOfRange:                   errnoInval,
		fmt.Errorf("x: %w", gateway.ErrNoSpace): errnoNoSpace,
		gateway.ErrReadOnly:                     errnoPerm,
		gateway.ErrInvalid:                      errnoInval,
		gateway.ErrUnsupported:                  errnoNotSup,
		gateway.ErrClosed:                       errnoShutdown,
		context.Canceled:                        errnoShutdown,
		gateway.ErrIO:                           errnoIO,
		errors.New("mystery"):                   errnoIO,
	}
	for err, want := range cases {
		if got := errno(log, "read", err); got != want {
			t.Errorf("errno(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestDescriptors(t *testing.T) {
	E := func(off, n int64, hole bool) gateway.Extent {
		return gateway.Extent{Offset: off, Length: n, Hole: hole}
	}
	H := stateHole | stateZero
	cases := []struct {
		exts   []gateway.Extent
		off    uint64
		length uint32
		reqOne bool
		want   []descriptor
	}{
		{nil, 0, 100, false, []descriptor{{100, 0}}},
		{[]gateway.Extent{E(0, 50, true), E(50, 50, false)}, 0, 100, false, []descriptor{{50, H}, {50, 0}}},
		{[]gateway.Extent{E(0, 50, true), E(50, 50, true)}, 0, 100, false, []descriptor{{100, H}}},
		{[]gateway.Extent{E(0, 1000, true)}, 10, 100, false, []descriptor{{100, H}}},
		{[]gateway.Extent{E(20, 10, true)}, 0, 100, false, []descriptor{{20, 0}, {10, H}}},
		{[]gateway.Extent{E(0, 50, true), E(50, 50, false)}, 0, 100, true, []descriptor{{50, H}}},
		{[]gateway.Extent{E(50, 10, true), E(0, 10, true), E(60, -1, false)}, 0, 100, false, []descriptor{{50, 0}, {10, H}}},
		{[]gateway.Extent{E(1<<62, 1<<62, true)}, 0, 100, false, []descriptor{{100, 0}}},
	}
	for i, c := range cases {
		got := descriptors(c.exts, c.off, c.length, c.reqOne)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("case %d: %v, want %v", i, got, c.want)
		}
	}
}

func TestLatencyChoosesInline(t *testing.T) {
	var l latency
	l.init()
	if l.fast(cmdRead, false) || l.fast(cmdRead, true) {
		t.Fatal("fast before any sample")
	}
	if !l.fast(cmdCache, false) {
		t.Fatal("CACHE should always be inline")
	}
	for range 64 {
		l.observe(cmdRead, 2*time.Microsecond)
	}
	if !l.fast(cmdRead, false) || l.fast(cmdWrite, false) || l.fast(cmdFlush, false) {
		t.Fatal("classes not tracked separately")
	}
	l.observe(cmdRead, 2*time.Millisecond)
	if l.fast(cmdRead, false) {
		t.Fatal("one slow read should stop inline reads")
	}
	// 50 µs writes: to workers while others are in flight, inline on an
	// idle connection; 1 ms writes never inline.
	for range 64 {
		l.observe(cmdWrite, 50*time.Microsecond)
	}
	if l.fast(cmdWrite, false) || !l.fast(cmdWrite, true) {
		t.Fatal("50 µs writes: want inline only when idle")
	}
	for range 64 {
		l.observe(cmdWrite, time.Millisecond)
	}
	if l.fast(cmdWrite, true) {
		t.Fatal("1 ms writes inline on an idle connection")
	}
}
