package nbd

import (
	"bytes"
	"testing"
	"time"
)

// A client that sends its requests back to back gets a reader that spins
// for them: with a generous SpinMax, the spins see the next request come.
// With SpinMax negative the reader never spins.
func TestIdleReaderSpins(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spinMax time.Duration
		spins   bool
	}{{"spinning", 20 * time.Millisecond, true}, {"off", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			exp := newMemExport(1 << 20)
			srv, sock := startServer(t, memExports{testName: exp}, Options{SpinMax: tc.spinMax})
			rc := dial(t, sock)
			rc.connect(testName, false)
			data := bytes.Repeat([]byte{0x5a}, 4096)
			if r := rc.do(0, cmdWrite, 0, 4096, data); r.errno != 0 {
				t.Fatalf("write: errno %d", r.errno)
			}
			for i := range 200 {
				r := rc.do(0, cmdRead, 0, 4096, nil)
				if r.errno != 0 || !bytes.Equal(r.data, data) {
					t.Fatalf("read %d: errno %d, data equal %v", i, r.errno, bytes.Equal(r.data, data))
				}
			}
			hits, misses := srv.Spins()
			t.Logf("spins: %d hits, %d misses", hits, misses)
			if tc.spins && hits == 0 {
				t.Fatalf("no spin saw a request among 200 sent back to back (misses %d)", misses)
			}
			if !tc.spins && hits+misses != 0 {
				t.Fatalf("SpinMax < 0 but the reader spun %d times", hits+misses)
			}
		})
	}
}

// The spin decision follows the client's recent pace: off at first, on
// after short waits, off again after a pause, back on soon after.
func TestIdleWaitFollowsPace(t *testing.T) {
	w := newIdleWait(64 * time.Microsecond)
	if w.worth() {
		t.Fatal("a new connection spins before its client has shown its pace")
	}
	n := 0
	for ; !w.worth(); n++ {
		if n > 50 {
			t.Fatal("50 waits of 10 µs did not turn the spin on")
		}
		w.observe(10 * time.Microsecond)
	}
	w.observe(time.Second) // a pause
	w.observe(time.Second)
	if w.worth() {
		t.Fatal("still spinning after two 1 s waits")
	}
	back := 0
	for ; !w.worth(); back++ {
		w.observe(10 * time.Microsecond)
	}
	if back > 25 {
		t.Fatalf("took %d quick requests to spin again after a pause, want <= 25", back)
	}
	if off := newIdleWait(-1); off.worth() {
		t.Fatal("SpinMax < 0 spins")
	}
}
