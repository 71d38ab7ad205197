package spdkbackend

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"unicode"
)

// Scheme prefixes a device string that names an SPDK bdev.
const Scheme = "spdk:"

// DefaultRPCSocket is SPDK's own default RPC socket (spdk_tgt -r).
const DefaultRPCSocket = "/var/tmp/spdk.sock"

// maxSocketPath is the longest unix socket path (sun_path holds 108 bytes
// with the NUL).
const maxSocketPath = 107

// maxBdevName bounds a bdev name; SPDK's own names are short, and the name
// ends up in log lines and error messages.
const maxBdevName = 255

// URI is a parsed "spdk:RPC_SOCKET?bdev=NAME" device string.
type URI struct {
	// Socket is the target's RPC socket, an absolute path; empty when the
	// string named none (the caller picks: DefaultRPCSocket, or the socket
	// of a target it launches).
	Socket string
	// Bdev is the bdev to put the store on.
	Bdev string
}

// IsURI reports whether a --device string names an SPDK bdev.
func IsURI(s string) bool { return strings.HasPrefix(s, Scheme) }

// ErrBadURI is wrapped by every ParseURI error.
var ErrBadURI = errors.New("bad SPDK device string (want spdk:RPC_SOCKET?bdev=NAME)")

// ParseURI parses "spdk:RPC_SOCKET?bdev=NAME". RPC_SOCKET is an absolute
// path (of at most 107 bytes, a unix socket's limit) or empty; the query
// holds exactly one parameter, bdev, whose value (percent-decoded) is a
// non-empty name of printable characters. Nothing else is accepted, so a
// typo fails here rather than as a missing bdev later.
func ParseURI(s string) (URI, error) {
	rest, ok := strings.CutPrefix(s, Scheme)
	if !ok {
		return URI{}, fmt.Errorf("%q: %w: no %q prefix", s, ErrBadURI, Scheme)
	}
	sock, query, ok := strings.Cut(rest, "?")
	if !ok {
		return URI{}, fmt.Errorf("%q: %w: no ?bdev=NAME", s, ErrBadURI)
	}
	var u URI
	if sock != "" {
		if !filepath.IsAbs(sock) {
			return URI{}, fmt.Errorf("%q: %w: the RPC socket %q is not an absolute path", s, ErrBadURI, sock)
		}
		if len(sock) > maxSocketPath {
			return URI{}, fmt.Errorf("%q: %w: the RPC socket path is %d bytes, a unix socket's is at most %d", s, ErrBadURI, len(sock), maxSocketPath)
		}
		if strings.ContainsRune(sock, 0) {
			return URI{}, fmt.Errorf("%q: %w: NUL in the RPC socket path", s, ErrBadURI)
		}
		u.Socket = filepath.Clean(sock)
	}
	vals, err := url.ParseQuery(query)
	if err != nil {
		return URI{}, fmt.Errorf("%q: %w: %w", s, ErrBadURI, err)
	}
	for k, v := range vals {
		if k != "bdev" {
			return URI{}, fmt.Errorf("%q: %w: unknown parameter %q (only bdev)", s, ErrBadURI, k)
		}
		if len(v) != 1 {
			return URI{}, fmt.Errorf("%q: %w: bdev given %d times", s, ErrBadURI, len(v))
		}
	}
	u.Bdev = vals.Get("bdev")
	if u.Bdev == "" {
		return URI{}, fmt.Errorf("%q: %w: no bdev name", s, ErrBadURI)
	}
	if len(u.Bdev) > maxBdevName {
		return URI{}, fmt.Errorf("%q: %w: bdev name of %d bytes (at most %d)", s, ErrBadURI, len(u.Bdev), maxBdevName)
	}
	for _, r := range u.Bdev {
		if !unicode.IsPrint(r) || r == unicode.ReplacementChar {
			return URI{}, fmt.Errorf("%q: %w: bdev name %q has a non-printable character", s, ErrBadURI, u.Bdev)
		}
	}
	return u, nil
}

// String formats u back into the form ParseURI accepts.
func (u URI) String() string {
	return Scheme + u.Socket + "?" + url.Values{"bdev": {u.Bdev}}.Encode()
}
