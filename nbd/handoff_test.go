package nbd

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketPair returns two connected unix stream sockets, as the attacher
// makes for the kernel.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = c
	}
	return out[0], out[1]
}

// A handed-off connection is in transmission at once: the first bytes
// the client sends are requests, answered with simple replies, and a
// disconnect ends it (Done closes).
func TestHandoff(t *testing.T) {
	exp := newMemExport(1 << 20)
	s, _ := startServer(t, memExports{"t/v": exp}, Options{})
	if _, err := s.Handoff(context.Background(), "t/missing", nil); err == nil {
		t.Fatal("handoff of a missing export succeeded")
	}
	srvSide, client := socketPair(t)
	defer client.Close()
	h, err := s.Handoff(context.Background(), "t/v", srvSide)
	if err != nil {
		t.Fatal(err)
	}
	if h.Size != 1<<20 || h.ReadOnly || h.Flags&tflagHasFlags == 0 || h.Flags&tflagSendFlush == 0 || h.Flags&tflagSendTrim == 0 {
		t.Fatalf("handoff %+v", h)
	}
	client.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawClient{t: t, c: client, r: bufio.NewReader(client)}
	data := bytes.Repeat([]byte("sluice!!"), 512)
	if r := rc.do(0, cmdWrite, 4096, uint32(len(data)), data); r.errno != 0 {
		t.Fatalf("write: errno %d", r.errno)
	}
	if r := rc.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: errno %d", r.errno)
	}
	if r := rc.do(0, cmdRead, 4096, uint32(len(data)), nil); r.errno != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read: errno %d, %d bytes equal=%v", r.errno, len(r.data), bytes.Equal(r.data, data))
	}
	rc.sendReq(0, cmdDisc, 1, 0, 0, nil)
	select {
	case <-h.Done:
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after a disconnect")
	}
}

// A read-only export hands off read-only, and Abort ends a connection.
func TestHandoffReadOnlyAndAbort(t *testing.T) {
	exp := newMemExport(1 << 20)
	exp.ro = true
	s, _ := startServer(t, memExports{"t/v": exp}, Options{})
	srvSide, client := socketPair(t)
	defer client.Close()
	h, err := s.Handoff(context.Background(), "t/v", srvSide)
	if err != nil {
		t.Fatal(err)
	}
	if !h.ReadOnly || h.Flags&tflagReadOnly == 0 || h.Flags&tflagSendTrim != 0 {
		t.Fatalf("read-only handoff %+v", h)
	}
	client.SetDeadline(time.Now().Add(10 * time.Second))
	rc := &rawClient{t: t, c: client, r: bufio.NewReader(client)}
	if r := rc.do(0, cmdWrite, 0, 512, make([]byte, 512)); r.errno != errnoPerm {
		t.Fatalf("write to a read-only handoff: errno %d, want EPERM", r.errno)
	}
	h.Abort()
	select {
	case <-h.Done:
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after Abort")
	}
}
