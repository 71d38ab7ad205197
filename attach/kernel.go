package attach

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/nbd"
)

// attachNBD connects a free /dev/nbdN to ref: one end of a socket pair
// goes to the kernel, the other is served by the attach NBD server.
func (a *Attacher) attachNBD(ctx context.Context, ref string) (*Attachment, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	kernelFD := fds[1]
	defer unix.Close(kernelFD) // the kernel holds its own reference once connected
	h, err := a.serve(ctx, ref, fds[0])
	if err != nil {
		return nil, err
	}
	// 512-byte sectors, as the loop method and the virtio door present:
	// the kernel makes the block size both the logical and the physical
	// sector size, and a filesystem made on one attachment must mount on
	// the other.
	const bs = 512
	idx, err := a.nl.connect(nbdConnect{size: h.Size, blockSize: bs, flags: h.Flags, fd: kernelFD, backend: a.backendID(ref),
		timeout: seconds(a.timeout), deadTimeout: seconds(a.deadTimeout)})
	if err != nil {
		h.Abort()
		// A connect that failed after the driver took the socket (the
		// reply was lost, say) leaves a device tagged with our id.
		id := a.backendID(ref)
		a.disconnectBackend(a.nl, func(b string, _ int) bool { return b == id })
		return nil, err
	}
	at := &Attachment{Volume: ref, Device: fmt.Sprintf("/dev/nbd%d", idx), Method: MethodNBD, index: idx, conn: h}
	// devtmpfs makes the node of a device the driver just created; wait
	// for it briefly.
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(at.Device); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	go a.watch(at, h)
	a.log.Info("attached", "volume", ref, "device", at.Device, "method", MethodNBD, "size", h.Size,
		"block_size", bs, "read_only", h.ReadOnly)
	return at, nil
}

// seconds rounds d up to whole seconds, the driver's unit.
func seconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// serve serves fd, the server end of a socket pair, as ref's export.
// On an error fd is closed.
func (a *Attacher) serve(ctx context.Context, ref string, fd int) (nbd.Handoff, error) {
	f := os.NewFile(uintptr(fd), "nbd-attach")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nbd.Handoff{}, fmt.Errorf("socketpair: %w", err)
	}
	h, err := a.srv.Handoff(ctx, ref, nc)
	if err != nil {
		nc.Close()
		return nbd.Handoff{}, err
	}
	return h, nil
}

// errNotDead: NBD_CMD_RECONFIGURE found no dead connection to replace
// (the driver then succeeds without taking the socket).
var errNotDead = errors.New("the device's connection is not dead (yet)")

// reconnect gives device index, whose connection died (its gateway was
// killed, or a request outlived the timeout and the driver shut the
// connection down), a new socket served as ref's export. Requests waiting
// for a connection (up to the dead-connection timeout) go to it, and so
// do the ones the dead connection carried, once their timeout requeues
// them.
func (a *Attacher) reconnect(ctx context.Context, ref string, index int) (nbd.Handoff, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nbd.Handoff{}, fmt.Errorf("socketpair: %w", err)
	}
	err = a.nl.reconfigure(index, fds[1], a.backendID(ref), seconds(a.timeout), seconds(a.deadTimeout))
	unix.Close(fds[1])
	if err == nil {
		// Taken, the kernel holds our end: closing ours hung nothing
		// up. Not taken (no dead connection), it was the last reference.
		pfd := []unix.PollFd{{Fd: int32(fds[0]), Events: unix.POLLRDHUP}}
		if n, perr := unix.Poll(pfd, 0); perr == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0 {
			err = errNotDead
		}
	}
	if err != nil {
		unix.Close(fds[0])
		return nbd.Handoff{}, err
	}
	return a.serve(ctx, ref, fds[0])
}

// reconnectWait bounds how long a reconnect waits for the driver to see
// a connection dead (it does when it reads the end of the old socket,
// right after the old server's end closed).
const reconnectWait = 5 * time.Second

