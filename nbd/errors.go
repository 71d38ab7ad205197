package nbd

import (
	"context"
	"errors"
	"log/slog"

	"github.com/sluice-storage/sluice/gateway"
)

// errno maps an error from Export.Do or Export.Extents to the NBD error value
// sent to the client. It is the only place that does so. Errors it does not
// recognise become EIO and are logged, because the client only sees a number.
func errno(log *slog.Logger, op string, err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, gateway.ErrOutOfRange):
		return errnoInval
	case errors.Is(err, gateway.ErrNoSpace):
		return errnoNoSpace
	case errors.Is(err, gateway.ErrReadOnly):
		return errnoPerm
	case errors.Is(err, gateway.ErrInvalid):
		return errnoInval
	case errors.Is(err, gateway.ErrUnsupported):
		return errnoNotSup
	case errors.Is(err, gateway.ErrClosed), errors.Is(err, context.Canceled):
		return errnoShutdown
	}
	log.Error("nbd: request failed", "op", op, "err", err)
	return errnoIO
}

// errnoName returns a short human string for an NBD errno, used as the message
// of structured error chunks.
func errnoName(e uint32) string {
	switch e {
	case errnoPerm:
		return "EPERM: operation not permitted"
	case errnoIO:
		return "EIO: input/output error"
	case errnoNoMem:
		return "ENOMEM: cannot allocate memory"
	case errnoInval:
		return "EINVAL: invalid argument"
	case errnoNoSpace:
		return "ENOSPC: no space left on device"
	case errnoOverflow:
		return "EOVERFLOW: value too large"
	case errnoNotSup:
		return "ENOTSUP: operation not supported"
	case errnoShutdown:
		return "ESHUTDOWN: server is shutting down"
	}
	return "error"
}
