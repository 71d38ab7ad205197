package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
)

// attachLoop mounts ref's image in a private directory and binds a loop
// device to it with direct IO.
func (a *Attacher) attachLoop(ctx context.Context, ref string, readOnly bool) (*Attachment, error) {
	dir := filepath.Join(a.dir, gateway.RefFileName(ref))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if _, err := a.mg.Mount(ctx, ref, dir, false); err != nil {
		return nil, err
	}
	image := filepath.Join(dir, fuse.ImageName)
	args := []string{"--find", "--show", "--direct-io=on", image}
	if readOnly {
		args = append([]string{"--read-only"}, args...)
	}
	out, err := exec.CommandContext(ctx, "losetup", args...).CombinedOutput()
	if err != nil {
		a.mg.Unmount(ctx, dir)
		return nil, fmt.Errorf("losetup %s: %v: %s", image, err, strings.TrimSpace(string(out)))
	}
	at := &Attachment{Volume: ref, Device: strings.TrimSpace(string(out)), Method: MethodLoop, Image: image, dir: dir}
	a.log.Info("attached", "volume", ref, "device", at.Device, "method", MethodLoop, "direct_io", directIO(at.Device))
	return at, nil
}

// directIO reports whether the loop device really does direct IO.
func directIO(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "dio"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// unbind detaches the loop device and unmounts its image.
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

// adoptLoop takes over the loop devices a previous gateway on this data
// directory left bound to images under a.dir. A device whose image mount
// this gateway serves (handed over by a planned takeover, or resumed
// after a crash from the fd holder: fuse.Manager has it by now) keeps
// working and becomes an attachment again; the others (their image
// mount died with the gateway) are unbound, and what is still mounted
// under a.dir without a device is unmounted (a.mu held).
func (a *Attacher) adoptLoop(ctx context.Context) {
	kept := map[string]bool{}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		image := strings.TrimSpace(string(b))
		if err != nil || !strings.HasPrefix(image, a.dir+string(filepath.Separator)) {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		dir := filepath.Dir(image)
		if mi, ok := a.mg.MountedAt(dir); ok && mi.Kind == gateway.KindBlock && filepath.Base(image) == fuse.ImageName &&
			a.byVol[mi.Volume] == nil {
			a.byVol[mi.Volume] = &Attachment{Volume: mi.Volume, Device: dev, Method: MethodLoop, Image: image, dir: dir}
			kept[dir] = true
			a.log.Info("attached device taken over with its image mount", "volume", mi.Volume, "device", dev, "method", MethodLoop)
			continue
		}
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			a.log.Warn("could not unbind stale loop device", "device", dev, "err", err, "output", strings.TrimSpace(string(out)))
		} else {
			a.log.Info("unbound stale loop device", "device", dev)
		}
	}
	entries, _ := os.ReadDir(a.dir)
	for _, e := range entries {
		p := filepath.Join(a.dir, e.Name())
		if !e.IsDir() || kept[p] {
			continue // the identifier file, or an image in use
		}
		if _, ok := a.mg.MountedAt(p); ok {
			if err := a.mg.Unmount(ctx, p); err != nil {
				a.log.Warn("could not unmount the image of a device that is gone", "dir", p, "err", err)
			}
		} else {
			unix.Unmount(p, unix.MNT_DETACH)
		}
		os.Remove(p)
	}
}
