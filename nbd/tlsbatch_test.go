package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestTLSRepliesBatched: 32 queued 4 KiB READ replies (header and data
// each) reach the socket as one write, a 1 MiB READ reply as four (one per
// 256 KiB sealed), and a TLS client reads them back intact, in order.
func TestTLSRepliesBatched(t *testing.T) {
	var small [][]byte
	for i := 0; i < 32; i++ {
		small = append(small, bytes.Repeat([]byte{byte(i)}, 24), bytes.Repeat([]byte{byte(100 + i)}, 4096))
	}
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name   string
		bufs   [][]byte
		writes int64
	}{
		{"32 small replies", small, 1},
		{"one 1 MiB reply", [][]byte{bytes.Repeat([]byte{9}, 20), big}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := tlsWriteCount(t, tc.bufs); n != tc.writes {
				t.Fatalf("took %d socket writes, want %d", n, tc.writes)
			}
		})
	}
}

// tlsWriteCount writes bufs with writeTLS to a TLS client, checks that
// the client reads them intact, and returns the socket writes it took.
func tlsWriteCount(t *testing.T, bufs [][]byte) int64 {
	p := newPKI(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		got []byte
		err error
	}
	want := bytes.Join(bufs, nil)
	done := make(chan result, 1)
	go func() {
		nc, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			done <- result{err: err}
			return
		}
		defer nc.Close()
		tc := tls.Client(nc, p.client(t, "t1"))
		got := make([]byte, len(want))
		_, err = io.ReadFull(tc, got)
		done <- result{got, err}
	}()
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cc := &countingConn{Conn: sc}
	c := &conn{batch: newRecordBatcher(cc)}
	tc := tls.Server(c.batch, p.server)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := cc.writes.Load()
	if err := c.writeTLS(tc, bufs); err != nil {
		t.Fatal(err)
	}
	n := cc.writes.Load() - before
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.got, want) {
		t.Fatal("the client read different bytes than the replies queued")
	}
	return n
}

// FuzzRecordReader: whatever the client sends, the record reader hands
// crypto/tls the same bytes in the same order without panicking, a ready
// record reads as something, and waiting is called before the socket is
// read.
func FuzzRecordReader(f *testing.F) {
	f.Add([]byte{23, 3, 3, 0, 4, 1, 2, 3, 4, 23, 3, 3, 0, 1, 9}, uint8(7))
	f.Add([]byte{23, 3, 3, 255, 255, 1}, uint8(1))
	f.Add([]byte{22, 3}, uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		src := &shortReader{data: data, n: int(chunk) + 1}
		waits := 0
		b := &recordBatcher{rd: bufio.NewReaderSize(src, 16), waiting: func() { waits++ }}
		var got []byte
		p := make([]byte, 64)
		for reads := 0; ; reads++ {
			ready := b.recordReady()
			n, err := b.Read(p)
			if n > len(p) {
				t.Fatalf("Read returned %d bytes into %d", n, len(p))
			}
			got = append(got, p[:n]...)
			if err != nil || reads > 4*len(data)+8 {
				break
			}
			if ready && n == 0 {
				t.Fatal("a ready record read as nothing")
			}
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("read %x, sent %x", got, data)
		}
		if len(data) > 0 && waits == 0 {
			t.Fatal("read from the socket without calling waiting first")
		}
	})
}

// shortReader returns at most n bytes per Read, like a socket.
type shortReader struct {
	data []byte
	n    int
}

func (r *shortReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.n)], r.data)
	r.data = r.data[n:]
	return n, nil
}
