package gateway

import (
	"context"
	"errors"
	"syscall"
)

// Errno is the file doors' one error mapping (the FUSE door and the shim
// give a program the same errno for the same failure): the gateway's
// sentinels to errno, cancellations to EINTR and ETIMEDOUT, an errno
// passes through, ErrClosed is EIO. ok is false for an error it does not
// know: the door answers EIO and logs the error.
func Errno(err error) (errno syscall.Errno, ok bool) {
	if err == nil {
		return 0, true
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return syscall.ENOENT, true
	case errors.Is(err, ErrExists):
		return syscall.EEXIST, true
	case errors.Is(err, ErrNotDir):
		return syscall.ENOTDIR, true
	case errors.Is(err, ErrIsDir):
		return syscall.EISDIR, true
	case errors.Is(err, ErrNotEmpty):
		return syscall.ENOTEMPTY, true
	case errors.Is(err, ErrNameTooLong):
		return syscall.ENAMETOOLONG, true
	case errors.Is(err, ErrNoData):
		return syscall.ENODATA, true
	case errors.Is(err, ErrRange):
		return syscall.ERANGE, true
	case errors.Is(err, ErrTooBig):
		return syscall.EFBIG, true
	case errors.Is(err, ErrPerm):
		return syscall.EPERM, true
	case errors.Is(err, ErrNXIO):
		return syscall.ENXIO, true
	case errors.Is(err, ErrNoSpace):
		return syscall.ENOSPC, true
	case errors.Is(err, ErrReadOnly):
		return syscall.EROFS, true
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrOutOfRange):
		return syscall.EINVAL, true
	case errors.Is(err, ErrUnsupported):
		return syscall.EOPNOTSUPP, true
	case errors.Is(err, context.Canceled):
		return syscall.EINTR, true
	case errors.Is(err, context.DeadlineExceeded):
		return syscall.ETIMEDOUT, true
	case errors.As(err, &errno):
		return errno, true
	case errors.Is(err, ErrClosed):
		return syscall.EIO, true
	}
	return syscall.EIO, false
}
