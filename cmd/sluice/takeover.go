package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/attach"
	"github.com/sluice-storage/sluice/gateway/store"
	"github.com/sluice-storage/sluice/internal/handover"
	"github.com/sluice-storage/sluice/nbd"
	"github.com/sluice-storage/sluice/virtio"
)

// Bounds on the two phases of a takeover, seen from the new process: the
// hellos (the old process answers at once), then the old one's drain and
// store close (daemon.stop gives its drains 30 s).
const (
	helloTimeout = 30 * time.Second
	drainTimeout = 2 * time.Minute
)

// sluiceVersion is this binary's version as the Go toolchain recorded
// it: the module version and, when built from a git checkout, the
// commit. It is told to the other process of a handover (and logged);
// it is not what decides whether a handover may happen.
func sluiceVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision" && len(s.Value) >= 12:
			v += "+" + s.Value[:12]
		case s.Key == "vcs.modified" && s.Value == "true":
			v += "-dirty"
		}
	}
	return v
}

// takenOver is what the new process received from the old one.
type takenOver struct {
	conn   *handover.Conn
	state  handover.Message
	nbd    []handedNBD     // resumed once the NBD door serves (resumeNBD)
	attach []attach.Handed // attached devices' connections, served by attach.New
	fuse   []handedFUSE    // adopted once the mount manager exists (adoptFUSE)
	// virtio exports' listening sockets, adopted once the virtio
	// registry exists (adoptVirtio)
	virtio []handedVirtio
}

// handedVirtio is one virtio export the old process handed over, with
// its connections.
type handedVirtio struct {
	file  *os.File
	state handover.VirtioExport
	conns []virtio.HandedConn
}

// handedNBD is one NBD connection the old process handed over.
type handedNBD struct {
	file  *os.File
	state handover.NBDConn
}

