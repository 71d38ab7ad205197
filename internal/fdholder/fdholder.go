// Package fdholder keeps file descriptors alive across a crash of the
// gateway that owns them: a small process of its own (`sluice
// fd-holder`), started by the gateway, holds the fds the gateway puts
// in it and gives them to the next gateway on the same data directory
// (docs/HANDOVER.md, "Crash resume"). Sluice keeps its FUSE mounts'
// /dev/fuse fds there: a FUSE connection lives as long as some process
// holds its fd, so a SIGKILL of the gateway leaves the mount paused,
// not dead, and the restarted gateway serves it again.
//
// The protocol: SOCK_SEQPACKET on DATA-DIR/fdholder.sock (mode 0600),
// one JSON request per packet, one JSON reply each:
//
//	{"op":"put","name":N} + one fd (SCM_RIGHTS)  → {"ok":true}
//	{"op":"remove","name":N}                      → {"ok":true}
//	{"op":"list"}                                 → {"ok":true,"count":K}
//	                                                then K × {"name":N} + its fd
//
// A put under a name already held replaces (and closes) the old fd. The
// holder exits when no client is connected and it holds nothing (a
// gateway that stops cleanly removes what it put), or when a held fd
// reports an error (POLLERR: a FUSE connection that was aborted or
// unmounted) it is dropped, so a mount that ends without its gateway
// does not keep the holder alive.
package fdholder

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// SocketName is the holder's socket in the data directory.
const SocketName = "fdholder.sock"

// maxMsg bounds one message (names are short).
const maxMsg = 4096

type request struct {
	Op   string `json:"op"`
	Name string `json:"name,omitempty"`
}

type reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Count int    `json:"count,omitempty"`
	Name  string `json:"name,omitempty"`
}

// send writes one message with fds (may be none).
func send(c *net.UnixConn, v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("fdholder: send: %w", err)
	}
	return nil
}

// recv reads one message into v and returns the fds that came with it
// (close-on-exec).
func recv(c *net.UnixConn, v any) ([]int, error) {
	b := make([]byte, maxMsg)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if errors.Is(err, io.EOF) {
		return nil, errClosed
	}
	if err != nil {
		return nil, err
	}
	if n == 0 || errors.Is(err, io.EOF) {
		return nil, errClosed
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, fmt.Errorf("fdholder: control message: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				closeAll(fds)
				return nil, fmt.Errorf("fdholder: rights: %w", err)
			}
			fds = append(fds, got...)
		}
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	if err := json.Unmarshal(b[:n], v); err != nil {
		closeAll(fds)
		return nil, fmt.Errorf("fdholder: bad message: %w", err)
	}
	return fds, nil
}

var errClosed = errors.New("fdholder: connection closed")

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Client is a gateway's connection to its holder. Its methods may be
// called from several goroutines (one request at a time).
type Client struct {
	mu sync.Mutex
	c  *net.UnixConn
}

// Dial connects to the holder at path (os.ErrNotExist-like errors and
// ECONNREFUSED when there is none: IsAbsent).
func Dial(path string) (*Client, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return &Client{c: c}, nil
}

// IsAbsent reports whether a Dial error means no holder runs there.
func IsAbsent(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ECONNREFUSED)
}

// Close ends the connection (the holder keeps what it holds).
func (cl *Client) Close() error { return cl.c.Close() }

func (cl *Client) call(req request, fds ...int) (reply, error) {
	if err := send(cl.c, req, fds...); err != nil {
		return reply{}, err
	}
	var r reply
	got, err := recv(cl.c, &r)
	closeAll(got)
	if err != nil {
		return reply{}, fmt.Errorf("fdholder: %s: %w", req.Op, err)
	}
	if !r.OK {
		return r, fmt.Errorf("fdholder: %s %s: %s", req.Op, req.Name, r.Error)
	}
	return r, nil
}

// Put gives the holder a duplicate of fd under name (the caller keeps
// fd).
func (cl *Client) Put(name string, fd int) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	_, err := cl.call(request{Op: "put", Name: name}, fd)
	return err
}

// Remove makes the holder close the fd under name (no error if none).
func (cl *Client) Remove(name string) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	_, err := cl.call(request{Op: "remove", Name: name})
	return err
}

// List returns duplicates of every fd held, by name (the caller owns
// them; the holder keeps its own).
func (cl *Client) List() (map[string]int, error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	r, err := cl.call(request{Op: "list"})
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for i := 0; i < r.Count; i++ {
		var e reply
		fds, err := recv(cl.c, &e)
		if err == nil && len(fds) != 1 {
			closeAll(fds)
			err = fmt.Errorf("fdholder: entry %q came with %d fds", e.Name, len(fds))
		}
		if err != nil {
			for _, fd := range out {
				unix.Close(fd)
			}
			return nil, err
		}
		out[e.Name] = fds[0]
	}
	return out, nil
}

// Remove the socket file of a holder that is gone (a stale path makes
// the next holder's listen fail).
func removeStale(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return
	}
}