// reconnectSoon retries reconnect while the driver has not seen the old
// connection die.
func (a *Attacher) reconnectSoon(ctx context.Context, ref string, index int) (nbd.Handoff, error) {
	deadline := time.Now().Add(reconnectWait)
	for pause := time.Millisecond; ; pause = min(2*pause, 100*time.Millisecond) {
		h, err := a.reconnect(ctx, ref, index)
		if !errors.Is(err, errNotDead) || time.Now().After(deadline) {
			return h, err
		}
		time.Sleep(pause)
	}
}

// watch waits for the attachment's connection h to end. An end the
// attacher did not ask for (a detach, the shutdown) is the driver's: a
// request outlived the timeout and it shut the connection down, waiting
// for a new one. It gets one.
func (a *Attacher) watch(at *Attachment, h nbd.Handoff) {
	<-h.Done
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.byVol[at.Volume] != at || at.conn.Done != h.Done {
		return
	}
	nh, err := a.reconnectSoon(context.Background(), at.Volume, at.index)
	if err != nil {
		a.log.Error("the kernel ended an attached device's connection and it could not be given a new one: its IO fails",
			"volume", at.Volume, "device", at.Device, "err", err)
		return
	}
	at.conn = nh
	a.log.Warn("the kernel ended an attached device's connection (a request outlived the timeout); reconnected",
		"volume", at.Volume, "device", at.Device, "timeout", a.timeout)
	go a.watch(at, nh)
}

// disconnectWait bounds how long a disconnected device's connection may
// take to end before it is closed from this side.
const disconnectWait = 10 * time.Second

// disconnect ends the kernel's connection (it sends NBD_CMD_DISC and shuts
// the socket) and waits for the server side to finish. If the driver
// refuses, the device stays connected and served: the caller decides
// whether to abort the connection (shutdown) or keep the attachment.
func (a *Attacher) disconnect(at *Attachment) error {
	if err := a.nl.disconnect(at.index); err != nil {
		return fmt.Errorf("disconnect %s: %w", at.Device, err)
	}
	select {
	case <-at.conn.Done:
	case <-time.After(disconnectWait):
		a.log.Warn("nbd connection did not end after the disconnect; closing it", "device", at.Device)
		at.conn.Abort()
		<-at.conn.Done
	}
	return nil
}

// backendID is what an attached device's /sys/block/nbdN/backend shows:
// the data directory's identifier and the volume.
func (a *Attacher) backendID(ref string) string {
	return "sluice:" + a.id + ":" + ref
}

// adoptStaleNBD takes over the nbd devices a previous gateway on this
// data directory left connected (it was killed, or stopped while a
// filesystem was mounted on the device): under the nbd method each gets
// a new connection (NBD_CMD_RECONFIGURE), so requests waiting for the
// dead gateway (up to the dead-connection timeout) are served by this
// one; a device whose volume is gone, and every one under the loop
// method, is disconnected. It needs the backend file (Linux 5.16+); on
// older kernels such devices stay until `nbd-client -d`. Under the loop
// method it opens a netlink socket for the purpose only if some nbd
// device has a backend file.
func (a *Attacher) adoptStaleNBD() {
	files, _ := filepath.Glob("/sys/block/nbd*/backend")
	if len(files) == 0 {
		return
	}
	nl := a.nl
	if nl == nil {
		var err error
		if nl, err = dialNBD(); err != nil {
			return
		}
		defer nl.Close()
	}
	prefix := "sluice:" + a.id + ":"
	a.disconnectBackend(nl, func(b string, index int) bool {
		if !strings.HasPrefix(b, prefix) {
			return false
		}
		ref := strings.TrimPrefix(b, prefix)
		if at := a.byVol[ref]; at != nil && at.Method == MethodNBD && at.index == index {
			return false // handed over by the previous process: served already
		}
		return a.method != MethodNBD || !a.adopt(ref, index)
	})
}

// adopt reconnects device index, left by a previous gateway, to block
// volume ref, and records the attachment; false if it cannot.
func (a *Attacher) adopt(ref string, index int) bool {
	vol, err := a.g.Volume(ref)
	if err != nil || vol.Kind() != gateway.KindBlock || a.byVol[ref] != nil {
		return false
	}
	h, err := a.reconnectSoon(context.Background(), ref, index)
	if err != nil {
		a.log.Warn("could not reconnect an nbd device a previous gateway left", "volume", ref, "device", fmt.Sprintf("/dev/nbd%d", index), "err", err)
		return false
	}
	at := &Attachment{Volume: ref, Device: fmt.Sprintf("/dev/nbd%d", index), Method: MethodNBD, index: index, conn: h}
	a.byVol[ref] = at
	go a.watch(at, h)
	a.log.Info("reconnected an nbd device a previous gateway left", "volume", ref, "device", at.Device)
	return true
}

