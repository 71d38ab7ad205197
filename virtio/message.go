package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Wire limits.
const (
	headerSize = 12
	// maxPayload bounds what we read for one message: the largest valid one
	// is GET_CONFIG/SET_CONFIG (12 + 256 bytes); SET_MEM_TABLE is 8 + 8×32.
	maxPayload = 4096
	// maxFds bounds the fds accepted with one message (SET_MEM_TABLE: 8).
	maxFds = 8

	vringStateSize = 8
	vringAddrSize  = 40
	memRegionSize  = 32
	configHdrSize  = 12
	u64Size        = 8
)

// errProtocol marks malformed messages: the connection is closed.
var errProtocol = errors.New("virtio: vhost-user protocol error")

// header is the 12-byte vhost-user message header (native endian; we only
// run on little-endian hosts, see doc.go).
type header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

// message is one vhost-user message with the fds that came with it.
type message struct {
	header
	payload []byte
	fds     []int
}

// closeFds closes the fds the message still owns (those not taken by a handler).
func (m *message) closeFds() {
	for i, fd := range m.fds {
		if fd >= 0 {
			unix.Close(fd)
			m.fds[i] = -1
		}
	}
}

// takeFd hands the single fd of the message to the caller.
func (m *message) takeFd() (int, error) {
	n := 0
	fd := -1
	for i, f := range m.fds {
		if f >= 0 {
			n++
			fd = f
			m.fds[i] = -1
		}
	}
	if n != 1 {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("%w: %s carries %d fds, want 1", errProtocol, reqName(m.Request), n)
	}
	return fd, nil
}

func decodeHeader(b []byte) (header, error) {
	if len(b) < headerSize {
		return header{}, fmt.Errorf("%w: short header (%d bytes)", errProtocol, len(b))
	}
	h := header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&flagVersionMask != flagVersion {
		return h, fmt.Errorf("%w: version %d in flags %#x", errProtocol, h.Flags&flagVersionMask, h.Flags)
	}
	if h.Size > maxPayload {
		return h, fmt.Errorf("%w: %s payload of %d bytes (max %d)", errProtocol, reqName(h.Request), h.Size, maxPayload)
	}
	return h, nil
}

