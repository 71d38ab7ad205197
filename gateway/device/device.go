// Package device is the bottom of Sluice's data path: a flat, fixed-size
// address space of bytes that the store carves into chunk extents.
//
// A Device is safe for concurrent use; queue depth comes from concurrent
// callers. Two implementations live here:
//
//   - File: a regular file (sparse; Discard punches holes, so discarded
//     ranges read back as zeros and return space to the host filesystem) or a
//     block device (Discard issues BLKDISCARD). This is the embedded default.
//   - Memory: a sparse in-memory device for tests.
//
// The SPDK device (spdkbackend) implements the same interface over vhost-user.
package device

import (
	"errors"
	"fmt"
)

// Device is a flat array of bytes.
type Device interface {
	// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt; an access
	// outside [0, Size()) returns ErrOutOfRange and touches nothing.
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed WriteAt durable.
	Flush() error
	// Discard drops the range. If DiscardZeroes reports true the range reads
	// as zeros afterwards.
	Discard(off, length int64) error
	// DiscardZeroes reports whether a discarded range is guaranteed to read
	// back as zeros. The store relies on it to skip zero-filling new extents.
	DiscardZeroes() bool
	Size() int64
	Close() error
}

// ErrOutOfRange is returned for an access outside the device.
var ErrOutOfRange = errors.New("device: access out of range")

func checkRange(off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, length, size)
	}
	return nil
}
