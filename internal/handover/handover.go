// Package handover is the wire protocol of a planned gateway handover
// (`sluice gateway --takeover`, docs/HANDOVER.md): the running gateway
// listens on DATA-DIR/handover.sock (SOCK_SEQPACKET, mode 0600); a new
// process connects and the two exchange one message per packet, JSON,
// the last one carrying the listening sockets as SCM_RIGHTS:
//
//	new → old  hello   its versions
//	old → new  hello   its versions and listeners (or refuse)
//	new → old  go      (or refuse: the flags do not match)
//	old → new  state   when it has stopped accepting, drained and closed
//	                   the store; the listeners' fds ride along
//	old → new  nbd_conn  one per NBD connection handed over (as many as
//	                   the state message said), its socket's fd riding
//	                   along: the NBD door's clients, and the kernel's
//	                   connections of attached nbd devices (attach set)
//	old → new  fuse_mount  one per FUSE mount handed over (as many as the
//	                   state message said), its /dev/fuse fd riding
//	                   along, each followed by its fuse_table parts
//	old → new  virtio_export  one per virtio export (as many as the state
//	                   message said), its listening socket's fd riding
//	                   along, each followed by its virtio_conn messages
//	old → new  virtio_conn  one vhost-user connection of the export before
//	                   it: its socket, memory regions, inflight region and
//	                   eventfds riding along
//
// Sequenced packets keep each message whole and its fds with it, so the
// parser sees exactly one message and never half of one. A message is
// bytes from another process that may be of another Sluice version:
// Parse checks every field it relies on (FuzzParse).
package handover

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/listen"
)

// StateVersion is the version of this protocol and of the state it
// carries. Two processes hand over only when theirs are equal.
// Version 2 added the NBD connections (nbd_conn messages), version 3
// the FUSE mounts (fuse_mount and fuse_table messages).
// Version 4: a mount's file handle numbers may exceed 2^24 (a session
// resumed after a crash hands out epoch<<24+index, fuse/resume.go), which
// a version-3 process refuses after go.
// Version 5: nbd_conn messages may carry an attached device's connection
// (attach), which a version-4 process would serve as an NBD door client
// while its start-up disconnected the device.
// Version 6: the virtio exports' listening sockets and vhost-user
// connections (virtio_export and virtio_conn messages), which a version-5
// process would close.
const StateVersion = 6

// maxNBDIndex bounds an attached device's index (the kernel's nbd minors
// are 20 bits, and partitions take some).
const maxNBDIndex = 1 << 20

// SocketName is the handover socket's name in the data directory.
const SocketName = "handover.sock"

// Message types.
const (
	TypeHello  = "hello"
	TypeRefuse = "refuse"
	TypeGo     = "go"
	TypeState  = "state"
	TypeNBD    = "nbd_conn"
	TypeFUSE   = "fuse_mount"
	TypeTable  = "fuse_table"
	TypeVirtio = "virtio_export"
	TypeVConn  = "virtio_conn"
)

// Limits on what a peer may send.
const (
	maxMessage   = 64 << 10
	MaxListeners = 16
	maxString    = 4096
	maxMounts    = 4096
	// MaxNBDConns bounds the NBD connections one handover carries (one
	// nbd_conn message each).
	MaxNBDConns = 65536
	maxPayload  = 1 << 30 // nbd's largest MaxPayload
	// MaxVirtioExports bounds the virtio exports one handover carries.
	MaxVirtioExports = 4096
)