func encodeHeader(b []byte, h header) {
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

// msgConn frames vhost-user messages on a unix stream socket.
type msgConn struct {
	c   *net.UnixConn
	oob []byte
}

func newMsgConn(c *net.UnixConn) *msgConn {
	return &msgConn{c: c, oob: make([]byte, unix.CmsgSpace(4*maxFds)+unix.CmsgSpace(4))}
}

// readFull reads len(b) bytes, collecting fds that arrive on the way. On
// error every collected fd is closed.
//
// A read deadline (a handover's Drain) ends the read only at a message
// boundary: when nothing of the message was read yet (mid false, got 0,
// no fds). Within a message it is cleared and the rest is read: the
// front-end is in the middle of sending it.
func (mc *msgConn) readFull(b []byte, fds []int, mid bool) ([]int, error) {
	for got := 0; got < len(b); {
		n, oobn, flags, _, err := mc.c.ReadMsgUnix(b[got:], mc.oob)
		woken := false
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && (mid || got+n > 0 || len(fds) > 0 || oobn > 0) {
			mc.c.SetReadDeadline(time.Time{})
			err, woken = nil, true
		}
		if oobn > 0 {
			var perr error
			fds, perr = appendRights(fds, mc.oob[:oobn])
			if perr == nil && flags&unix.MSG_CTRUNC != 0 {
				perr = fmt.Errorf("%w: control data truncated (too many fds)", errProtocol)
			}
			if perr == nil && len(fds) > maxFds {
				perr = fmt.Errorf("%w: %d fds in one message (max %d)", errProtocol, len(fds), maxFds)
			}
			if perr != nil {
				closeAll(fds)
				return nil, perr
			}
		}
		got += n
		if err != nil {
			closeAll(fds)
			return nil, err
		}
		if n == 0 && !woken {
			closeAll(fds)
			return nil, fmt.Errorf("virtio: connection closed: %w", net.ErrClosed)
		}
	}
	return fds, nil
}

func appendRights(fds []int, oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return fds, fmt.Errorf("%w: control message: %v", errProtocol, err)
	}
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, fmt.Errorf("%w: SCM_RIGHTS: %v", errProtocol, err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// read returns the next message. Malformed headers wrap errProtocol.
func (mc *msgConn) read() (*message, error) {
	var hb [headerSize]byte
	fds, err := mc.readFull(hb[:], nil, false)
	if err != nil {
		return nil, err
	}
	h, err := decodeHeader(hb[:])
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	m := &message{header: h, payload: make([]byte, h.Size)}
	if m.fds, err = mc.readFull(m.payload, fds, true); err != nil {
		return nil, err
	}
	return m, nil
}

// write sends one message; fds go with it in SCM_RIGHTS.
func (mc *msgConn) write(request, flags uint32, payload []byte, fds []int) error {
	buf := make([]byte, headerSize+len(payload))
	encodeHeader(buf, header{Request: request, Flags: flags | flagVersion, Size: uint32(len(payload))})
	copy(buf[headerSize:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	n, _, err := mc.c.WriteMsgUnix(buf, oob, nil)
	if err != nil {
		return fmt.Errorf("virtio: send %s: %w", reqName(request), err)
	}
	if n != len(buf) {
		return fmt.Errorf("virtio: send %s: short write (%d of %d)", reqName(request), n, len(buf))
	}
	return nil
}

// Payloads.

type vringState struct{ Index, Num uint32 }

type vringAddr struct {
	Index, Flags           uint32
	Desc, Used, Avail, Log uint64
}

type memRegion struct {
	GPA, Size, UVA, MmapOffset uint64
}

type configMsg struct {
	Offset, Size, Flags uint32
	Data                []byte
}

func checkSize(m *message, want int) error {
	if len(m.payload) < want {
		return fmt.Errorf("%w: %s payload %d bytes, want %d", errProtocol, reqName(m.Request), len(m.payload), want)
	}
	return nil
}

func decodeU64(m *message) (uint64, error) {
	if err := checkSize(m, u64Size); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(m.payload), nil
}

func encodeU64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func decodeVringState(m *message) (vringState, error) {
	if err := checkSize(m, vringStateSize); err != nil {
		return vringState{}, err
	}
	le := binary.LittleEndian
	return vringState{Index: le.Uint32(m.payload), Num: le.Uint32(m.payload[4:])}, nil
}

func encodeVringState(s vringState) []byte {
	b := binary.LittleEndian.AppendUint32(nil, s.Index)
	return binary.LittleEndian.AppendUint32(b, s.Num)
}

func decodeVringAddr(m *message) (vringAddr, error) {
	if err := checkSize(m, vringAddrSize); err != nil {
		return vringAddr{}, err
	}
	le, p := binary.LittleEndian, m.payload
	return vringAddr{
		Index: le.Uint32(p), Flags: le.Uint32(p[4:]),
		Desc: le.Uint64(p[8:]), Used: le.Uint64(p[16:]), Avail: le.Uint64(p[24:]), Log: le.Uint64(p[32:]),
	}, nil
}

func encodeVringAddr(a vringAddr) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, a.Index)
	b = le.AppendUint32(b, a.Flags)
	b = le.AppendUint64(b, a.Desc)
	b = le.AppendUint64(b, a.Used)
	b = le.AppendUint64(b, a.Avail)
	return le.AppendUint64(b, a.Log)
}

func decodeRegion(p []byte) memRegion {
	le := binary.LittleEndian
	return memRegion{GPA: le.Uint64(p), Size: le.Uint64(p[8:]), UVA: le.Uint64(p[16:]), MmapOffset: le.Uint64(p[24:])}
}

func appendRegion(b []byte, r memRegion) []byte {
	le := binary.LittleEndian
	b = le.AppendUint64(b, r.GPA)
	b = le.AppendUint64(b, r.Size)
	b = le.AppendUint64(b, r.UVA)
	return le.AppendUint64(b, r.MmapOffset)
}

// decodeMemTable parses SET_MEM_TABLE: {u32 nregions, u32 pad} + regions.
// It checks the count against the payload and the fds; trailing bytes are
// tolerated (some front-ends send the full 8-region array).
func decodeMemTable(m *message) ([]memRegion, error) {
	if err := checkSize(m, 8); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(m.payload)
	if n == 0 || n > maxMemTableRegions {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions (1..%d)", errProtocol, n, maxMemTableRegions)
	}
	if err := checkSize(m, 8+int(n)*memRegionSize); err != nil {
		return nil, err
	}
	if len(m.fds) != int(n) {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions and %d fds", errProtocol, n, len(m.fds))
	}
	regs := make([]memRegion, n)
	for i := range regs {
		regs[i] = decodeRegion(m.payload[8+i*memRegionSize:])
	}
	return regs, nil
}

func encodeMemTable(regs []memRegion) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(regs)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, r := range regs {
		b = appendRegion(b, r)
	}
	return b
}

// decodeSingleRegion parses ADD_MEM_REG / REM_MEM_REG: u64 pad + one region.
func decodeSingleRegion(m *message) (memRegion, error) {
	if err := checkSize(m, 8+memRegionSize); err != nil {
		return memRegion{}, err
	}
	return decodeRegion(m.payload[8:]), nil
}

func encodeSingleRegion(r memRegion) []byte { return appendRegion(make([]byte, 8), r) }

// decodeConfig parses GET_CONFIG/SET_CONFIG: {offset, size, flags} + size bytes.
func decodeConfig(m *message) (configMsg, error) {
	if err := checkSize(m, configHdrSize); err != nil {
		return configMsg{}, err
	}
	le := binary.LittleEndian
	c := configMsg{Offset: le.Uint32(m.payload), Size: le.Uint32(m.payload[4:]), Flags: le.Uint32(m.payload[8:])}
	if c.Size > maxConfigSize {
		return c, fmt.Errorf("%w: config size %d (max %d)", errProtocol, c.Size, maxConfigSize)
	}
	if err := checkSize(m, configHdrSize+int(c.Size)); err != nil {
		return c, err
	}
	c.Data = m.payload[configHdrSize : configHdrSize+int(c.Size)]
	return c, nil
}

func encodeConfig(c configMsg) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, c.Offset)
	b = le.AppendUint32(b, c.Size)
	b = le.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}

// parsePayload decodes the payload of m by request type and reports a
// protocol error for malformed ones. It is what the back-end runs on every
// message before acting on it, and what FuzzMessage exercises.
func parsePayload(m *message) (any, error) {
	switch m.Request {
	case reqSetFeatures, reqSetProtocolFeatures, reqSetVringKick, reqSetVringCall,
		reqSetVringErr, reqSetLogBase, reqSetStatus:
		return decodeU64(m)
	case reqSetVringNum, reqSetVringBase, reqGetVringBase, reqSetVringEnable:
		return decodeVringState(m)
	case reqSetVringAddr:
		return decodeVringAddr(m)
	case reqSetMemTable:
		return decodeMemTable(m)
	case reqAddMemReg, reqRemMemReg:
		return decodeSingleRegion(m)
	case reqGetConfig, reqSetConfig:
		return decodeConfig(m)
	case reqGetInflightFd, reqSetInflightFd:
		return decodeInflight(m)
	}
	return nil, nil
}
