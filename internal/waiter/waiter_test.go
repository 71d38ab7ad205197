package waiter

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeRing is a Waitable that becomes ready after a number of checks.
type fakeRing struct {
	readyAfter int64 // checks until ready; < 0: never
	checks     atomic.Int64
	notifyOn   atomic.Bool
	peer       func() // called when notifications are armed; nil: none
}

func (f *fakeRing) Ready() bool {
	n := f.checks.Add(1)
	return f.readyAfter >= 0 && n > f.readyAfter
}

func (f *fakeRing) Notify(on bool) {
	f.notifyOn.Store(on)
	if on && f.peer != nil {
		f.peer() // the peer sees notifications armed and kicks
	}
}

func TestWaitDefaults(t *testing.T) {
	o := Options{}.WithDefaults()
	if o.SpinMax != defaultSpinMax || o.PollMax != defaultPollMax || o.PollIdle != defaultPollIdle {
		t.Fatalf("defaults: %+v", o)
	}
	o = Options{SpinMax: time.Millisecond, PollMax: time.Microsecond}.WithDefaults()
	if o.PollMax != o.SpinMax {
		t.Fatalf("PollMax below SpinMax not raised: %+v", o)
	}
}

// The window follows QEMU's rule: work inside it keeps it, work after it
// but before PollMax doubles it (from windowStart), work after 2 x PollMax
// halves it; in between (slow wake-ups) it stays.
func TestWaitAdjust(t *testing.T) {
	w, err := New(Options{}, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.window != windowStart {
		t.Fatalf("start window %v", w.window)
	}
	w.adjust(w.window / 2)
	if w.window != windowStart {
		t.Fatalf("work inside the window changed it: %v", w.window)
	}
	w.adjust(3 * windowStart)
	if w.window != 2*windowStart {
		t.Fatalf("work soon after the window: %v, want doubled", w.window)
	}
	for range 20 {
		w.adjust(min(w.window+time.Nanosecond, w.opt.PollMax))
	}
	if w.window != w.opt.PollMax {
		t.Fatalf("window not capped at PollMax: %v", w.window)
	}
	w.adjust(w.opt.PollMax + time.Microsecond)
	if w.window != w.opt.PollMax {
		t.Fatalf("work between PollMax and 2 x PollMax (a slow wake-up): %v, want kept", w.window)
	}
	w.adjust(2*w.opt.PollMax + time.Microsecond)
	if w.window != w.opt.PollMax/2 {
		t.Fatalf("work after 2 x PollMax: %v, want halved", w.window)
	}
	for range 40 {
		w.adjust(time.Second)
	}
	if w.window != 0 {
		t.Fatalf("idle waits should collapse the window to 0 (pure eventfd): %v", w.window)
	}
	w.adjust(10 * time.Microsecond)
	if w.window != windowStart {
		t.Fatalf("work soon after an empty window restarts it at %v: %v", windowStart, w.window)
	}
}

func TestWaitSpinBudget(t *testing.T) {
	w, _ := New(Options{SpinMax: 20 * time.Microsecond}, -1, nil)
	w.window = 8 * time.Microsecond
	if got := w.spinBudget(); got != 8*time.Microsecond {
		t.Fatalf("spin budget %v, want the window", got)
	}
	w.window = 200 * time.Microsecond
	if got := w.spinBudget(); got != 20*time.Microsecond {
		t.Fatalf("spin budget %v, want SpinMax", got)
	}
}

func TestBatchNap(t *testing.T) {
	for _, c := range []struct {
		rate float64
		want time.Duration
	}{
		{0, napMax},
		{1, napMax},                      // 8 s, clamped
		{100_000, 80 * time.Microsecond}, // 8 items at 100k/s
		{1e9, napMin},                    // clamped
	} {
		if got := batchNap(c.rate); got != c.want {
			t.Errorf("batchNap(%v) = %v, want %v", c.rate, got, c.want)
		}
	}
}

// Batch mode starts when wake-ups average batchTarget items, and only in
// adaptive mode.
func TestWaitBatchMode(t *testing.T) {
	for _, mode := range []Mode{Adaptive, Eventfd, Poll} {
		w, _ := New(Options{Mode: mode}, -1, nil)
		for range 50 {
			w.Processed(32)
			time.Sleep(10 * time.Microsecond)
		}
		if w.batchMode != (mode == Adaptive) {
			t.Errorf("%v: batch mode %v after many 32-item wake-ups", mode, w.batchMode)
		}
		for range 50 {
			w.Processed(1)
		}
		if w.batchMode {
			t.Errorf("%v: still in batch mode after 1-item wake-ups", mode)
		}
	}
}

// In batch mode the poller spins before it naps: work that arrives within
// the spin is taken without a sleep.
func TestWaitBatchSpinsFirst(t *testing.T) {
	w, _ := New(Options{SpinMax: time.Second, PollMax: time.Second}, -1, nil)
	w.window = time.Second
	w.batchMode, w.rate, w.batch = true, 1e5, batchTarget
	r := &fakeRing{readyAfter: 40}
	if !w.adaptive(r) {
		t.Fatal("adaptive returned false")
	}
	if n := w.ctr.naps.Load(); n != 0 {
		t.Fatalf("napped %d times although work arrived while spinning", n)
	}
	// Nothing while spinning: one batch nap, and work after it is taken.
	w.window = 0
	w.batchMode = true
	r = &fakeRing{readyAfter: spinYield} // not ready until the spin gives up
	if !w.adaptive(r) {
		t.Fatal("adaptive returned false")
	}
	// (Unless a yield found the P contended: then it blocks instead.)
	if n := w.ctr.naps.Load(); n != 1 && w.ctr.contended.Load() == 0 {
		t.Fatalf("%d naps, want one batch nap", n)
	}
}

// Without an eventfd a waiter that finds nothing ends up polling the ring
// with notifications enabled, and returns when work arrives.
func TestWaitAdaptiveWithoutEventfd(t *testing.T) {
	w, _ := New(Options{PollIdle: time.Millisecond}, -1, nil)
	r := &fakeRing{readyAfter: 5000}
	if !w.Wait(r) {
		t.Fatal("wait returned false")
	}
	if r.notifyOn.Load() {
		t.Fatal("notifications left enabled after wait returned with work")
	}
	w.Stop()
	if w.Wait(&fakeRing{readyAfter: -1}) {
		t.Fatal("wait on a stopped waiter returned true")
	}
}

// A waiter whose Spinners cap is full blocks on its eventfd at once and
// counts it; with the place free it spins and gives the place back.
func TestSpinnersCap(t *testing.T) {
	cap1 := NewSpinners(1)
	cap1.load = fakeLoad(t, 1, 2) // an idle machine, whatever this one's load
	if !cap1.acquire() || cap1.acquire() {
		t.Fatal("a cap of 1 gave out other than one place")
	}
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ev)
	var ctr Counters
	w, err := New(Options{Spinners: cap1}, ev, &ctr)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	kicked := &fakeRing{readyAfter: 1, peer: func() { Signal(ev) }}
	if !w.Wait(kicked) {
		t.Fatal("wait returned false")
	}
	if st := ctr.Stats(); st.Capped != 1 || st.Blocks != 1 {
		t.Fatalf("capped %d blocks %d, want 1 and 1 (stats %+v)", st.Capped, st.Blocks, st)
	}
	cap1.release()
	if !w.Wait(&fakeRing{readyAfter: 3}) {
		t.Fatal("wait returned false")
	}
	if st := ctr.Stats(); st.Capped != 1 || st.Blocks != 1 {
		t.Fatalf("capped %d blocks %d with the place free, want still 1 and 1", st.Capped, st.Blocks)
	}
	if !cap1.acquire() {
		t.Fatal("the waiter kept its place after waiting")
	}
	if NewSpinners(0).max != 1 {
		t.Fatal("a cap below 1 is not 1")
	}
}