// takeOver is the new process's side of a handover (`--takeover`): it
// checks with the gateway running on the data directory that the two
// may hand over (versions, and that this process's flags describe the
// same sockets), says go, and receives the listening sockets, which it
// puts where preflight takes inherited sockets from. Every refusal
// happens before "go": the running gateway then serves on, untouched.
func takeOver(a *gatewayArgs, svc *service, log *slog.Logger) (*takenOver, error) {
	if len(svc.inherited) > 0 {
		return nil, usageErr("--takeover takes the sockets of the running gateway: it cannot also take sockets from the service manager (LISTEN_FDS)")
	}
	path := filepath.Join(a.DataDir, handover.SocketName)
	c, err := handover.Dial(a.DataDir)
	if err != nil {
		return nil, fmt.Errorf("--takeover: no running gateway answers on %s (%w): start it without --takeover", path, err)
	}
	t := &takenOver{conn: c}
	fail := func(err error) (*takenOver, error) {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Now().Add(helloTimeout))
	mine := handover.Hello(sluiceVersion(), store.FormatVersion, nil)
	if err := c.Send(mine); err != nil {
		return fail(fmt.Errorf("--takeover: %w", err))
	}
	theirs, fds, err := c.Recv()
	closeFDs(fds) // a hello carries none
	if err != nil {
		return fail(fmt.Errorf("--takeover: the running gateway's answer: %w", err))
	}
	if theirs.Type == handover.TypeRefuse {
		return fail(fmt.Errorf("--takeover: the running gateway refused: %s", theirs.Error))
	}
	if theirs.Type != handover.TypeHello {
		return fail(fmt.Errorf("--takeover: the running gateway answered %q, not hello", theirs.Type))
	}
	refuse := func(err error) (*takenOver, error) {
		c.Send(handover.Message{Type: handover.TypeRefuse, Error: err.Error()})
		return fail(fmt.Errorf("--takeover refused, the running gateway (pid %d) serves on: %w", theirs.PID, err))
	}
	if err := handover.Compatible(mine, theirs); err != nil {
		return refuse(fmt.Errorf("the running gateway speaks %w", err))
	}
	if err := sameListeners(a, theirs.Listeners); err != nil {
		return refuse(err)
	}
	log.Info("taking over", "pid", theirs.PID, "sluice_version", theirs.SluiceVersion, "state_version", theirs.StateVersion)
	if err := c.Send(handover.Message{Type: handover.TypeGo}); err != nil {
		return fail(fmt.Errorf("--takeover: %w", err))
	}
	// From here the old process stops: a failure is an outage.
	c.SetDeadline(time.Now().Add(drainTimeout))
	st, fds, err := c.Recv()
	if err != nil {
		return fail(fmt.Errorf("--takeover: receiving the running gateway's sockets: %w", err))
	}
	if st.Type != handover.TypeState || len(fds) != len(st.Listeners) {
		closeFDs(fds)
		return fail(fmt.Errorf("--takeover: expected the state with %d sockets, got %q with %d", len(st.Listeners), st.Type, len(fds)))
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), st.Listeners[i].Name)
	}
	var fuseFDs []*os.File
	if svc.inherited, fuseFDs, err = matchInherited(a, files); err != nil {
		return fail(fmt.Errorf("--takeover: %w", err))
	}
	for _, f := range fuseFDs { // a handover names its listeners only
		f.Close()
	}
	svc.handedOver = true
	t.state = st
	for i := 0; i < st.NBDConns; i++ {
		m, fds, err := c.Recv()
		if err != nil || m.Type != handover.TypeNBD || len(fds) != 1 {
			closeFDs(fds)
			t.closeNBD()
			return fail(fmt.Errorf("--takeover: expected NBD connection %d of %d with its socket, got %q with %d fds: %v",
				i+1, st.NBDConns, m.Type, len(fds), err))
		}
		f := os.NewFile(uintptr(fds[0]), "nbd-conn")
		if st := m.NBD; st.Attach {
			t.attach = append(t.attach, attach.Handed{Volume: st.Export, Index: st.AttachIndex, File: f, State: nbdState(st)})
			continue
		}
		t.nbd = append(t.nbd, handedNBD{f, *m.NBD})
	}
	for i := 0; i < st.FUSEMounts; i++ {
		h, err := recvFUSE(c)
		if err != nil {
			t.closeNBD()
			t.closeFUSE()
			return fail(fmt.Errorf("--takeover: FUSE mount %d of %d: %w", i+1, st.FUSEMounts, err))
		}
		t.fuse = append(t.fuse, h)
	}
	for i := 0; i < st.VirtioExports; i++ {
		h, err := recvVirtio(c)
		if err != nil {
			t.closeNBD()
			t.closeFUSE()
			t.closeVirtio()
			return fail(fmt.Errorf("--takeover: virtio export %d of %d: %w", i+1, st.VirtioExports, err))
		}
		t.virtio = append(t.virtio, h)
	}
	return t, nil
}

// recvVirtio receives one virtio export and its connections.
func recvVirtio(c *handover.Conn) (handedVirtio, error) {
	m, fds, err := c.Recv()
	if err != nil || m.Type != handover.TypeVirtio || len(fds) != 1 {
		closeFDs(fds)
		return handedVirtio{}, fmt.Errorf("expected the export with its socket, got %q with %d fds: %v", m.Type, len(fds), err)
	}
	h := handedVirtio{file: os.NewFile(uintptr(fds[0]), "virtio-listener"), state: *m.Virtio}
	for j := 0; j < m.Virtio.Conns; j++ {
		cm, fds, err := c.Recv()
		if err != nil || cm.Type != handover.TypeVConn || len(fds) != cm.VConn.FDs() {
			closeFDs(fds)
			h.close()
			want := -1
			if cm.VConn != nil {
				want = cm.VConn.FDs()
			}
			return handedVirtio{}, fmt.Errorf("connection %d of %d: got %q with %d fds (want %d): %v", j+1, m.Virtio.Conns, cm.Type, len(fds), want, err)
		}
		h.conns = append(h.conns, virtio.HandedConn{State: *cm.VConn, FDs: fds})
	}
	return h, nil
}

func (h handedVirtio) close() {
	h.file.Close()
	for _, c := range h.conns {
		c.Close()
	}
}

// closeVirtio closes the handed-over virtio sockets not adopted. Their
// paths stay (a front-end reconnecting finds no listener: ECONNREFUSED,
// and retries).
func (t *takenOver) closeVirtio() {
	for _, h := range t.virtio {
		h.close()
	}
	t.virtio = nil
}

