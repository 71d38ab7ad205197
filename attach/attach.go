// Package attach makes block volumes block devices of the host.
//
// Two methods, chosen once per gateway (Options.Method):
//
//   - nbd: where the kernel has the nbd driver (/dev/nbd* exists), the
//     gateway hands the driver one end of a socket pair over generic
//     netlink (NBD_CMD_CONNECT, as nbd-client does since Linux 4.12), with
//     the volume's size and the transmission flags of the NBD door (FLUSH,
//     FUA, TRIM, WRITE_ZEROES; READ_ONLY for a read-only volume), and serves
//     the other end with the NBD door's transmission phase (nbd.Handoff).
//     The device is tagged with a backend identifier
//     (/sys/block/nbdN/backend, Linux 5.16+) naming this gateway's data
//     directory, so a later gateway finds what a dead one left.
//   - loop: everywhere else (this project's machines have no nbd module),
//     the gateway mounts the volume with its FUSE door as one image file
//     (served with direct IO) in a private directory, and a loop device is
//     bound to that file with direct IO on (losetup --direct-io=on), so no
//     page cache sits between the loop device and the gateway — libnbd's
//     nbdfuse warns that loop over a cached FUSE file can deadlock under
//     memory pressure.
//
// Detach refuses a device that is in use (mounted, or opened exclusively),
// flushes it (fsync: the kernel sends FLUSH), then disconnects it (nbd) or
// unbinds the loop device and unmounts the image (loop). At shutdown every
// device not in use is flushed and released; one still in use gets a
// sync(2) first.
//
// nbd devices survive the gateway: connected with a request timeout
// (Options.NBDTimeout) and a dead-connection timeout
// (Options.NBDReconnectTimeout), a device whose gateway died (SIGKILL, a
// crash, or a stop while it was in use) keeps its IO waiting, and the
// next gateway on the same data directory gives it a new connection at
// start-up (NBD_CMD_RECONFIGURE, found by the backend identifier);
// requests the dead connection carried are sent again by the kernel when
// their timeout expires. A connection the kernel itself ends (a request
// outlived the timeout) is replaced at once.
//
// Loop devices survive what their image mount survives: a planned
// takeover hands the image mount to the new process with the other FUSE
// mounts (HandOver leaves the devices bound), and with --fuse-resume a
// gateway killed and started again resumes it from the fd holder; the
// loop device, whose open file is one of the mount's handles, keeps
// working, and New takes it back as an attachment (found by its backing
// file under Options.Dir). Loop devices whose image mount ended with the
// previous gateway are released at start-up.
//
// A volume resized while attached by loop takes its new size on the device
// at once (Resize: LOOP_SET_CAPACITY); a resize of a volume attached by
// nbd is refused, since the kernel's nbd driver cannot change the size of
// a connected device.
package attach

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/nbd"
)

// Methods.
const (
	MethodAuto = "auto" // nbd if the kernel has it, loop otherwise
	MethodNBD  = "nbd"
	MethodLoop = "loop"
)

// Options configure an Attacher.
type Options struct {
	// Dir holds the attacher's private state: image mount points (loop)
	// and the identifier its nbd devices carry.
	Dir string
	// Method is MethodAuto (""), MethodNBD or MethodLoop.
	Method string
	// NBD serves the kernel's connections (required for the nbd method).
	// It should be a server of its own, not the NBD door's: the door's
	// --nbd-read-only does not apply to attachments, and at shutdown the
	// attachments are flushed through it after the door has stopped.
	NBD *nbd.Server
	// NBDTimeout (nbd method): a request the gateway has not answered
	// after this long makes the kernel drop the connection and send the
	// request again on a new one, which the gateway gives it at once (or,
	// after a crash, the next gateway at its start). 0: DefaultNBDTimeout.
	NBDTimeout time.Duration
	// NBDReconnectTimeout (nbd method): how long the kernel keeps a
	// device's requests waiting for a new connection after the gateway
	// died, before they fail. 0: DefaultNBDReconnectTimeout.
	NBDReconnectTimeout time.Duration
	// Handed are the attached devices' connections a previous process
	// handed over (HandOver): New serves them, and owns their files.
	Handed []Handed
	Logger *slog.Logger
}

// Defaults of Options' nbd timeouts.
const (
	DefaultNBDTimeout          = 30 * time.Second
	DefaultNBDReconnectTimeout = 120 * time.Second
)

// Attachment is one attached volume.
type Attachment struct {
	Volume string `json:"volume"`
	Device string `json:"device"`
	Method string `json:"method"`          // "nbd" or "loop"
	Image  string `json:"image,omitempty"` // loop: the FUSE image file

	dir   string      // loop: the image's mount point
	index int         // nbd: N of /dev/nbdN
	conn  nbd.Handoff // nbd: the connection the kernel was given
}

// Attacher attaches volumes of one gateway.
type Attacher struct {
	g      *gateway.Gateway
	mg     *fuse.Manager
	dir    string
	method string
	srv    *nbd.Server
	nl     *genl // nbd method: the netlink socket

	timeout, deadTimeout time.Duration // nbd method: Options.NBDTimeout, NBDReconnectTimeout

	id  string // this data directory's identifier, in nbd backend ids
	log *slog.Logger

	mu     sync.Mutex
	byVol  map[string]*Attachment
	closed bool // Close has begun: no attach or detach after it
}

// New returns an Attacher, after releasing what a previous gateway on the
// same directory left attached.
func New(g *gateway.Gateway, mg *fuse.Manager, opts Options) (*Attacher, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("attach directory: %w", err)
	}
	id, err := loadID(filepath.Join(opts.Dir, idFile))
	if err != nil {
		return nil, err
	}
	a := &Attacher{g: g, mg: mg, dir: opts.Dir, srv: opts.NBD, id: id, log: log, byVol: make(map[string]*Attachment),
		timeout: opts.NBDTimeout, deadTimeout: opts.NBDReconnectTimeout}
	if a.timeout <= 0 {
		a.timeout = DefaultNBDTimeout
	}
	if a.deadTimeout <= 0 {
		a.deadTimeout = DefaultNBDReconnectTimeout
	}
	if err := a.chooseMethod(opts.Method); err != nil {
		return nil, err
	}
	a.mu.Lock()
	a.adoptLoop(context.Background())
	a.adoptHanded(opts.Handed)
	a.adoptStaleNBD()
	a.mu.Unlock()
	log.Info("attach method", "method", a.method)
	return a, nil
}

// chooseMethod settles the method: nbd needs the driver's netlink family
// and a server for the connections.
func (a *Attacher) chooseMethod(m string) error {
	switch m {
	case "", MethodAuto:
		devs, _ := filepath.Glob("/dev/nbd*")
		if len(devs) == 0 || a.srv == nil {
			a.method = MethodLoop
			return nil
		}
		nl, err := dialNBD()
		if err != nil {
			a.log.Warn("nbd devices exist but the driver does not answer; attaching with loop devices", "err", err)
			a.method = MethodLoop
			return nil
		}
		a.method, a.nl = MethodNBD, nl
	case MethodNBD:
		if a.srv == nil {
			return fmt.Errorf("attach method nbd without an NBD server: %w", gateway.ErrInvalid)
		}
		nl, err := dialNBD()
		if err != nil {
			return fmt.Errorf("attach method nbd: the kernel's nbd driver is not available: %w", err)
		}
		a.method, a.nl = MethodNBD, nl
	case MethodLoop:
		a.method = MethodLoop
	default:
		return fmt.Errorf("attach method %q: want auto, nbd or loop: %w", m, gateway.ErrInvalid)
	}
	return nil
}

// Method is the method in use.
func (a *Attacher) Method() string { return a.method }

// idFile holds the directory's random identifier.
const idFile = "id"

func loadID(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	var r [8]byte
	rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("attach identifier: %w", err)
	}
	return id, nil
}

// Attach makes block volume ref a device and returns it.
func (a *Attacher) Attach(ctx context.Context, ref string) (Attachment, error) {
	vol, err := a.g.Volume(ref)
	if err != nil {
		return Attachment{}, err
	}
	if vol.Kind() != gateway.KindBlock {
		return Attachment{}, fmt.Errorf("%s is an fs volume: %w: mount it with `sluice mount` instead", ref, gateway.ErrInvalid)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return Attachment{}, gateway.ErrClosed
	}
	if at := a.byVol[ref]; at != nil {
		return Attachment{}, fmt.Errorf("%s is already attached as %s: %w", ref, at.Device, gateway.ErrExists)
	}
	var at *Attachment
	if a.method == MethodNBD {
		at, err = a.attachNBD(ctx, ref)
	} else {
		at, err = a.attachLoop(ctx, ref, vol.ReadOnly())
	}
	if err != nil {
		return Attachment{}, err
	}
	a.byVol[ref] = at
	return *at, nil
}

// Detach flushes and releases device; a device in use is refused.
func (a *Attacher) Detach(ctx context.Context, device string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return gateway.ErrClosed
	}
	var at *Attachment
	for _, x := range a.byVol {
		if x.Device == device {
			at = x
		}
	}
	if at == nil {
		return fmt.Errorf("%s is not a device sluice attached: %w", device, gateway.ErrNotFound)
	}
	if busy(device) {
		return fmt.Errorf("%s is busy (mounted or in use): %w: unmount it first", device, gateway.ErrInvalid)
	}
	if err := a.release(ctx, at); err != nil {
		return err
	}
	delete(a.byVol, at.Volume)
	a.log.Info("detached", "volume", at.Volume, "device", device)
	return nil
}

// busy reports whether device is mounted or held exclusively: O_EXCL on a
// block device fails with EBUSY then.
func busy(device string) bool {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return errors.Is(err, unix.EBUSY)
	}
	unix.Close(fd)
	return false
}

// flush writes the device's dirty pages and has the kernel send a FLUSH.
func flush(device string) error {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("fsync %s: %w", device, err)
	}
	return nil
}

// release flushes and lets go of one device.
func (a *Attacher) release(ctx context.Context, at *Attachment) error {
	if err := flush(at.Device); err != nil {
		a.log.Warn("flush before release failed", "device", at.Device, "err", err)
	}
	if at.Method == MethodNBD {
		return a.disconnect(at)
	}
	return a.unbind(ctx, at)
}

// Attachments lists the attached volumes by volume.
func (a *Attacher) Attachments() []Attachment {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Attachment, 0, len(a.byVol))
	for _, at := range a.byVol {
		out = append(out, *at)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume < out[j].Volume })
	return out
}

// Attached reports whether volume ref is attached.
func (a *Attacher) Attached(ref string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byVol[ref] != nil
}

// closeTimeout bounds Close: a gateway must stop even if a device hangs.
const closeTimeout = 60 * time.Second

// Close flushes and releases every device (at gateway shutdown). A device
// that is still in use (a filesystem mounted on it) cannot be released
// from here: it is abandoned (see abandon).
func (a *Attacher) Close() {
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.closed = true
		synced := false
		for ref, at := range a.byVol {
			if busy(at.Device) {
				a.abandon(ref, at, !synced)
				synced = true
				delete(a.byVol, ref)
				continue
			}
			if err := a.release(context.Background(), at); err != nil {
				a.log.Warn("detach at shutdown failed", "volume", ref, "device", at.Device, "err", err)
				if at.Method == MethodNBD {
					// The server end goes now; the device fails its IO
					// until the next gateway disconnects it.
					at.conn.Abort()
				}
			}
			delete(a.byVol, ref)
		}
		if a.nl != nil {
			a.nl.Close()
			a.nl = nil
		}
	}()
	select {
	case <-done:
	case <-time.After(closeTimeout):
		a.log.Error("releasing attached devices did not finish", "after", closeTimeout)
	}
}

// abandon gives up a device that is in use at shutdown, loudly: sync(2)
// (once: sync is global) writes back the filesystem on it, so what was
// written before the shutdown is in the volume. An nbd device's
// connection is cut: its IO waits (up to the reconnect timeout) for the
// next gateway on the data directory, which reconnects it at start-up.
// A loop device's image is detached lazily (Manager.Close): its IO fails
// once the gateway is gone, and whatever the filesystem writes after this
// point is lost, even where the write returned success.
func (a *Attacher) abandon(ref string, at *Attachment, sync bool) {
	if at.Method == MethodNBD {
		a.log.Warn("leaving an attached device that is still in use: its IO waits for the next gateway on this data directory, "+
			"which reconnects it, and fails if none starts within the reconnect timeout; unmount it and `sluice detach` it to release it",
			"volume", ref, "device", at.Device, "mounted_on", strings.Join(mountedOn(at.Device), ","), "reconnect_timeout", a.deadTimeout)
	} else {
		a.log.Error("abandoning an attached device that is still in use: its IO fails from now on, and writes to the filesystem on it "+
			"after this point are lost; unmount it and `sluice detach` it before stopping the gateway",
			"volume", ref, "device", at.Device, "mounted_on", strings.Join(mountedOn(at.Device), ","))
	}
	if sync {
		unix.Sync()
	}
	if at.Method == MethodNBD {
		at.conn.Abort()
	}
}

// mountedOn lists where device is mounted, from /proc/self/mountinfo.
func mountedOn(device string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 2 && g[1] == device {
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
