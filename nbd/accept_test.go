package nbd

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// failingListener fails its first n accepts with EMFILE, as a process
// out of file descriptors does, then accepts for real.
type failingListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// TestServeSurvivesEMFILE: accept errors that pass (out of file
// descriptors) make the server wait and accept again, not stop serving
// for good (issue 17: one EMFILE killed the TCP NBD door).
func TestServeSurvivesEMFILE(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	inner, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l := &failingListener{Listener: inner}
	l.fails.Store(5)
	s := NewServer(memExports{"t/v": newMemExport(1 << 20)}, Options{Logger: testLogger(t)})
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), l) }()
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if l.fails.Load() >= 0 {
		t.Fatalf("the listener still has %d failures to give", l.fails.Load()+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}