// Message is one packet of the protocol. Which fields are set depends on
// Type (see the package doc); Parse checks them.
type Message struct {
	Type string `json:"type"`
	// hello
	StateVersion  int    `json:"state_version,omitempty"`
	SluiceVersion string `json:"sluice_version,omitempty"`
	FormatVersion int    `json:"format_version,omitempty"`
	PID           int    `json:"pid,omitempty"`
	// hello (old → new) and state: the listening sockets by name; in a
	// state message, in the order of the fds that came with it.
	Listeners []Listener `json:"listeners,omitempty"`
	// refuse
	Error string `json:"error,omitempty"`
	// state: when the old process stopped accepting (Unix nanoseconds),
	// and the FUSE mounts it unmounted (not handed over yet).
	StoppedAccepting int64    `json:"stopped_accepting,omitempty"`
	Unmounted        []string `json:"unmounted,omitempty"`
	// state: how many nbd_conn messages follow.
	NBDConns int `json:"nbd_conns,omitempty"`
	// nbd_conn: one NBD connection; its socket's fd comes with it.
	NBD *NBDConn `json:"nbd,omitempty"`
	// state: how many fuse_mount messages follow (after the nbd_conn
	// ones).
	FUSEMounts int `json:"fuse_mounts,omitempty"`
	// fuse_mount: one mount; its /dev/fuse fd comes with it.
	FUSE *FUSEMount `json:"fuse,omitempty"`
	// fuse_table: part of the tables of the mount before it.
	Table *FUSETable `json:"table,omitempty"`
	// state: how many virtio_export messages follow (after the FUSE
	// ones).
	VirtioExports int `json:"virtio_exports,omitempty"`
	// virtio_export: one export; its listening socket's fd comes with it.
	Virtio *VirtioExport `json:"virtio,omitempty"`
	// virtio_conn: one vhost-user connection; its fds come with it
	// (VirtioConn.FDs says how many, in which order).
	VConn *VirtioConn `json:"virtio_conn,omitempty"`
}

// VirtioExport is a vhost-user-blk export: the volume and the path its
// listening socket is bound to, and how many virtio_conn messages follow.
type VirtioExport struct {
	Volume string `json:"volume"`
	Socket string `json:"socket"`
	Conns  int    `json:"conns,omitempty"`
}

func (v *VirtioExport) check() error {
	switch {
	case v == nil:
		return errors.New("no virtio export")
	case v.Volume == "" || len(v.Volume) > maxString:
		return errors.New("virtio export volume empty or too long")
	case len(v.Socket) > maxString || !filepath.IsAbs(v.Socket) || filepath.Clean(v.Socket) != v.Socket:
		return fmt.Errorf("virtio socket %q is not a clean absolute path", v.Socket)
	case v.Conns < 0 || v.Conns > MaxVirtioConns:
		return fmt.Errorf("%d virtio connections (at most %d)", v.Conns, MaxVirtioConns)
	}
	return nil
}

// NBDConn is an NBD connection in the transmission phase as the old
// process served it: the export the client opened and what its
// handshake negotiated (nbd.ConnState). The new process serves it on
// without a handshake.
type NBDConn struct {
	Export     string `json:"export"`
	Size       int64  `json:"size"`
	ReadOnly   bool   `json:"read_only,omitempty"`
	Structured bool   `json:"structured,omitempty"`
	MetaAlloc  bool   `json:"meta_alloc,omitempty"`
	Flags      uint16 `json:"flags"`
	MaxPayload uint32 `json:"max_payload"`
	// Attach: the connection is the kernel's, of attached device
	// /dev/nbdAttachIndex (sluice attach), not a client of the NBD door.
	Attach      bool `json:"attach,omitempty"`
	AttachIndex int  `json:"attach_index,omitempty"`
}

// Listener names one listening socket: its fd name (api, nbd, nbd-tcp,
// shim, metrics), its network and the address it is bound to.
type Listener struct {
	Name    string `json:"name"`
	Network string `json:"network"`
	Addr    string `json:"addr"`
}

// Hello is this process's hello.
func Hello(sluiceVersion string, formatVersion int, listeners []Listener) Message {
	return Message{Type: TypeHello, StateVersion: StateVersion, SluiceVersion: sluiceVersion,
		FormatVersion: formatVersion, PID: os.Getpid(), Listeners: listeners}
}

// Compatible says whether a peer's hello allows a handover with ours:
// the same state version and the same on-disk format. Sluice versions
// may differ (an upgrade is the point).
func Compatible(mine, theirs Message) error {
	if theirs.StateVersion != mine.StateVersion {
		return fmt.Errorf("handover state version %d (sluice %s) against this process's %d (sluice %s): both must speak the same",
			theirs.StateVersion, theirs.SluiceVersion, mine.StateVersion, mine.SluiceVersion)
	}
	if theirs.FormatVersion != mine.FormatVersion {
		return fmt.Errorf("on-disk format %d (sluice %s) against this process's %d (sluice %s): a handover needs the same format; stop the gateway and start the new one instead",
			theirs.FormatVersion, theirs.SluiceVersion, mine.FormatVersion, mine.SluiceVersion)
	}
	return nil
}

