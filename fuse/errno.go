package fuse

import (
	"context"
	"errors"
	"log/slog"
	"syscall"

	"github.com/sluice-storage/sluice/gateway"
)

// errnoOf is the door's one error mapping: engine sentinels to errno;
// cancellations to EINTR; an errno passes through; anything else is EIO and
// a log line (never go-fuse's ENOTSUP default).
func errnoOf(log *slog.Logger, op string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.Is(err, gateway.ErrNotFound):
		return syscall.ENOENT
	case errors.Is(err, gateway.ErrExists):
		return syscall.EEXIST
	case errors.Is(err, gateway.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, gateway.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, gateway.ErrNotEmpty):
		return syscall.ENOTEMPTY
	case errors.Is(err, gateway.ErrNameTooLong):
		return syscall.ENAMETOOLONG
	case errors.Is(err, gateway.ErrNoData):
		return syscall.ENODATA
	case errors.Is(err, gateway.ErrRange):
		return syscall.ERANGE
	case errors.Is(err, gateway.ErrTooBig):
		return syscall.EFBIG
	case errors.Is(err, gateway.ErrPerm):
		return syscall.EPERM
	case errors.Is(err, gateway.ErrNXIO):
		return syscall.ENXIO
	case errors.Is(err, gateway.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, gateway.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, gateway.ErrInvalid), errors.Is(err, gateway.ErrOutOfRange):
		return syscall.EINVAL
	case errors.Is(err, gateway.ErrUnsupported):
		return syscall.EOPNOTSUPP
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	case errors.Is(err, context.DeadlineExceeded):
		return syscall.ETIMEDOUT
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, gateway.ErrClosed):
		return syscall.EIO
	}
	log.Error("fuse: request failed", "op", op, "err", err)
	return syscall.EIO
}