// disconnectBackend disconnects every nbd device whose backend identifier
// matches.
func (a *Attacher) disconnectBackend(nl *genl, match func(backend string, index int) bool) {
	files, _ := filepath.Glob("/sys/block/nbd*/backend")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		name := filepath.Base(filepath.Dir(f))
		idx, err := strconv.Atoi(strings.TrimPrefix(name, "nbd"))
		if err != nil || !match(strings.TrimSpace(string(b)), idx) {
			continue
		}
		if err := nl.disconnect(idx); err != nil {
			a.log.Warn("could not disconnect stale nbd device", "device", "/dev/"+name, "err", err)
		} else {
			a.log.Info("disconnected stale nbd device", "device", "/dev/"+name, "backend", strings.TrimSpace(string(b)))
		}
	}
}

// Handed is an attached device's connection in a planned handover
// (`sluice gateway --takeover`): its socket (the server's end, stopped at
// a request boundary with every request it read answered), the device and
// what its server had negotiated. The kernel's requests sent meanwhile
// wait in the socket for the next process.
type Handed struct {
	Volume string
	Index  int // N of /dev/nbdN
	File   *os.File
	State  nbd.ConnState
}

// HandOver ends this attacher for a planned handover: its nbd devices'
// connections stop at a request boundary and are returned, the devices
// stay connected, and the caller passes them to the next process
// (Options.Handed). Loop devices stay bound and are forgotten here: their
// image mounts go to the next process with the other FUSE mounts
// (fuse.Manager.DetachAll), and its New takes the devices back. No attach
// or detach is served after it.
func (a *Attacher) HandOver(ctx context.Context) ([]Handed, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	for ref, at := range a.byVol {
		if at.Method == MethodLoop {
			a.log.Info("handover: the loop device stays bound; its image mount is handed over", "volume", ref, "device", at.Device)
			delete(a.byVol, ref)
		}
	}
	if a.method != MethodNBD {
		return nil, nil
	}
	conns, err := a.srv.ShutdownHandover(ctx)
	var out []Handed
	for _, c := range conns {
		at := a.byVol[c.State.Export]
		if at == nil || at.Method != MethodNBD {
			c.File.Close()
			continue
		}
		out = append(out, Handed{Volume: at.Volume, Index: at.index, File: c.File, State: c.State})
		delete(a.byVol, at.Volume)
	}
	// A device whose connection could not be handed over (it broke, or
	// the drain timed out) stays in byVol: Close releases or abandons it,
	// and a device left connected is reconnected by the next process.
	return out, err
}

// adoptHanded serves connections a previous process handed over
// (Options.Handed), each as the attachment of its device.
func (a *Attacher) adoptHanded(handed []Handed) {
	for _, h := range handed {
		at, err := a.adoptOne(h)
		if err != nil {
			a.log.Warn("takeover: an attached device's connection could not be served; its device waits for a reconnect",
				"volume", h.Volume, "device", fmt.Sprintf("/dev/nbd%d", h.Index), "err", err)
			continue
		}
		a.byVol[at.Volume] = at
		go a.watch(at, at.conn)
	}
}

func (a *Attacher) adoptOne(h Handed) (*Attachment, error) {
	defer h.File.Close()
	if a.method != MethodNBD {
		return nil, fmt.Errorf("this gateway attaches with %s devices", a.method)
	}
	if h.State.Export != h.Volume || a.byVol[h.Volume] != nil {
		return nil, fmt.Errorf("volume %s handed over twice: %w", h.Volume, gateway.ErrInvalid)
	}
	nc, err := net.FileConn(h.File)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	conn, err := a.srv.ResumeHandoff(nc, h.State)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &Attachment{Volume: h.Volume, Device: fmt.Sprintf("/dev/nbd%d", h.Index), Method: MethodNBD, index: h.Index, conn: conn}, nil
}
