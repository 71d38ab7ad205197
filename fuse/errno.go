package fuse

import (
	"log/slog"
	"syscall"

	"github.com/sluice-storage/sluice/gateway"
)

// errnoOf is the door's one error mapping, gateway.Errno (shared with the
// shim, so a program sees the same errno through either door); an error it
// does not know is EIO and a log line (never go-fuse's ENOTSUP default).
func errnoOf(log *slog.Logger, op string, err error) syscall.Errno {
	errno, ok := gateway.Errno(err)
	if !ok {
		log.Error("fuse: request failed", "op", op, "err", err)
	}
	return errno
}