// adoptVirtio serves the handed-over virtio exports on their sockets and
// their connections; it returns how many exports and connections. An
// export whose volume is gone or no longer a block volume is closed and
// logged (its connections too: their front-ends reconnect and are
// refused until it is exported again).
func (t *takenOver) adoptVirtio(d *daemon) (exports, conns int) {
	for _, h := range t.virtio {
		n, err := d.virtio.Adopt(h.state.Volume, h.state.Socket, h.file, h.conns)
		if err != nil {
			d.log.Warn("takeover: a virtio export could not be adopted; its socket is closed", "volume", h.state.Volume, "socket", h.state.Socket, "err", err)
			continue
		}
		exports++
		conns += n
	}
	t.virtio = nil
	return exports, conns
}

// closeNBD closes the handed-over NBD connections not resumed: their
// clients see the connection close.
func (t *takenOver) closeNBD() {
	for _, h := range t.nbd {
		h.file.Close()
	}
	t.nbd = nil
	for _, h := range t.attach {
		h.File.Close() // the device waits, and is reconnected at start-up
	}
	t.attach = nil
}

// nbdState is the nbd package's form of a handed-over connection's state.
func nbdState(st *handover.NBDConn) nbd.ConnState {
	return nbd.ConnState{Export: st.Export, Size: st.Size, ReadOnly: st.ReadOnly,
		Structured: st.Structured, MetaAlloc: st.MetaAlloc, Flags: st.Flags, MaxPayload: st.MaxPayload}
}

// nbdConnMessage is the nbd_conn message of a handed-over connection.
func nbdConnMessage(st nbd.ConnState) *handover.NBDConn {
	return &handover.NBDConn{Export: st.Export, Size: st.Size, ReadOnly: st.ReadOnly, Structured: st.Structured,
		MetaAlloc: st.MetaAlloc, Flags: st.Flags, MaxPayload: st.MaxPayload}
}

// resumeNBD serves the handed-over NBD connections with the NBD door, in
// the transmission phase; it returns how many were resumed. One that
// cannot be (the export is gone or changed) is closed and logged.
func (t *takenOver) resumeNBD(d *daemon) int {
	n := 0
	for _, h := range t.nbd {
		nc, err := net.FileConn(h.file)
		h.file.Close()
		if err == nil {
			err = d.nbdDoor.Resume(nc, nbdState(&h.state))
			if err != nil {
				nc.Close()
			}
		}
		if err != nil {
			d.log.Warn("takeover: an NBD connection could not be resumed; closed", "export", h.state.Export, "err", err)
			continue
		}
		n++
	}
	t.nbd = nil
	return n
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// sameListeners checks that this process's flags describe the sockets
// the running gateway serves: the same names, kinds and addresses (as
// for sockets from systemd: docs/SYSTEMD.md). A socket this process's
// flags add is made by it; one they drop is refused.
func sameListeners(a *gatewayArgs, ls []handover.Listener) error {
	for _, l := range ls {
		network, flag, want := inheritedTarget(a, l.Name)
		if network == "" {
			return fmt.Errorf("the running gateway serves a socket named %q, which this sluice does not know", l.Name)
		}
		if want == "" {
			return fmt.Errorf("the running gateway serves its %s socket on %s, but %s disables it: start the new process with the running gateway's flags", l.Name, l.Addr, flag)
		}
		if network != l.Network {
			return fmt.Errorf("the running gateway's %s socket is %s, want %s", l.Name, l.Network, network)
		}
		var addr net.Addr = &net.UnixAddr{Name: l.Addr, Net: l.Network}
		if network == "tcp" {
			ta, err := net.ResolveTCPAddr("tcp", l.Addr)
			if err != nil {
				return fmt.Errorf("the running gateway's %s socket: %w", l.Name, err)
			}
			addr = ta
		}
		if err := sameAddress(addr, want); err != nil {
			return fmt.Errorf("the running gateway's %s socket %w, but %s is %s: start the new process with the running gateway's flags", l.Name, err, flag, want)
		}
	}
	return nil
}

// listenerList names the daemon's listening sockets, sorted by name.
func listenerList(byName map[string]net.Listener) ([]handover.Listener, []string) {
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	ls := make([]handover.Listener, len(names))
	for i, name := range names {
		addr := byName[name].Addr()
		ls[i] = handover.Listener{Name: name, Network: addr.Network(), Addr: boundPath(addr)}
	}
	return ls, names
}

// boundPath is where a socket is: for a unix socket bound to the
// temporary name internal/listen.Unix renames (PATH.PID.tmp), PATH.
func boundPath(addr net.Addr) string {
	name := addr.String()
	if _, ok := addr.(*net.UnixAddr); !ok {
		return name
	}
	if i := strings.LastIndex(strings.TrimSuffix(name, ".tmp"), "."); i > 0 && isTempName(name, name[:i]) {
		return name[:i]
	}
	return name
}

// offerHandover makes DATA-DIR/handover.sock and answers new processes
// on it, one at a time, until one says go: that connection is sent on
// the channel, and the listener is left for the caller to close. A
// process whose versions or flags do not fit is refused and the gateway
// serves on.
func (d *daemon) offerHandover(ctx context.Context) (*net.UnixListener, <-chan newProcess, error) {
	l, err := handover.Listen(d.args.DataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("handover socket: %w", err)
	}
	ready := make(chan newProcess, 1)
	go func() {
		for {
			c, err := handover.Accept(l)
			if err != nil {
				if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
					d.log.Error("handover socket: accept failed; no takeover possible", "err", err)
				}
				return
			}
			if pid, ok := d.answerHello(c); ok {
				ready <- newProcess{c, pid}
				return
			}
			c.Close()
		}
	}()
	return l, ready, nil
}

