package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// nbdTestClient is a minimal NBD client for verified IO across gateway
// handovers: fixed newstyle handshake, NBD_OPT_EXPORT_NAME, simple
// replies; one request at a time (do) or a few pipelined (batch).
type nbdTestClient struct {
	c      net.Conn
	size   int64
	handle uint64
}

// dialNBDExport connects to addr: a unix socket path, or host:port.
func dialNBDExport(addr, export string) (*nbdTestClient, error) {
	network := "unix"
	if !strings.HasPrefix(addr, "/") {
		network = "tcp"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	cl := &nbdTestClient{c: c}
	hs := make([]byte, 18)
	if _, err := io.ReadFull(c, hs); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if string(hs[:8]) != "NBDMAGIC" || binary.BigEndian.Uint64(hs[8:16]) != 0x49484156454F5054 {
		c.Close()
		return nil, fmt.Errorf("greeting %x", hs)
	}
	opt := binary.BigEndian.AppendUint32(nil, 1|2) // fixed newstyle, no zeroes
	opt = binary.BigEndian.AppendUint64(opt, 0x49484156454F5054)
	opt = binary.BigEndian.AppendUint32(opt, 1) // NBD_OPT_EXPORT_NAME
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(export)))
	opt = append(opt, export...)
	if _, err := c.Write(opt); err != nil {
		c.Close()
		return nil, err
	}
	info := make([]byte, 10)
	if _, err := io.ReadFull(c, info); err != nil {
		c.Close()
		return nil, fmt.Errorf("export %s: %w", export, err)
	}
	cl.size = int64(binary.BigEndian.Uint64(info))
	c.SetDeadline(time.Time{})
	return cl, nil
}

// nbdReq is one request of a batch: type (0 read, 1 write, 3 flush),
// offset, length, a write's payload.
type nbdReq struct {
	typ     uint16
	off     int64
	length  int
	payload []byte
}

