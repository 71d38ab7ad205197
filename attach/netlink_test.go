package attach

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The request path against this kernel: the generic netlink controller
// resolves its own family (always present), and the nbd family resolves
// exactly when the driver is there.
func TestGenlAgainstKernel(t *testing.T) {
	g, err := dialGenl("nlctrl")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.family != unix.GENL_ID_CTRL {
		t.Fatalf("nlctrl resolved to %#x, want %#x", g.family, unix.GENL_ID_CTRL)
	}
	if _, err := dialGenl("sluicenofamily"); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("a missing family: %v, want ENOENT", err)
	}
	nb, err := dialNBD()
	devs, _ := filepath.Glob("/dev/nbd*")
	_, modErr := os.Stat("/sys/module/nbd")
	switch {
	case err == nil:
		nb.Close()
		t.Logf("nbd family %#x (devices %v)", nb.family, devs)
	case modErr == nil:
		t.Fatalf("the nbd module is loaded but its family does not resolve: %v", err)
	default:
		t.Logf("no nbd driver here: %v", err)
	}
}

// NBD_CMD_CONNECT's attributes, as the kernel parses them: size, block
// size, flags, and one nested socket item holding the fd.
func TestConnectMessage(t *testing.T) {
	b := connectMessage(nbdConnect{size: 1 << 30, blockSize: 4096, flags: 0x12d, fd: 7, backend: "sluice:x:t/v"})
	attrs, err := parseAttrs(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.NativeEndian.Uint64(attrs[nbdAttrSizeBytes]); got != 1<<30 {
		t.Errorf("size %d", got)
	}
	if got := binary.NativeEndian.Uint64(attrs[nbdAttrBlockSizeBytes]); got != 4096 {
		t.Errorf("block size %d", got)
	}
	if got := binary.NativeEndian.Uint64(attrs[nbdAttrServerFlags]); got != 0x12d {
		t.Errorf("flags %#x", got)
	}
	if got := string(attrs[nbdAttrBackendIdentifier]); got != "sluice:x:t/v\x00" {
		t.Errorf("backend %q", got)
	}
	if _, ok := attrs[nbdAttrIndex]; ok {
		t.Error("an index was sent: the kernel should pick the device")
	}
	socks, err := parseAttrs(attrs[nbdAttrSockets])
	if err != nil {
		t.Fatal(err)
	}
	item, err := parseAttrs(socks[nbdSockItem])
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.NativeEndian.Uint32(item[nbdSockFD]); got != 7 {
		t.Errorf("socket fd %d", got)
	}
	// The nested flag is set on both containers (the kernel's nla_parse
	// of NBD_ATTR_SOCKETS wants it).
	off := 0
	for off < len(b) {
		l, typ := int(binary.NativeEndian.Uint16(b[off:])), binary.NativeEndian.Uint16(b[off+2:])
		if typ&^unix.NLA_F_NESTED == nbdAttrSockets {
			if typ&unix.NLA_F_NESTED == 0 || binary.NativeEndian.Uint16(b[off+6:])&unix.NLA_F_NESTED == 0 {
				t.Errorf("sockets attribute %#x, item %#x: want NLA_F_NESTED on both", typ, binary.NativeEndian.Uint16(b[off+6:]))
			}
		}
		off += align4(l)
	}
}

// The timeouts go in whole seconds, and only when set; NBD_CMD_RECONFIGURE
// names the device and carries the new socket the way CONNECT does.
func TestTimeoutsAndReconfigureMessage(t *testing.T) {
	attrs, err := parseAttrs(connectMessage(nbdConnect{size: 1 << 20, blockSize: 512, fd: 3}))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := attrs[nbdAttrTimeout]; ok {
		t.Error("a timeout of 0 was sent")
	}
	if _, ok := attrs[nbdAttrDeadConnTimeout]; ok {
		t.Error("a dead-connection timeout of 0 was sent")
	}
	attrs, err = parseAttrs(connectMessage(nbdConnect{size: 1 << 20, blockSize: 512, fd: 3, timeout: seconds(1500 * time.Millisecond), deadTimeout: 120}))
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.NativeEndian.Uint64(attrs[nbdAttrTimeout]); got != 2 {
		t.Errorf("timeout %d s, want 1.5 s rounded up to 2", got)
	}
	if got := binary.NativeEndian.Uint64(attrs[nbdAttrDeadConnTimeout]); got != 120 {
		t.Errorf("dead-connection timeout %d s", got)
	}
	attrs, err = parseAttrs(reconfigureMessage(5, 9, "sluice:x:t/v", 30, 60))
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.NativeEndian.Uint32(attrs[nbdAttrIndex]); got != 5 {
		t.Errorf("index %d", got)
	}
	if got := string(attrs[nbdAttrBackendIdentifier]); got != "sluice:x:t/v\x00" {
		t.Errorf("backend %q: the driver refuses to reconfigure a device with a backend without it", got)
	}
	if binary.NativeEndian.Uint64(attrs[nbdAttrTimeout]) != 30 || binary.NativeEndian.Uint64(attrs[nbdAttrDeadConnTimeout]) != 60 {
		t.Error("reconfigure timeouts not sent")
	}
	socks, err := parseAttrs(attrs[nbdAttrSockets])
	if err != nil {
		t.Fatal(err)
	}
	item, err := parseAttrs(socks[nbdSockItem])
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.NativeEndian.Uint32(item[nbdSockFD]); got != 9 {
		t.Errorf("socket fd %d", got)
	}
}

// Replies with lengths that do not fit what was received are errors, not
// panics or reads past the datagram.
func TestParseRejectsBadLengths(t *testing.T) {
	msg := func(l uint32, typ uint16, body []byte) []byte {
		b := make([]byte, 16)
		binary.NativeEndian.PutUint32(b, l)
		binary.NativeEndian.PutUint16(b[4:], typ)
		return append(b, body...)
	}
	for name, b := range map[string][]byte{
		"short header":      make([]byte, 10),
		"length too big":    msg(100, 0x20, make([]byte, 8)),
		"length too small":  msg(8, 0x20, nil),
		"short error":       msg(18, unix.NLMSG_ERROR, []byte{1, 2}),
		"short genl header": msg(18, 0x20, []byte{1, 2}),
	} {
		if _, err := parseMessages(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	for name, b := range map[string][]byte{
		"short attribute":     {1, 0},
		"attribute too big":   {40, 0, 1, 0, 0, 0, 0, 0},
		"attribute too small": {2, 0, 1, 0},
	} {
		if _, err := parseAttrs(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// A well-formed error message carries its errno.
	e := msg(36, unix.NLMSG_ERROR, append(binary.NativeEndian.AppendUint32(nil, 0xfffffff0), make([]byte, 16)...))
	ms, err := parseMessages(e) // -16 is -EBUSY
	if err != nil || len(ms) != 1 || ms[0].errno != int32(unix.EBUSY) {
		t.Fatalf("error message: %+v %v", ms, err)
	}
}

func FuzzNetlinkReply(f *testing.F) {
	f.Add(connectMessage(nbdConnect{size: 1 << 20, blockSize: 512, fd: 3}))
	f.Add([]byte{20, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if ms, err := parseMessages(b); err == nil {
			for _, m := range ms {
				parseAttrs(m.payload)
			}
		}
		if as, err := parseAttrs(b); err == nil {
			for _, v := range as {
				parseAttrs(v)
			}
		}
	})
}
