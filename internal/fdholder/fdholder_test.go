package fdholder

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHolder puts a pipe's read end in a holder, lists it back from a
// second connection after the first closed (a gateway that died), checks
// it is the same pipe, and checks that the holder exits once nothing is
// held and no client is connected.
func TestHolder(t *testing.T) {
	path := filepath.Join(t.TempDir(), SocketName)
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- Serve(context.Background(), l, time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cl, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Put("fuse-1", int(r.Fd())); err != nil {
		t.Fatal(err)
	}
	r.Close() // only the holder keeps the read end
	cl.Close()

	cl2, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	held, err := cl2.List()
	if err != nil {
		t.Fatal(err)
	}
	fd, ok := held["fuse-1"]
	if len(held) != 1 || !ok {
		t.Fatalf("held %v, want fuse-1 only", held)
	}
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatalf("the pipe lost its reader: %v", err)
	}
	b := make([]byte, 1)
	if n, err := unix.Read(fd, b); n != 1 || b[0] != 'x' || err != nil {
		t.Fatalf("read %d %q %v from the held fd", n, b, err)
	}
	unix.Close(fd)
	if err := cl2.Remove("fuse-1"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("the holder exited with a client connected: %v", err)
	default:
	}
	cl2.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("holder: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the holder did not exit with nothing held and no client")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	if _, err := Dial(path); !IsAbsent(err) {
		t.Fatalf("dial after exit: %v, want absent", err)
	}
}
