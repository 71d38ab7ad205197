package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// nbdTestClient is a minimal NBD client for verified IO across gateway
// handovers: fixed newstyle handshake, NBD_OPT_EXPORT_NAME, simple
// replies, one request at a time.
type nbdTestClient struct {
	c      net.Conn
	size   int64
	handle uint64
}

func dialNBDExport(socket, export string) (*nbdTestClient, error) {
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
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

// do sends one request and reads its simple reply (and a read's data).
func (cl *nbdTestClient) do(typ uint16, off int64, length int, payload []byte) ([]byte, error) {
	cl.handle++
	cl.c.SetDeadline(time.Now().Add(60 * time.Second))
	req := binary.BigEndian.AppendUint32(nil, 0x25609513)
	req = binary.BigEndian.AppendUint16(req, 0)
	req = binary.BigEndian.AppendUint16(req, typ)
	req = binary.BigEndian.AppendUint64(req, cl.handle)
	req = binary.BigEndian.AppendUint64(req, uint64(off))
	req = binary.BigEndian.AppendUint32(req, uint32(length))
	req = append(req, payload...)
	if _, err := cl.c.Write(req); err != nil {
		return nil, err
	}
	rep := make([]byte, 16)
	if _, err := io.ReadFull(cl.c, rep); err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint32(rep) != 0x67446698 || binary.BigEndian.Uint64(rep[8:]) != cl.handle {
		return nil, fmt.Errorf("bad reply %x", rep)
	}
	if e := binary.BigEndian.Uint32(rep[4:]); e != 0 {
		return nil, fmt.Errorf("NBD error %d", e)
	}
	if typ != 0 {
		return nil, nil
	}
	data := make([]byte, length)
	_, err := io.ReadFull(cl.c, data)
	return data, err
}

func (cl *nbdTestClient) close() { cl.c.Close() }

// verifiedWriter writes blocks over NBD, flushes after each, and keeps
// what each block must hold once its flush was answered. A block whose
// write or flush was in flight when the connection dropped may hold the
// old or the new bytes: both are accepted until it is written again.
// On a dropped connection it reconnects (the socket stays bound across a
// handover; connect waits in its queue until the new process accepts).
type verifiedWriter struct {
	socket, export string
	blocks         int
	bs             int

	// io is held around each step, and by verifyAll: a block being
	// written is in neither state of the model yet.
	io sync.Mutex

	mu          sync.Mutex
	ops         int64
	reconnects  int
	longestGap  time.Duration
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
		}
		blk := i % w.blocks
		data := make([]byte, w.bs)
		rand.Read(data)
		w.io.Lock()
		err := w.step(cl, blk, data)
		w.io.Unlock()
		if err != nil && errors.Is(err, errMismatch) {
			w.fail(err)
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

// step writes and flushes one block, then reads back another and checks it.
func (w *verifiedWriter) step(cl *nbdTestClient, blk int, data []byte) error {
	off := int64(blk * w.bs)
	w.mu.Lock()
	old := w.flushed[blk]
	w.mu.Unlock()
	if _, err := cl.do(1, off, w.bs, data); err != nil {
		w.markUncertain(blk, old, data)
		return err
	}
	if _, err := cl.do(3, 0, 0, nil); err != nil {
		w.markUncertain(blk, old, data)
		return err
	}
	w.mu.Lock()
	w.flushed[blk] = data
	delete(w.uncertain, blk)
	w.mu.Unlock()
	check := (blk * 7) % w.blocks
	got, err := cl.do(0, int64(check*w.bs), w.bs, nil)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.verifyReads++
	return w.matches(check, got)
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
