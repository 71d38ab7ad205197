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
)
