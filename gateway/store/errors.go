package store

import "errors"

// Error sentinels. Callers test with errors.Is; the gateway re-exports them
// and each door maps them to its protocol's codes in one place.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInvalid     = errors.New("invalid argument")
	ErrOutOfRange  = errors.New("out of range")  // read or discard past the end
	ErrNoSpace     = errors.New("no space left") // pool full, or write past the end
	ErrReadOnly    = errors.New("read-only")
	ErrIO          = errors.New("I/O error")
	ErrClosed      = errors.New("store is closed")
	ErrUnsupported = errors.New("not supported")

	// fs volumes.
	ErrNotDir      = errors.New("not a directory")
	ErrIsDir       = errors.New("is a directory")
	ErrNotEmpty    = errors.New("directory not empty")
	ErrNameTooLong = errors.New("name too long")
	ErrNoData      = errors.New("no such attribute") // xattr absent (ENODATA)
	ErrRange       = errors.New("result too large")  // xattr buffer too small (ERANGE)
	ErrTooBig      = errors.New("file too large")    // past MaxFileSize (EFBIG)
	ErrPerm        = errors.New("operation not permitted")
	ErrNXIO        = errors.New("no data or hole past the end") // lseek (ENXIO)
)
