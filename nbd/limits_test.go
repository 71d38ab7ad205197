package nbd

import (
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

func (s *Server) connCount() int { return s.door.Len() }

// TestConnCapPerClient: a client past its connection cap is closed at
// once; when one of its connections ends, it may connect again.
func TestConnCapPerClient(t *testing.T) {
	s, sock := startServer(t, memExports{testName: newMemExport(1 << 20)}, Options{MaxConnsPerClient: 3})
	var rcs []*rawClient
	for range 3 {
		rc := dial(t, sock)
		rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
		rcs = append(rcs, rc)
	}
	extra := dial(t, sock)
	extra.expectClosed()
	rcs[0].c.Close()
	testwait.For(t, "the closed connection leaves the count", func() bool { return s.connCount() == 2 })
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
}

// TestStalledWritePayloadCloses: a WRITE header whose payload never
// comes closes the connection after the stall timeout, returning the
// payload buffer's budget.
func TestStalledWritePayloadCloses(t *testing.T) {
	s, sock := startServer(t, memExports{testName: newMemExport(8 << 20)}, Options{StallTimeout: 200 * time.Millisecond})
	rc := dial(t, sock)
	rc.connect(testName, false)
	rc.write(requestBytes(0, cmdWrite, 1, 0, 4<<20, nil)) // header only
	testwait.For(t, "the tenant's budget holds the payload", func() bool { return s.lim.tenant(testName).used.Load() == 4<<20 })
	rc.expectClosed()
	testwait.For(t, "the budget returns", func() bool { return s.lim.total.used.Load() == 0 && s.connCount() == 0 })
}

// TestUnreadRepliesRelease: a client that pipelines large READs and
// never reads a reply loses the connection after the stall timeout, and
// every byte it held returns.
func TestUnreadRepliesRelease(t *testing.T) {
	s, sock := startServer(t, memExports{testName: newMemExport(64 << 20)}, Options{StallTimeout: 300 * time.Millisecond})
	rc := dial(t, sock)
	rc.connect(testName, false)
	for i := range 8 {
		rc.write(requestBytes(0, cmdRead, uint64(i), 0, 8<<20, nil))
	}
	testwait.For(t, "replies pile up", func() bool { return s.lim.total.used.Load() > 0 })
	testwait.For(t, "the stalled connection is closed and its bytes return", func() bool {
		return s.lim.total.used.Load() == 0 && s.connCount() == 0
	})
}

// TestTenantInflightBound: two connections of one tenant that never read
// their replies hold at most the tenant's in-flight budget between them.
func TestTenantInflightBound(t *testing.T) {
	const limit = 4 << 20
	s, sock := startServer(t, memExports{testName: newMemExport(64 << 20)}, Options{TenantInflight: limit, StallTimeout: 2 * time.Second})
	for range 2 {
		rc := dial(t, sock)
		rc.connect(testName, false)
		for i := range 10 {
			rc.write(requestBytes(0, cmdRead, uint64(i), 0, 1<<20, nil))
		}
	}
	b := s.lim.tenant(testName)
	testwait.For(t, "the tenant's budget fills", func() bool { return b.used.Load() == limit })
	for range 50 { // and stays within it while the readers wait
		if u := b.used.Load(); u > limit {
			t.Fatalf("tenant holds %d bytes, limit %d", u, limit)
		}
		time.Sleep(2 * time.Millisecond) // sampling interval
	}
	testwait.For(t, "the stalled connections are closed", func() bool { return s.lim.total.used.Load() == 0 && s.connCount() == 0 })
}