// fakeLoad is an osLoad reading a loadavg file of ours: running tasks
// of ncpu CPUs.
func fakeLoad(t *testing.T, running, ncpu int) *osLoad {
	t.Helper()
	path := filepath.Join(t.TempDir(), "loadavg")
	writeLoad(t, path, running)
	return &osLoad{ncpu: ncpu, path: path, clock: time.Now}
}

func writeLoad(t *testing.T, path string, running int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(fmt.Sprintf("0.52 0.58 0.59 %d/467 12345\n", running)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// More runnable tasks than CPUs: no waiter of the cap spins (acquire
// fails, the wait blocks at once and counts as capped); the count is read
// again only after loadEvery; at or below the CPUs the place is given.
func TestSpinnersOSLoad(t *testing.T) {
	if n, ok := runningTasks("/proc/loadavg"); !ok || n < 1 {
		t.Fatalf("running tasks from /proc/loadavg: %d %v (this test runs, so at least 1)", n, ok)
	}
	for _, bad := range []string{"", "1 2 3", "0.1 0.1 0.1 x/10 1", "0.1 0.1 0.1 5 1"} {
		path := filepath.Join(t.TempDir(), "loadavg")
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if n, ok := runningTasks(path); ok {
			t.Errorf("%q parsed as %d running", bad, n)
		}
	}
	now := time.Unix(1000, 0)
	l := fakeLoad(t, 3, 2)
	l.clock = func() time.Time { return now }
	s := NewSpinners(1)
	s.load = l
	// settle reads the load every loadEvery for 100 ms: the average
	// follows the count.
	settle := func(running int) {
		writeLoad(t, l.path, running)
		for range 100 {
			now = now.Add(loadEvery)
			l.contended()
		}
	}
	// A spinning poller and its spinning client (2), and now and then a
	// third task: not contended.
	for i := range 100 {
		writeLoad(t, l.path, 2+min(1, i%4/3))
		now = now.Add(loadEvery)
		l.contended()
	}
	if !s.acquire() {
		t.Fatalf("no place to spin with 2-3 runnable tasks on 2 CPUs (average %.2f)", l.avg)
	}
	s.release()
	settle(4) // twice the CPUs: not yet
	if !s.acquire() {
		t.Fatalf("no place to spin with 4 runnable tasks on 2 CPUs (average %.2f)", l.avg)
	}
	s.release()
	settle(5)
	if s.acquire() {
		t.Fatal("a place to spin with 5 runnable tasks on 2 CPUs all along")
	}
	settle(9)
	if s.acquire() {
		t.Fatal("a place to spin with 9 runnable tasks on 2 CPUs")
	}
	writeLoad(t, l.path, 2)
	if s.acquire() {
		t.Fatal("the load was read again before loadEvery")
	}
	settle(2)
	if !s.acquire() {
		t.Fatal("no place to spin with 2 runnable tasks on 2 CPUs")
	}
	s.release()

	settle(9)
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ev)
	var ctr Counters
	w, err := New(Options{Spinners: s}, ev, &ctr)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if !w.Wait(&fakeRing{readyAfter: 1, peer: func() { Signal(ev) }}) {
		t.Fatal("wait returned false")
	}
	if st := ctr.Stats(); st.Capped != 1 || st.Blocks != 1 || st.Naps != 0 {
		t.Fatalf("stats %+v on a contended machine, want one capped blocked wait and no naps", st)
	}
}
