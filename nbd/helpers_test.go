package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

// memExport is a sparse in-memory Export with 4 KiB blocks: unwritten,
// discarded and (without NoHole) zeroed blocks are holes.
type memExport struct {
	size     int64
	ro       bool
	mu       sync.Mutex
	blocks   map[int64][]byte
	flushes  atomic.Int64
	calls    atomic.Int64
	delay    func(req *gateway.Request) time.Duration         // optional
	fail     atomic.Pointer[func(req *gateway.Request) error] // optional error injection
	panicky  atomic.Bool                                      // panic on every Do
	outside  atomic.Int64                                     // requests that reached us out of bounds
	lastReq  atomic.Pointer[gateway.Request]
	extentFn func(off, length int64) ([]gateway.Extent, error) // optional override
}

const memBlock = 4096

func newMemExport(size int64) *memExport {
	return &memExport{size: size, blocks: make(map[int64][]byte)}
}

func (m *memExport) setFail(f func(req *gateway.Request) error) {
	if f == nil {
		m.fail.Store(nil)
		return
	}
	m.fail.Store(&f)
}

func (m *memExport) Size() int64    { return m.size }
func (m *memExport) ReadOnly() bool { return m.ro }

func (m *memExport) Do(ctx context.Context, req *gateway.Request) error {
	m.calls.Add(1)
	cp := *req
	m.lastReq.Store(&cp)
	if req.Door != gateway.DoorNBD {
		return fmt.Errorf("door %v: %w", req.Door, gateway.ErrInvalid)
	}
	if m.panicky.Load() {
		panic("memExport: told to panic")
	}
	if m.delay != nil {
		if d := m.delay(req); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if f := m.fail.Load(); f != nil {
		if err := (*f)(req); err != nil {
			return err
		}
	}
	length := req.Length
	if req.Op == gateway.OpRead || req.Op == gateway.OpWrite {
		length = int64(len(req.Buf))
	}
	if req.Op != gateway.OpFlush && (req.Offset < 0 || length < 0 || req.Offset+length > m.size) {
		m.outside.Add(1)
		if req.Op == gateway.OpWrite || req.Op == gateway.OpWriteZeroes {
			return gateway.ErrNoSpace
		}
		return gateway.ErrOutOfRange
	}
	if m.ro && req.Op != gateway.OpRead && req.Op != gateway.OpFlush {
		return gateway.ErrReadOnly
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch req.Op {
	case gateway.OpRead:
		m.copyOut(req.Buf, req.Offset)
	case gateway.OpWrite:
		m.copyIn(req.Buf, req.Offset)
	case gateway.OpFlush:
		m.flushes.Add(1)
	case gateway.OpDiscard, gateway.OpWriteZeroes:
		m.zero(req.Offset, length, req.Op == gateway.OpWriteZeroes && req.NoHole)
	default:
		return gateway.ErrUnsupported
	}
	return nil
}

// put writes p at off from a test, under the export's lock.
func (m *memExport) put(p []byte, off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.copyIn(p, off)
}

func (m *memExport) copyOut(p []byte, off int64) {
	for len(p) > 0 {
		bi, bo := off/memBlock, off%memBlock
		n := min(int64(len(p)), memBlock-bo)
		if b, ok := m.blocks[bi]; ok {
			copy(p[:n], b[bo:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

func (m *memExport) copyIn(p []byte, off int64) {
	for len(p) > 0 {
		bi, bo := off/memBlock, off%memBlock
		n := min(int64(len(p)), memBlock-bo)
		b, ok := m.blocks[bi]
		if !ok {
			b = make([]byte, memBlock)
			m.blocks[bi] = b
		}
		copy(b[bo:], p[:n])
		p, off = p[n:], off+n
	}
}

// zero zeroes [off, off+n): whole blocks become holes unless keep.
func (m *memExport) zero(off, n int64, keep bool) {
	for n > 0 {
		bi, bo := off/memBlock, off%memBlock
		k := min(n, memBlock-bo)
		if b, ok := m.blocks[bi]; ok {
			if bo == 0 && k == memBlock && !keep {
				delete(m.blocks, bi)
			} else {
				clear(b[bo : bo+k])
			}
		} else if keep {
			m.blocks[bi] = make([]byte, memBlock)
		}
		off, n = off+k, n-k
	}
}

func (m *memExport) Extents(ctx context.Context, off, length int64) ([]gateway.Extent, error) {
	if m.extentFn != nil {
		return m.extentFn(off, length)
	}
	if off < 0 || length <= 0 || off+length > m.size {
		m.outside.Add(1)
		return nil, gateway.ErrOutOfRange
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []gateway.Extent
	end := off + length
	for cur := off; cur < end; {
		bi := cur / memBlock
		next := min((bi+1)*memBlock, end)
		_, alloc := m.blocks[bi]
		if k := len(out); k > 0 && out[k-1].Hole == !alloc {
			out[k-1].Length += next - cur
		} else {
			out = append(out, gateway.Extent{Offset: cur, Length: next - cur, Hole: !alloc})
		}
		cur = next
	}
	return out, nil
}

// memExports is a fixed set of exports.
type memExports map[string]Export

func (m memExports) Lookup(name string) (Export, error) {
	if e, ok := m[name]; ok {
		return e, nil
	}
	return nil, fmt.Errorf("export %q: %w", name, gateway.ErrNotFound)
}

func (m memExports) Names() []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	return out
}

// testLogger discards below Error and fails on nothing; it keeps output quiet.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startServer serves exports on a unix socket in a temp dir.
func startServer(t testing.TB, exports Exports, opts Options) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s := NewServer(exports, opts)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, sock
}

// rawClient speaks NBD byte by byte for tests.
type rawClient struct {
	t          testing.TB
	c          net.Conn
	r          *bufio.Reader
	structured bool
}

// waitRecv receives from ch, failing the test if nothing comes within 10 s.
func waitRecv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out after 10s waiting for %s", what)
		panic("unreachable")
	}
}

func dial(t testing.TB, sock string) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, c: c, r: bufio.NewReader(c)}
}

// hello reads the greeting and sends client flags.
func (rc *rawClient) hello(flags uint32) {
	rc.t.Helper()
	var g [18]byte
	rc.readFull(g[:])
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		rc.t.Fatalf("bad greeting % x", g)
	}
	if hf := binary.BigEndian.Uint16(g[16:]); hf != flagFixedNewstyle|flagNoZeroes {
		rc.t.Fatalf("handshake flags %#x", hf)
	}
	rc.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (rc *rawClient) readFull(b []byte) {
	rc.t.Helper()
	if _, err := io.ReadFull(rc.r, b); err != nil {
		rc.t.Fatalf("read: %v", err)
	}
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

func (rc *rawClient) sendOpt(opt uint32, data []byte) {
	rc.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	rc.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (rc *rawClient) readOptReply() optReply {
	rc.t.Helper()
	var h [optReplyHeaderLen]byte
	rc.readFull(h[:])
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		rc.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:]))
	rc.readFull(r.data)
	return r
}

// expectClosed asserts the server closes the connection.
func (rc *rawClient) expectClosed() {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(rc.r)
	if err != nil && !errors.Is(err, io.EOF) && !isResetErr(err) {
		rc.t.Fatalf("expected close, got %v after %d bytes", err, len(b))
	}
}

func isResetErr(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// connect negotiates name with GO; structured also selects base:allocation.
// It returns the export size and transmission flags.
func (rc *rawClient) connect(name string, structured bool) (uint64, uint16) {
	rc.t.Helper()
	rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if structured {
		rc.sendOpt(optStructuredReply, nil)
		if r := rc.readOptReply(); r.typ != repAck {
			rc.t.Fatalf("STRUCTURED_REPLY: %#x", r.typ)
		}
		rc.sendOpt(optSetMetaContext, metaData(name, metaAllocation))
		r := rc.readOptReply()
		if r.typ != repMetaContext || string(r.data[4:]) != metaAllocation {
			rc.t.Fatalf("SET_META_CONTEXT: %#x %q", r.typ, r.data)
		}
		if r := rc.readOptReply(); r.typ != repAck {
			rc.t.Fatalf("SET_META_CONTEXT end: %#x", r.typ)
		}
		rc.structured = true
	}
	rc.sendOpt(optGo, infoData(name, infoBlockSize))
	var size uint64
	var flags uint16
	for {
		r := rc.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repInfo {
			rc.t.Fatalf("GO %q: reply %#x %q", name, r.typ, r.data)
		}
		if binary.BigEndian.Uint16(r.data) == infoExport {
			size = binary.BigEndian.Uint64(r.data[2:])
			flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return size, flags
}

func (rc *rawClient) sendReq(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	rc.t.Helper()
	rc.write(requestBytes(flags, typ, handle, off, length, payload))
}

func requestBytes(flags, typ uint16, handle, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// reply is one decoded reply: a simple reply, or all chunks of a structured one.
type reply struct {
	handle uint64
	errno  uint32
	data   []byte       // READ data (simple) or assembled OFFSET_DATA
	descs  []descriptor // BLOCK_STATUS
	chunks int
}

// readReply reads one reply. readLen gives, for a simple reply, how many data
// bytes follow (the client must know from the request).
func (rc *rawClient) readReply(readLen func(handle uint64) int) reply {
	rc.t.Helper()
	var m [4]byte
	rc.readFull(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		rc.readFull(h[:])
		r := reply{errno: binary.BigEndian.Uint32(h[0:]), handle: binary.BigEndian.Uint64(h[4:])}
		if r.errno == 0 && readLen != nil {
			if n := readLen(r.handle); n > 0 {
				r.data = make([]byte, n)
				rc.readFull(r.data)
			}
		}
		return r
	case magicStructuredRep:
		var r reply
		first := true
		for {
			if !first {
				rc.readFull(m[:])
				if binary.BigEndian.Uint32(m[:]) != magicStructuredRep {
					rc.t.Fatalf("chunk magic % x", m)
				}
			}
			first = false
			var h [16]byte
			rc.readFull(h[:])
			flags := binary.BigEndian.Uint16(h[0:])
			typ := binary.BigEndian.Uint16(h[2:])
			r.handle = binary.BigEndian.Uint64(h[4:])
			p := make([]byte, binary.BigEndian.Uint32(h[12:]))
			rc.readFull(p)
			r.chunks++
			switch typ {
			case replyTypeNone:
			case replyTypeOffsetData:
				r.data = append(r.data, p[8:]...)
			case replyTypeBlockStatus:
				if binary.BigEndian.Uint32(p) != metaAllocationID {
					rc.t.Fatalf("block status context %d", binary.BigEndian.Uint32(p))
				}
				for q := p[4:]; len(q) >= 8; q = q[8:] {
					r.descs = append(r.descs, descriptor{binary.BigEndian.Uint32(q), binary.BigEndian.Uint32(q[4:])})
				}
			case replyTypeError, replyTypeErrorOffset:
				r.errno = binary.BigEndian.Uint32(p)
				if ml := int(binary.BigEndian.Uint16(p[4:])); 6+ml > len(p) {
					rc.t.Fatalf("error message length %d in %d bytes", ml, len(p))
				}
			default:
				rc.t.Fatalf("unexpected chunk type %d", typ)
			}
			if flags&replyFlagDone != 0 {
				return r
			}
		}
	default:
		rc.t.Fatalf("reply magic % x", m)
	}
	return reply{}
}

// do sends one request and reads its reply (no other requests in flight).
func (rc *rawClient) do(flags, typ uint16, off uint64, length uint32, payload []byte) reply {
	rc.t.Helper()
	const h = 0xabcdef
	rc.sendReq(flags, typ, h, off, length, payload)
	r := rc.readReply(func(uint64) int {
		if typ == cmdRead {
			return int(length)
		}
		return 0
	})
	if r.handle != h {
		rc.t.Fatalf("reply handle %#x, want %#x", r.handle, h)
	}
	return r
}