// do sends one request and reads its simple reply (and a read's data).
func (cl *nbdTestClient) do(typ uint16, off int64, length int, payload []byte) ([]byte, error) {
	out, err := cl.batch(nbdReq{typ, off, length, payload})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// batch sends reqs in one write, then reads their replies, which may
// come in any order; it returns each read's data in reqs' order.
func (cl *nbdTestClient) batch(reqs ...nbdReq) ([][]byte, error) {
	cl.c.SetDeadline(time.Now().Add(60 * time.Second))
	var buf []byte
	first := cl.handle + 1
	for _, r := range reqs {
		cl.handle++
		buf = binary.BigEndian.AppendUint32(buf, 0x25609513)
		buf = binary.BigEndian.AppendUint16(buf, 0)
		buf = binary.BigEndian.AppendUint16(buf, r.typ)
		buf = binary.BigEndian.AppendUint64(buf, cl.handle)
		buf = binary.BigEndian.AppendUint64(buf, uint64(r.off))
		buf = binary.BigEndian.AppendUint32(buf, uint32(r.length))
		buf = append(buf, r.payload...)
	}
	if _, err := cl.c.Write(buf); err != nil {
		return nil, err
	}
	out := make([][]byte, len(reqs))
	done := make([]bool, len(reqs))
	rep := make([]byte, 16)
	for range reqs {
		if _, err := io.ReadFull(cl.c, rep); err != nil {
			return nil, err
		}
		i := int(binary.BigEndian.Uint64(rep[8:]) - first)
		if binary.BigEndian.Uint32(rep) != 0x67446698 || i < 0 || i >= len(reqs) || done[i] {
			return nil, fmt.Errorf("bad reply %x", rep)
		}
		done[i] = true
		if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
			return nil, fmt.Errorf("NBD error %d", e)
		}
		if reqs[i].typ == 0 {
			out[i] = make([]byte, reqs[i].length)
			if _, err := io.ReadFull(cl.c, out[i]); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

func (cl *nbdTestClient) close() { cl.c.Close() }

// verifiedWriter writes random blocks over NBD, each pipelined with a
// read of another block that it checks, flushes after each, and keeps
// what each block must hold once its flush was answered. A block whose
// write or flush was in flight when the connection dropped may hold the
// old or the new bytes: both are accepted until it is written again.
// On a dropped connection it reconnects (the socket stays bound across a
// handover; connect waits in its queue until the new process accepts),
// unless keep is set: then any error fails it.
type verifiedWriter struct {
	socket, export string // socket: a unix socket path or host:port
	blocks         int
	bs             int
	keep           bool // the one connection must serve throughout

	// io is held around each step, and by verifyAll: a block being
	// written is in neither state of the model yet.
	io sync.Mutex

	mu          sync.Mutex
	ops         int64
	dials       int
	reconnects  int
	longestGap  time.Duration
	longestIO   time.Duration // the longest request (or batch) since takeLongestIO
	flushed     map[int][]byte
	uncertain   map[int][2][]byte
	err         error
	verifyReads int64
}

func (w *verifiedWriter) run(stop <-chan struct{}) {
	var cl *nbdTestClient
	defer func() {
		if cl != nil {
			cl.close()
		}
	}()
	last := time.Now()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if cl == nil {
			var err error
			if !testwait.Poll(90*time.Second, func() bool {
				cl, err = dialNBDExport(w.socket, w.export)
				return err == nil
			}) {
				w.fail(fmt.Errorf("reconnect: %w", err))
				return
			}
			w.mu.Lock()
			w.dials++
			w.mu.Unlock()
		}
		blk := mrand.IntN(w.blocks)
		data := make([]byte, w.bs)
		rand.Read(data)
		w.io.Lock()
		err := w.step(cl, blk, data)
		w.io.Unlock()
		if err != nil && (errors.Is(err, errMismatch) || w.keep) {
			w.fail(fmt.Errorf("step %d: %w", i, err))
			return
		}
		if err != nil {
			cl.close()
			cl = nil
			w.mu.Lock()
			w.reconnects++
			w.mu.Unlock()
			continue
		}
		now := time.Now()
		w.mu.Lock()
		w.ops++
		w.longestGap = max(w.longestGap, now.Sub(last))
		w.mu.Unlock()
		last = now
	}
}

var errMismatch = errors.New("data mismatch")

// step writes one block and reads another in one pipelined batch (so
// the gateway holds requests past a request boundary in its buffer),
// flushes, and checks the block it read.
func (w *verifiedWriter) step(cl *nbdTestClient, blk int, data []byte) error {
	off := int64(blk * w.bs)
	check := (blk + 1 + mrand.IntN(w.blocks-1)) % w.blocks // not blk: its bytes are in flight
	w.mu.Lock()
	old := w.flushed[blk]
	w.mu.Unlock()
	start := time.Now()
	got, err := cl.batch(nbdReq{1, off, w.bs, data}, nbdReq{0, int64(check * w.bs), w.bs, nil})
	w.observeIO(time.Since(start))
	if err != nil {
		w.markUncertain(blk, old, data)
		return err
	}
	w.mu.Lock()
	w.verifyReads++
	err = w.matches(check, got[1])
	w.mu.Unlock()
	if err != nil {
		return err
	}
	start = time.Now()
	_, err = cl.do(3, 0, 0, nil)
	w.observeIO(time.Since(start))
	if err != nil {
		w.markUncertain(blk, old, data)
		return err
	}
	w.mu.Lock()
	w.flushed[blk] = data
	delete(w.uncertain, blk)
	w.mu.Unlock()
	return nil
}

func (w *verifiedWriter) observeIO(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.longestIO = max(w.longestIO, d)
}

// takeLongestIO returns the longest request (or pipelined pair) since
// the last call, and starts again.
func (w *verifiedWriter) takeLongestIO() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.longestIO
	w.longestIO = 0
	return d
}

// failed is the first error the writer met, if any.
func (w *verifiedWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *verifiedWriter) markUncertain(blk int, old, data []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.uncertain[blk]; !ok {
		w.uncertain[blk] = [2][]byte{old, data}
	}
	w.uncertain[blk] = [2][]byte{w.uncertain[blk][0], data}
	delete(w.flushed, blk)
}

// matches checks one block's bytes against the model (w.mu held).
func (w *verifiedWriter) matches(blk int, got []byte) error {
	zero := make([]byte, w.bs)
	if u, ok := w.uncertain[blk]; ok {
		for _, c := range u {
			if c == nil {
				c = zero
			}
			if bytes.Equal(got, c) {
				return nil
			}
		}
		return fmt.Errorf("%w: block %d holds neither its old nor its new bytes", errMismatch, blk)
	}
	want, ok := w.flushed[blk]
	if !ok {
		want = zero
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: block %d differs from what was flushed", errMismatch, blk)
	}
	return nil
}

func (w *verifiedWriter) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		w.err = err
	}
}

func (w *verifiedWriter) opCount() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ops
}

// verifyAll reads every block through a new connection and checks it.
func (w *verifiedWriter) verifyAll() error {
	cl, err := dialNBDExport(w.socket, w.export)
	if err != nil {
		return err
	}
	defer cl.close()
	w.io.Lock()
	defer w.io.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	for b := 0; b < w.blocks; b++ {
		got, err := cl.do(0, int64(b*w.bs), w.bs, nil)
		if err != nil {
			return err
		}
		if err := w.matches(b, got); err != nil {
			return err
		}
	}
	return nil
}