// newProcess is a process that said go: its connection and pid.
type newProcess struct {
	conn *handover.Conn
	pid  int
}

// answerHello runs the old process's side of the hellos; ok when the
// new process (pid) said go.
func (d *daemon) answerHello(c *handover.Conn) (pid int, ok bool) {
	c.SetDeadline(time.Now().Add(helloTimeout))
	theirs, fds, err := c.Recv()
	closeFDs(fds)
	if err != nil {
		d.log.Warn("handover: a bad hello", "err", err)
		return 0, false
	}
	ls, _ := listenerList(d.pre.byName)
	mine := handover.Hello(sluiceVersion(), store.FormatVersion, ls)
	if theirs.Type != handover.TypeHello {
		c.Send(handover.Message{Type: handover.TypeRefuse, Error: fmt.Sprintf("expected hello, got %q", theirs.Type)})
		return 0, false
	}
	if err := handover.Compatible(mine, theirs); err != nil {
		d.log.Warn("takeover refused", "pid", theirs.PID, "err", err)
		c.Send(handover.Message{Type: handover.TypeRefuse, Error: "the new process speaks " + err.Error()})
		return 0, false
	}
	if err := c.Send(mine); err != nil {
		d.log.Warn("handover", "err", err)
		return 0, false
	}
	next, fds, err := c.Recv()
	closeFDs(fds)
	switch {
	case err != nil:
		d.log.Warn("handover: the new process went away", "err", err)
		return 0, false
	case next.Type == handover.TypeRefuse:
		d.log.Warn("the new process refused the takeover", "pid", theirs.PID, "reason", next.Error)
		return 0, false
	case next.Type != handover.TypeGo:
		d.log.Warn("handover: unexpected message", "type", next.Type)
		return 0, false
	}
	d.log.Info("handing over", "to_pid", theirs.PID, "sluice_version", theirs.SluiceVersion)
	return theirs.PID, true
}