// Parse decodes and checks one message.
func Parse(b []byte) (Message, error) {
	var m Message
	if len(b) > maxMessage {
		return m, fmt.Errorf("handover message of %d bytes (at most %d)", len(b), maxMessage)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("handover message: %w", err)
	}
	if dec.More() {
		return Message{}, errors.New("handover message: data after the JSON object")
	}
	// Empty lists are none (so a message encodes and parses to itself).
	if len(m.Listeners) == 0 {
		m.Listeners = nil
	}
	if len(m.Unmounted) == 0 {
		m.Unmounted = nil
	}
	m.Table.normalize()
	if m.VConn != nil {
		if len(m.VConn.Regions) == 0 {
			m.VConn.Regions = nil
		}
		if len(m.VConn.Rings) == 0 {
			m.VConn.Rings = nil
		}
	}
	if err := m.check(); err != nil {
		return Message{}, fmt.Errorf("handover %s message: %w", m.Type, err)
	}
	return m, nil
}

func (m *Message) check() error {
	if len(m.SluiceVersion) > maxString || len(m.Error) > maxString {
		return errors.New("a string is too long")
	}
	switch m.Type {
	case TypeHello:
		if m.StateVersion < 1 || m.PID < 1 {
			return errors.New("no state version or pid")
		}
	case TypeRefuse:
		if m.Error == "" {
			return errors.New("no reason")
		}
	case TypeGo:
	case TypeState:
		if m.StateVersion != StateVersion {
			return fmt.Errorf("state version %d, want %d", m.StateVersion, StateVersion)
		}
		if m.StoppedAccepting <= 0 {
			return errors.New("no stop time")
		}
		if len(m.Unmounted) > maxMounts {
			return errors.New("too many mounts")
		}
		for _, p := range m.Unmounted {
			if len(p) > maxString {
				return errors.New("a mount path is too long")
			}
		}
		if m.NBDConns < 0 || m.NBDConns > MaxNBDConns {
			return fmt.Errorf("%d NBD connections (at most %d)", m.NBDConns, MaxNBDConns)
		}
		if m.FUSEMounts < 0 || m.FUSEMounts > MaxFUSEMounts {
			return fmt.Errorf("%d FUSE mounts (at most %d)", m.FUSEMounts, MaxFUSEMounts)
		}
		if m.VirtioExports < 0 || m.VirtioExports > MaxVirtioExports {
			return fmt.Errorf("%d virtio exports (at most %d)", m.VirtioExports, MaxVirtioExports)
		}
	case TypeNBD:
		if err := m.NBD.check(); err != nil {
			return err
		}
	case TypeFUSE:
		if err := m.FUSE.check(); err != nil {
			return err
		}
	case TypeTable:
		if err := m.Table.check(); err != nil {
			return err
		}
	case TypeVirtio:
		if err := m.Virtio.check(); err != nil {
			return err
		}
	case TypeVConn:
		if err := m.VConn.check(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown type %q", m.Type)
	}
	if m.Type != TypeNBD && m.NBD != nil {
		return errors.New("an NBD connection outside an nbd_conn message")
	}
	if m.Type != TypeState && (m.NBDConns != 0 || m.FUSEMounts != 0 || m.VirtioExports != 0) {
		return errors.New("an NBD connection, FUSE mount or virtio export count outside a state message")
	}
	if m.Type != TypeVirtio && m.Virtio != nil || m.Type != TypeVConn && m.VConn != nil {
		return errors.New("a virtio export or connection outside its message")
	}
	if m.Type != TypeFUSE && m.FUSE != nil || m.Type != TypeTable && m.Table != nil {
		return errors.New("a FUSE mount or table outside its message")
	}
	return checkListeners(m.Listeners)
}

func (n *NBDConn) check() error {
	switch {
	case n == nil:
		return errors.New("no NBD connection")
	case n.Export == "" || len(n.Export) > maxString:
		return errors.New("NBD export name empty or too long")
	case n.Size < 0:
		return fmt.Errorf("NBD export size %d", n.Size)
	case n.MaxPayload == 0 || n.MaxPayload > maxPayload:
		return fmt.Errorf("NBD max payload %d", n.MaxPayload)
	case n.AttachIndex < 0 || n.AttachIndex > maxNBDIndex || (!n.Attach && n.AttachIndex != 0):
		return fmt.Errorf("NBD attach index %d", n.AttachIndex)
	}
	return nil
}

func checkListeners(ls []Listener) error {
	if len(ls) > MaxListeners {
		return fmt.Errorf("%d listeners (at most %d)", len(ls), MaxListeners)
	}
	seen := map[string]bool{}
	for _, l := range ls {
		if l.Name == "" || len(l.Name) > 64 || len(l.Addr) > maxString {
			return fmt.Errorf("listener name %q or address is empty or too long", l.Name)
		}
		if seen[l.Name] {
			return fmt.Errorf("two listeners named %q", l.Name)
		}
		seen[l.Name] = true
		switch l.Network {
		case "unix", "unixpacket", "tcp":
		default:
			return fmt.Errorf("listener %q: network %q", l.Name, l.Network)
		}
	}
	return nil
}

// Conn is one end of a handover connection.
type Conn struct{ c *net.UnixConn }

// Listen makes the handover socket in dir (mode 0600: only the gateway's
// user may take it over).
func Listen(dir string) (*net.UnixListener, error) {
	return listen.Unix("unixpacket", filepath.Join(dir, SocketName), 0o600)
}

// Accept waits for the next new process on l.
func Accept(l *net.UnixListener) (*Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return &Conn{c}, nil
}

// Dial connects to the gateway running on dir.
func Dial(dir string) (*Conn, error) {
	path := filepath.Join(dir, SocketName)
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return &Conn{c}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline bounds the next sends and receives.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// Send sends one message with files (their fds are duplicated into the
// peer; the caller still owns and closes them).
func (c *Conn) Send(m Message, files ...*os.File) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	return c.SendFDs(m, fds...)
}

// SendFDs is Send with plain fds (a /dev/fuse fd is not made an
// *os.File: its Fd would switch it to blocking mode).
func (c *Conn) SendFDs(m Message, fds ...int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxMessage {
		return fmt.Errorf("handover message of %d bytes (at most %d)", len(b), maxMessage)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("sending the handover %s message: %w", m.Type, err)
	}
	return nil
}

// Recv receives one message and the fds that came with it
// (close-on-exec; the caller owns them). A peer that closed the
// connection gives an error for which IsClosed is true.
func (c *Conn) Recv() (Message, []int, error) {
	buf := make([]byte, maxMessage+1)
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	n, oobn, flags, _, err := c.c.ReadMsgUnix(buf, oob)
	if errors.Is(err, io.EOF) {
		return Message{}, nil, errEOF
	}
	if err != nil {
		return Message{}, nil, err
	}
	fds, ferr := rights(oob[:oobn])
	fail := func(err error) (Message, []int, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return Message{}, nil, err
	}
	if ferr != nil {
		return fail(ferr)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return fail(errors.New("handover message truncated"))
	}
	if n == 0 {
		return fail(errEOF)
	}
	m, err := Parse(buf[:n])
	if err != nil {
		return fail(err)
	}
	return m, fds, nil
}

// errEOF: a zero-length read on a sequenced-packet socket is the peer's
// close.
var errEOF = fmt.Errorf("the other process closed the handover connection: %w", errClosed)

var errClosed = errors.New("closed")

// IsClosed reports whether err is the peer's close.
func IsClosed(err error) bool { return errors.Is(err, errClosed) }

// rights returns the fds of oob's SCM_RIGHTS, close-on-exec.
func rights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("handover control message: %w", err)
	}
	var all []int
	for _, msg := range msgs {
		fds, err := unix.ParseUnixRights(&msg)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			all = append(all, fd)
		}
	}
	return all, nil
}
