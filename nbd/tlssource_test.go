package nbd

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if server, err = l.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// The batcher's socket reader, while it expects more bytes, reads through
// the RawConn (spinning before it parks): it returns what arrives, the
// end of the stream as io.EOF, and a read deadline as the netpoller does.
func TestRecordSourceExpecting(t *testing.T) {
	server, client := tcpPair(t)
	src := &recordSource{nc: server, rc: rawConn(server), expect: func() bool { return true }}
	if src.rc == nil {
		t.Fatal("no RawConn for a TCP connection")
	}
	sent := make(chan struct{})
	go func() {
		client.Write([]byte("first"))
		<-sent // the reader has "first": "second" finds it waiting (spinning or parked)
		client.Write([]byte("second"))
		client.(*net.TCPConn).CloseWrite()
	}()
	first := make([]byte, 5)
	if _, err := io.ReadFull(src, first); err != nil || string(first) != "first" {
		t.Fatalf("read %q, %v; want \"first\"", first, err)
	}
	close(sent)
	got, err := io.ReadAll(src)
	if err != nil || string(got) != "second" {
		t.Fatalf("read %q, %v; want \"second\", nil", got, err)
	}

	server2, _ := tcpPair(t)
	src2 := &recordSource{nc: server2, rc: rawConn(server2), expect: func() bool { return true }}
	server2.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	n, err := src2.Read(make([]byte, 16))
	if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %d, %v; want 0, deadline exceeded", n, err)
	}
}
