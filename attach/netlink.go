package attach

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The Linux nbd driver's generic netlink interface
// (include/uapi/linux/nbd-netlink.h), which nbd-client uses since 4.12:
// NBD_CMD_CONNECT hands the driver connected sockets and the export's
// size and flags, and answers with the device index; NBD_CMD_RECONFIGURE
// gives a device whose connection died a new socket; NBD_CMD_DISCONNECT
// ends it.
const (
	nbdFamilyName = "nbd"
	nbdVersion    = 1

	nbdCmdConnect     = 1
	nbdCmdDisconnect  = 2
	nbdCmdReconfigure = 3

	nbdAttrIndex             = 1
	nbdAttrSizeBytes         = 2
	nbdAttrBlockSizeBytes    = 3
	nbdAttrTimeout           = 4 // seconds
	nbdAttrServerFlags       = 5
	nbdAttrSockets           = 7
	nbdAttrDeadConnTimeout   = 8  // seconds
	nbdAttrBackendIdentifier = 10 // since 5.16; older kernels ignore it

	nbdSockItem = 1
	nbdSockFD   = 1
)

// nlmsghdr + genlmsghdr.
const genlHeaderLen = unix.SizeofNlMsghdr + 4

// genl is a generic netlink socket bound to the nbd family.
type genl struct {
	mu     sync.Mutex
	fd     int
	seq    uint32
	family uint16
}

// dialNBD opens a generic netlink socket and resolves the nbd family. It
// fails (ENOENT) when the nbd driver is not loaded and cannot be.
func dialNBD() (*genl, error) { return dialGenl(nbdFamilyName) }

// dialGenl opens a generic netlink socket and resolves family name.
func dialGenl(name string) (*genl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	g := &genl{fd: fd}
	attrs, err := g.request(unix.GENL_ID_CTRL, unix.CTRL_CMD_GETFAMILY, 1,
		nlAttr(nil, unix.CTRL_ATTR_FAMILY_NAME, append([]byte(name), 0)))
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("netlink family %q: %w", name, err)
	}
	id, ok := attrs[unix.CTRL_ATTR_FAMILY_ID]
	if !ok || len(id) < 2 {
		g.Close()
		return nil, fmt.Errorf("netlink family %q: reply without an id", name)
	}
	g.family = binary.NativeEndian.Uint16(id)
	return g, nil
}

func (g *genl) Close() error { return unix.Close(g.fd) }

// nbdConnect is what NBD_CMD_CONNECT carries.
type nbdConnect struct {
	size, blockSize int64
	flags           uint16 // the export's transmission flags
	fd              int    // the kernel's end of the connection
	backend         string // shown in /sys/block/nbdN/backend
	// timeout: a request unanswered this many seconds marks the
	// connection dead and is sent again once a new socket arrives
	// (0: never; the driver then never resends a request the dead
	// connection carried). deadTimeout: how long requests wait for a new
	// socket (NBD_CMD_RECONFIGURE) once the connection died before they
	// fail (0: they fail at once).
	timeout, deadTimeout uint64
}

// connectMessage is NBD_CMD_CONNECT's attributes: no index (the driver
// picks a free device).
func connectMessage(c nbdConnect) []byte {
	var b []byte
	b = nlAttr(b, nbdAttrSizeBytes, u64(uint64(c.size)))
	b = nlAttr(b, nbdAttrBlockSizeBytes, u64(uint64(c.blockSize)))
	b = nlAttr(b, nbdAttrServerFlags, u64(uint64(c.flags)))
	if c.timeout > 0 {
		b = nlAttr(b, nbdAttrTimeout, u64(c.timeout))
	}
	if c.deadTimeout > 0 {
		b = nlAttr(b, nbdAttrDeadConnTimeout, u64(c.deadTimeout))
	}
	b = nlAttr(b, nbdAttrSockets|unix.NLA_F_NESTED, socketsAttr(c.fd))
	if c.backend != "" {
		b = nlAttr(b, nbdAttrBackendIdentifier, append([]byte(c.backend), 0))
	}
	return b
}

// socketsAttr is NBD_ATTR_SOCKETS' contents: one socket, fd.
func socketsAttr(fd int) []byte {
	item := nlAttr(nil, nbdSockFD, u32(uint32(fd)))
	return nlAttr(nil, nbdSockItem|unix.NLA_F_NESTED, item)
}

// reconfigureMessage is NBD_CMD_RECONFIGURE's attributes: device index's
// dead connection is replaced by fd (the driver takes the first dead
// one, and answers success without taking fd when none is dead: the
// caller checks). A device connected with a backend identifier is
// reconfigured only by a request naming the same one.
func reconfigureMessage(index int, fd int, backend string, timeout, deadTimeout uint64) []byte {
	b := nlAttr(nil, nbdAttrIndex, u32(uint32(index)))
	if backend != "" {
		b = nlAttr(b, nbdAttrBackendIdentifier, append([]byte(backend), 0))
	}
	if timeout > 0 {
		b = nlAttr(b, nbdAttrTimeout, u64(timeout))
	}
	if deadTimeout > 0 {
		b = nlAttr(b, nbdAttrDeadConnTimeout, u64(deadTimeout))
	}
	return nlAttr(b, nbdAttrSockets|unix.NLA_F_NESTED, socketsAttr(fd))
}

