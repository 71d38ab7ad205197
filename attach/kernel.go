package attach

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
	f := os.NewFile(uintptr(fds[0]), "nbd-attach")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	h, err := a.srv.Handoff(ctx, ref, nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	// 512-byte sectors, as the loop method and the virtio door present:
	// the kernel makes the block size both the logical and the physical
	// sector size, and a filesystem made on one attachment must mount on
	// the other.
	const bs = 512
	idx, err := a.nl.connect(nbdConnect{size: h.Size, blockSize: bs, flags: h.Flags, fd: kernelFD, backend: a.backendID(ref)})
	if err != nil {
		h.Abort()
		// A connect that failed after the driver took the socket (the
		// reply was lost, say) leaves a device tagged with our id.
		id := a.backendID(ref)
		a.disconnectBackend(a.nl, func(b string) bool { return b == id })
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
	a.log.Info("attached", "volume", ref, "device", at.Device, "method", MethodNBD, "size", h.Size,
		"block_size", bs, "read_only", h.ReadOnly)
	return at, nil
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

// cleanStaleNBD disconnects nbd devices a previous gateway on this data
// directory left connected (their server end died with it: every request
// fails until a disconnect), whatever the method of this gateway. It needs
// the backend file (Linux 5.16+); on older kernels such devices stay until
// `nbd-client -d`. Under the loop method it opens a netlink socket for
// the purpose only if some nbd device has a backend file.
func (a *Attacher) cleanStaleNBD() {
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
	a.disconnectBackend(nl, func(b string) bool { return strings.HasPrefix(b, prefix) })
}

// disconnectBackend disconnects every nbd device whose backend identifier
// matches.
func (a *Attacher) disconnectBackend(nl *genl, match func(backend string) bool) {
	files, _ := filepath.Glob("/sys/block/nbd*/backend")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !match(strings.TrimSpace(string(b))) {
			continue
		}
		name := filepath.Base(filepath.Dir(f))
		idx, err := strconv.Atoi(strings.TrimPrefix(name, "nbd"))
		if err != nil {
			continue
		}
		if err := nl.disconnect(idx); err != nil {
			a.log.Warn("could not disconnect stale nbd device", "device", "/dev/"+name, "err", err)
		} else {
			a.log.Info("disconnected stale nbd device", "device", "/dev/"+name, "backend", strings.TrimSpace(string(b)))
		}
	}
}
