package attach

import (
	"context"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// Resize grows volume ref with grow and, if ref is attached, makes its
// device take the new size, under the attacher's lock (no attach or
// detach of it meanwhile).
//
//   - loop: the image's size is invalidated in the kernel's FUSE cache and
//     read again, then LOOP_SET_CAPACITY makes the loop device (and the
//     filesystem on it, for resize2fs) see the new size.
//   - nbd: refused before anything changes. The kernel's nbd driver takes
//     a device's size only when it is connected (NBD_CMD_RECONFIGURE does
//     not change it, and the ioctl interface refuses netlink devices), so
//     the device would keep its old size: detach, resize, attach.
func (a *Attacher) Resize(ctx context.Context, ref string, grow func() error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	at := a.byVol[ref]
	if at != nil && at.Method == MethodNBD {
		return fmt.Errorf("%s is attached as %s, whose size the kernel's nbd driver cannot change while connected: %w: "+
			"detach it, resize, and attach it again", ref, at.Device, gateway.ErrInvalid)
	}
	if err := grow(); err != nil {
		return err
	}
	if at == nil {
		return nil
	}
	if err := a.setCapacity(at); err != nil {
		return fmt.Errorf("%s was resized, but its device %s keeps the old size: %w (detach and attach it again)", ref, at.Device, err)
	}
	a.log.Info("attached device resized", "volume", ref, "device", at.Device)
	return nil
}

// setCapacity makes a loop device take its image's new size and checks
// that it did.
func (a *Attacher) setCapacity(at *Attachment) error {
	vol, err := a.g.Volume(at.Volume)
	if err != nil {
		return err
	}
	if err := a.mg.ImageResized(at.dir); err != nil {
		return err
	}
	fd, err := unix.Open(at.Device, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY: %w", err)
	}
	var size uint64
	if size, err = blockSize(fd); err != nil {
		return err
	}
	if int64(size) != vol.Size() {
		return fmt.Errorf("the device has %d bytes after LOOP_SET_CAPACITY, want %d: %w", size, vol.Size(), gateway.ErrIO)
	}
	return nil
}

// blockSize is BLKGETSIZE64.
func blockSize(fd int) (uint64, error) {
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", errno)
	}
	return size, nil
}