// handOver is the old process's side after go: it keeps a duplicate of
// each listening socket (so the sockets outlive stop, and clients that
// connect meanwhile wait in their queues), stops as on SIGTERM but
// leaves the socket paths in place (daemon.stop: drains, unmounts FUSE
// mounts, closes the store, releases the data directory's lock), then
// sends the sockets and the state. stopServing ends the doors' context. The new process can open the store
// only once this one has closed it, so the pause is this stop plus the
// new process's start.
func (d *daemon) handOver(np newProcess, hl *net.UnixListener, stopServing func()) error {
	c := np.conn
	defer c.Close()
	hl.Close()
	os.Remove(filepath.Join(d.args.DataDir, handover.SocketName))
	ls, names := listenerList(d.pre.byName)
	files := make([]*os.File, 0, len(names))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, name := range names {
		f, err := d.pre.byName[name].(interface{ File() (*os.File, error) }).File()
		if err != nil {
			return fmt.Errorf("handover: socket %s: %w", name, err)
		}
		files = append(files, f)
	}
	stopped := time.Now()
	// The NBD door first: its connections that can be handed over stop
	// at a request boundary, answer what they read and are kept (the
	// door's Serve would close them when the doors' context ends).
	nctx, ncancel := context.WithTimeout(context.Background(), 30*time.Second)
	handed, err := d.nbdDoor.ShutdownHandover(nctx)
	ncancel()
	if err != nil {
		d.log.Warn("NBD drain incomplete", "err", err)
	}
	defer func() {
		for _, h := range handed {
			h.File.Close()
		}
	}()
	// Only now may the doors' contexts end: the NBD door closes its
	// listeners when its context does.
	stopServing()
	// The attached nbd devices' connections: stopped at a request
	// boundary like the door's, the devices left connected.
	actx, acancel := context.WithTimeout(context.Background(), 30*time.Second)
	attached, err := d.attacher.HandOver(actx)
	acancel()
	if err != nil {
		d.log.Warn("attached devices' drain incomplete", "err", err)
	}
	defer func() {
		for _, h := range attached {
			h.File.Close()
		}
	}()
	before := d.mounts.Mounts()
	d.handingOver = true
	d.stop() // detaches the FUSE mounts (d.detached) after the shim door has closed
	defer func() {
		for _, dt := range d.detached {
			unix.Close(dt.FD)
		}
	}()
	unmounted := unmountedOf(before, d.detached)
	if len(unmounted) > 0 {
		d.log.Warn("handover: FUSE mounts ended, not handed over", "mounts", unmounted)
	}
	defer func() {
		for _, h := range d.handedVirtio {
			h.File.Close()
			for _, c := range h.Conns {
				c.Close()
			}
		}
	}()
	d.log.Info("handover: stopped; sending the sockets", "stop_ms", time.Since(stopped).Milliseconds(),
		"nbd_conns", len(handed), "attached_devices", len(attached), "fuse_mounts", len(d.detached), "virtio_exports", len(d.handedVirtio))
	// The new process becomes the unit's main process before this one
	// exits (NotifyAccess=main then accepts its READY=1).
	if err := d.svc.notify.MainPID(np.pid); err != nil {
		d.log.Warn("telling the service manager the new main pid", "err", err)
	}
	c.SetDeadline(time.Now().Add(helloTimeout))
	if err := c.Send(handover.Message{Type: handover.TypeState, StateVersion: handover.StateVersion,
		Listeners: ls, StoppedAccepting: stopped.UnixNano(), Unmounted: unmounted, NBDConns: len(handed) + len(attached),
		FUSEMounts: len(d.detached), VirtioExports: len(d.handedVirtio)}, files...); err != nil {
		return err
	}
	for _, h := range handed {
		if err := c.Send(handover.Message{Type: handover.TypeNBD, NBD: nbdConnMessage(h.State)}, h.File); err != nil {
			return err
		}
	}
	for _, h := range attached {
		m := nbdConnMessage(h.State)
		m.Attach, m.AttachIndex = true, h.Index
		if err := c.Send(handover.Message{Type: handover.TypeNBD, NBD: m}, h.File); err != nil {
			return err
		}
	}
	for _, dt := range d.detached {
		if err := sendFUSE(c, dt); err != nil {
			return err
		}
	}
	for _, h := range d.handedVirtio {
		m := handover.Message{Type: handover.TypeVirtio, Virtio: &handover.VirtioExport{Volume: h.Volume, Socket: h.Socket, Conns: len(h.Conns)}}
		if err := c.Send(m, h.File); err != nil {
			return err
		}
		for _, vc := range h.Conns {
			st := vc.State
			if err := c.SendFDs(handover.Message{Type: handover.TypeVConn, VConn: &st}, vc.FDs...); err != nil {
				return err
			}
		}
	}
	return nil
}

// handedAttachments gives the attached devices' connections to attach.New
// (which owns them from then on); none without a takeover.
func (t *takenOver) handedAttachments() []attach.Handed {
	if t == nil {
		return nil
	}
	h := t.attach
	t.attach = nil
	return h
}