// reconfigure gives device index, whose connection died, the socket fd.
func (g *genl) reconfigure(index, fd int, backend string, timeout, deadTimeout uint64) error {
	if _, err := g.request(g.family, nbdCmdReconfigure, nbdVersion, reconfigureMessage(index, fd, backend, timeout, deadTimeout)); err != nil {
		return fmt.Errorf("NBD_CMD_RECONFIGURE nbd%d: %w", index, err)
	}
	return nil
}

// connect hands the kernel a connection and returns the device index.
func (g *genl) connect(c nbdConnect) (int, error) {
	attrs, err := g.request(g.family, nbdCmdConnect, nbdVersion, connectMessage(c))
	if err != nil {
		return 0, fmt.Errorf("NBD_CMD_CONNECT: %w", err)
	}
	idx, ok := attrs[nbdAttrIndex]
	if !ok || len(idx) < 4 {
		return 0, errors.New("NBD_CMD_CONNECT: reply without a device index")
	}
	return int(binary.NativeEndian.Uint32(idx)), nil
}

// disconnect asks the kernel to end device index's connection: it sends
// NBD_CMD_DISC and shuts the socket.
func (g *genl) disconnect(index int) error {
	if _, err := g.request(g.family, nbdCmdDisconnect, nbdVersion, nlAttr(nil, nbdAttrIndex, u32(uint32(index)))); err != nil {
		return fmt.Errorf("NBD_CMD_DISCONNECT nbd%d: %w", index, err)
	}
	return nil
}

// request sends one generic netlink request with an ack asked for and
// returns the attributes of the reply message (if the command has one)
// once the ack came.
func (g *genl) request(family uint16, cmd, version uint8, attrs []byte) (map[uint16][]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seq++
	seq := g.seq
	msg := make([]byte, genlHeaderLen, genlHeaderLen+len(attrs))
	binary.NativeEndian.PutUint32(msg[0:], uint32(genlHeaderLen+len(attrs)))
	binary.NativeEndian.PutUint16(msg[4:], family)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg[16], msg[17] = cmd, version
	msg = append(msg, attrs...)
	if err := unix.Sendto(g.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 64<<10)
	var reply map[uint16][]byte
	for {
		n, _, err := unix.Recvfrom(g.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := parseMessages(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if m.errno != 0 {
					return nil, syscall.Errno(m.errno)
				}
				return reply, nil // the ack
			case unix.NLMSG_DONE, unix.NLMSG_NOOP:
			default:
				if reply, err = parseAttrs(m.payload); err != nil {
					return nil, err
				}
			}
		}
	}
}

// nlMessage is one received netlink message: a generic netlink message's
// attribute bytes (payload), or an error/ack (errno, 0 for an ack).
type nlMessage struct {
	typ     uint16
	seq     uint32
	errno   int32 // positive
	payload []byte
}

// parseMessages splits a datagram into messages. Every length is checked
// against what was received; payloads are copies (the buffer is reused).
func parseMessages(b []byte) ([]nlMessage, error) {
	var out []nlMessage
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return nil, fmt.Errorf("netlink: %d trailing bytes, shorter than a header", len(b))
		}
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return nil, fmt.Errorf("netlink: message length %d of %d bytes", l, len(b))
		}
		m := nlMessage{typ: binary.NativeEndian.Uint16(b[4:]), seq: binary.NativeEndian.Uint32(b[8:])}
		body := b[unix.SizeofNlMsghdr:l]
		switch m.typ {
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return nil, fmt.Errorf("netlink: error message of %d bytes", len(body))
			}
			m.errno = -int32(binary.NativeEndian.Uint32(body))
		case unix.NLMSG_DONE, unix.NLMSG_NOOP:
		default:
			if len(body) < 4 {
				return nil, fmt.Errorf("netlink: generic message of %d bytes", len(body))
			}
			m.payload = bytes.Clone(body[4:])
		}
		out = append(out, m)
		b = b[min(len(b), align4(l)):]
	}
	return out, nil
}

// parseAttrs reads a flat list of attributes (type without its flag bits
// → value). Values alias b.
func parseAttrs(b []byte) (map[uint16][]byte, error) {
	out := make(map[uint16][]byte)
	for len(b) > 0 {
		if len(b) < unix.SizeofNlAttr {
			return nil, fmt.Errorf("netlink: %d trailing attribute bytes", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < unix.SizeofNlAttr || l > len(b) {
			return nil, fmt.Errorf("netlink: attribute length %d of %d bytes", l, len(b))
		}
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		out[typ] = b[unix.SizeofNlAttr:l]
		b = b[min(len(b), align4(l)):]
	}
	return out, nil
}

// nlAttr appends attribute typ with value v, padded to 4 bytes.
func nlAttr(b []byte, typ uint16, v []byte) []byte {
	var h [unix.SizeofNlAttr]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(unix.SizeofNlAttr+len(v)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(b, h[:]...)
	b = append(b, v...)
	return append(b, make([]byte, align4(len(v))-len(v))...)
}

func align4(n int) int { return (n + 3) &^ 3 }

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }
