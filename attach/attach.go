// Package attach makes block volumes block devices of the host.
//
// A kernel with the nbd module would connect /dev/nbdN to the gateway's NBD
// door; that path is not built yet (this project's machines have no nbd
// module to test it against), so every attachment uses the fallback that
// works everywhere: the gateway mounts the volume with its FUSE door as one
// image file (served with direct IO) in a private directory, and a loop
// device is bound to that file with direct IO on (losetup --direct-io=on),
// so no page cache sits between the loop device and the gateway — libnbd's
// nbdfuse warns that loop over a cached FUSE file can deadlock under memory
// pressure.
//
// Detach refuses a device that is in use (mounted, or opened exclusively),
// then unbinds the loop device and unmounts the image. Attachments do not
// survive the gateway: at start-up, loop devices left bound to images of a
// previous run are unbound and their mounts removed.
package attach

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
)

// Attachment is one attached volume.
type Attachment struct {
	Volume string `json:"volume"`
	Device string `json:"device"`
	Method string `json:"method"` // "loop"
	Image  string `json:"image"`
	dir    string
}

// Attacher attaches volumes of one gateway.
type Attacher struct {
	g   *gateway.Gateway
	mg  *fuse.Manager
	dir string // private mount points live here
	log *slog.Logger

	mu    sync.Mutex
	byVol map[string]*Attachment
}

// New returns an Attacher whose image mounts live under dir, after cleaning
// up what a previous gateway left there.
func New(g *gateway.Gateway, mg *fuse.Manager, dir string, log *slog.Logger) (*Attacher, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("attach directory: %w", err)
	}
	a := &Attacher{g: g, mg: mg, dir: dir, log: log, byVol: make(map[string]*Attachment)}
	a.cleanStale()
	return a, nil
}

// Attach binds a loop device to block volume ref and returns it.
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
	if at := a.byVol[ref]; at != nil {
		return Attachment{}, fmt.Errorf("%s is already attached as %s: %w", ref, at.Device, gateway.ErrExists)
	}
	dir := filepath.Join(a.dir, strings.ReplaceAll(ref, "/", "."))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Attachment{}, err
	}
	if _, err := a.mg.Mount(ctx, ref, dir, false); err != nil {
		return Attachment{}, err
	}
	image := filepath.Join(dir, fuse.ImageName)
	args := []string{"--find", "--show", "--direct-io=on", image}
	if vol.ReadOnly() {
		args = append([]string{"--read-only"}, args...)
	}
	out, err := exec.CommandContext(ctx, "losetup", args...).CombinedOutput()
	if err != nil {
		a.mg.Unmount(ctx, dir)
		return Attachment{}, fmt.Errorf("losetup %s: %v: %s", image, err, strings.TrimSpace(string(out)))
	}
	at := &Attachment{Volume: ref, Device: strings.TrimSpace(string(out)), Method: "loop", Image: image, dir: dir}
	a.byVol[ref] = at
	a.log.Info("attached", "volume", ref, "device", at.Device, "direct_io", directIO(at.Device))
	return *at, nil
}

// directIO reports whether the loop device really does direct IO.
func directIO(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "dio"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// Detach unbinds device and unmounts its image; a device in use is refused.
func (a *Attacher) Detach(ctx context.Context, device string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var at *Attachment
	for _, x := range a.byVol {
		if x.Device == device {
			at = x
		}
	}
	if at == nil {
		return fmt.Errorf("%s is not a device sluice attached: %w", device, gateway.ErrNotFound)
	}
	// O_EXCL on a block device fails with EBUSY while it is mounted or
	// held by another exclusive user.
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%s is busy (mounted or in use): %w: unmount it first", device, gateway.ErrInvalid)
	} else if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	unix.Close(fd)
	if err := a.unbind(ctx, at); err != nil {
		return err
	}
	delete(a.byVol, at.Volume)
	a.log.Info("detached", "volume", at.Volume, "device", device)
	return nil
}

func (a *Attacher) unbind(ctx context.Context, at *Attachment) error {
	if out, err := exec.CommandContext(ctx, "losetup", "--detach", at.Device).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup --detach %s: %v: %s", at.Device, err, strings.TrimSpace(string(out)))
	}
	// The loop driver drops its reference to the image asynchronously.
	var err error
	for i := 0; i < 50; i++ {
		if err = a.mg.Unmount(ctx, at.dir); err == nil || errors.Is(err, gateway.ErrNotFound) {
			os.Remove(at.dir)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("unmount image of %s: %w", at.Volume, err)
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

// Close detaches everything it can (at gateway shutdown).
func (a *Attacher) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for ref, at := range a.byVol {
		if err := a.unbind(context.Background(), at); err != nil {
			a.log.Warn("detach at shutdown failed", "volume", ref, "device", at.Device, "err", err)
		}
		delete(a.byVol, ref)
	}
}

// cleanStale unbinds loop devices whose backing file is under a.dir (left
// by a gateway that died) and lazily unmounts what is mounted there.
func (a *Attacher) cleanStale() {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(b)), a.dir+string(filepath.Separator)) {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			a.log.Warn("could not unbind stale loop device", "device", dev, "err", err, "output", strings.TrimSpace(string(out)))
		} else {
			a.log.Info("unbound stale loop device", "device", dev)
		}
	}
	entries, _ := os.ReadDir(a.dir)
	for _, e := range entries {
		p := filepath.Join(a.dir, e.Name())
		unix.Unmount(p, unix.MNT_DETACH)
		os.Remove(p)
	}
}
