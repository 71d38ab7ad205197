package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// NBD protocol numbers (the fixed newstyle handshake, simple replies).
const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic       = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic       = 0x3e889045565a9
	nbdReqMagic       = 0x25609513
	nbdSimpleMagic    = 0x67446698
	nbdFlagFixed      = 1
	nbdFlagNoZeroes   = 2
	nbdOptGo          = 7
	nbdRepAck         = 1
	nbdRepInfo        = 3
	nbdInfoExport     = 0
	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdReqHeaderSize  = 28
	nbdReplyHeaderLen = 16
)

// nbdClient is a minimal NBD client for the benchmark: OPT_GO, simple
// replies, many requests in flight on one connection (one per worker),
// replies matched by handle on a reader goroutine.
type nbdClient struct {
	conn *net.UnixConn
	sz   int64

	wmu  sync.Mutex
	wbuf []byte

	mu      sync.Mutex
	pending map[uint64]*nbdCall
	next    uint64
	err     error
	done    chan struct{}
}

type nbdCall struct {
	buf []byte // read: filled from the reply
	ch  chan error
}

func dialNBD(socket, export string) (*nbdClient, error) {
	nc, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	c := &nbdClient{conn: nc.(*net.UnixConn), pending: make(map[uint64]*nbdCall), done: make(chan struct{})}
	if err := c.handshake(export); err != nil {
		nc.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	go c.reader()
	return c, nil
}

func (c *nbdClient) handshake(export string) error {
	var hello [18]byte
	if _, err := io.ReadFull(c.conn, hello[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(hello[0:]) != nbdMagic || binary.BigEndian.Uint64(hello[8:]) != nbdOptMagic {
		return errors.New("not a newstyle NBD server")
	}
	opt := binary.BigEndian.AppendUint32(nil, nbdFlagFixed|nbdFlagNoZeroes)
	opt = binary.BigEndian.AppendUint64(opt, nbdOptMagic)
	opt = binary.BigEndian.AppendUint32(opt, nbdOptGo)
	opt = binary.BigEndian.AppendUint32(opt, uint32(4+len(export)+2))
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(export)))
	opt = append(opt, export...)
	opt = binary.BigEndian.AppendUint16(opt, 0)
	if _, err := c.conn.Write(opt); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			return err
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if binary.BigEndian.Uint64(h[0:]) != nbdRepMagic || n > 1<<20 {
			return errors.New("bad option reply")
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.conn, data); err != nil {
			return err
		}
		switch {
		case typ == nbdRepAck:
			if c.sz == 0 {
				return errors.New("no export size")
			}
			return nil
		case typ == nbdRepInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == nbdInfoExport:
			c.sz = int64(binary.BigEndian.Uint64(data[2:]))
		case typ&(1<<31) != 0:
			return fmt.Errorf("server refused export %q (reply %#x: %s)", export, typ, data)
		}
	}
}

func (c *nbdClient) reader() {
	r := bufio.NewReaderSize(c.conn, 1<<20)
	var h [nbdReplyHeaderLen]byte
	var err error
	for {
		if _, err = io.ReadFull(r, h[:]); err != nil {
			break
		}
		if binary.BigEndian.Uint32(h[0:]) != nbdSimpleMagic {
			err = errors.New("nbd: bad reply magic")
			break
		}
		handle := binary.BigEndian.Uint64(h[8:])
		c.mu.Lock()
		call := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if call == nil {
			err = fmt.Errorf("nbd: reply for unknown handle %d", handle)
			break
		}
		if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
			call.ch <- fmt.Errorf("nbd: error %d", e)
			continue
		}
		if call.buf != nil {
			if _, err = io.ReadFull(r, call.buf); err != nil {
				call.ch <- err
				break
			}
		}
		call.ch <- nil
	}
	c.mu.Lock()
	c.err = err
	for h, call := range c.pending {
		call.ch <- err
		delete(c.pending, h)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *nbdClient) io(ctx context.Context, write bool, buf []byte, off int64) error {
	call := &nbdCall{ch: make(chan error, 1)}
	typ := uint16(nbdCmdWrite)
	if !write {
		typ, call.buf = nbdCmdRead, buf
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.next++
	handle := c.next
	c.pending[handle] = call
	c.mu.Unlock()
	c.wmu.Lock()
	h := binary.BigEndian.AppendUint32(c.wbuf[:0], nbdReqMagic)
	h = binary.BigEndian.AppendUint16(h, 0)
	h = binary.BigEndian.AppendUint16(h, typ)
	h = binary.BigEndian.AppendUint64(h, handle)
	h = binary.BigEndian.AppendUint64(h, uint64(off))
	h = binary.BigEndian.AppendUint32(h, uint32(len(buf)))
	c.wbuf = h
	var err error
	if write {
		bufs := net.Buffers{h, buf}
		_, err = bufs.WriteTo(c.conn)
	} else {
		_, err = c.conn.Write(h)
	}
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	select {
	case err := <-call.ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *nbdClient) size() int64 { return c.sz }

func (c *nbdClient) close() error {
	var req [nbdReqHeaderSize]byte
	binary.BigEndian.PutUint32(req[0:], nbdReqMagic)
	binary.BigEndian.PutUint16(req[6:], nbdCmdDisc)
	c.wmu.Lock()
	c.conn.Write(req[:])
	c.wmu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}
