package controller

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// recorder records a Follower's callbacks.
type recorder struct {
	mu        sync.Mutex
	applied   []uint64
	fallbacks int
	events    []string
}

func (r *recorder) apply(s AssignmentSet) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied = append(r.applied, s.Epoch)
	r.events = append(r.events, "apply")
}

func (r *recorder) fallback() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fallbacks++
	r.events = append(r.events, "fallback")
}

func (r *recorder) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applied), r.fallbacks
}

func set(epoch uint64, gold float64) AssignmentSet {
	return AssignmentSet{Epoch: epoch, Gateway: "g1", Assignments: map[string]qos.Limits{"gold": {ReadBPS: gold}}}
}

func TestFollowerGraceAndFallback(t *testing.T) {
	clk := qos.NewFakeClock(time.Unix(1000, 0))
	var rec recorder
	f := NewFollower(FollowerOptions{Gateway: "g1", Apply: rec.apply, Fallback: rec.fallback, Clock: clk, Logger: quietLogger()})
	if st := f.State(); st.Following || st.Epoch != 0 || f.Enforced() != 0 {
		t.Fatalf("initial state %+v", st)
	}
	mustOffer := func(s AssignmentSet, want bool) {
		t.Helper()
		got, err := f.Offer(s)
		if err != nil || got != want {
			t.Fatalf("Offer(epoch %d) = %v, %v; want %v", s.Epoch, got, err, want)
		}
	}
	mustOffer(set(10, 100), true)
	mustOffer(set(9, 50), false)   // stale: ignored
	mustOffer(set(10, 100), false) // same epoch: contact only
	mustOffer(set(11, 100), false) // newer, same limits: nothing to apply
	mustOffer(set(12, 200), true)
	if st := f.State(); !st.Following || st.Epoch != 12 || f.Enforced() != 12 {
		t.Fatalf("state %+v", st)
	}
	// Silence: nothing happens for the grace period after the last contact.
	clk.Advance(5 * time.Second)
	mustOffer(set(12, 200), false) // contact restarts the grace period
	clk.Advance(DefaultGrace - time.Millisecond)
	if _, fb := rec.counts(); fb != 0 {
		t.Fatal("fell back before the grace period ended")
	}
	clk.Advance(time.Millisecond)
	if _, fb := rec.counts(); fb != 1 {
		t.Fatalf("fallbacks %d after the grace period", fb)
	}
	if f.State().Following || f.Enforced() != 0 {
		t.Fatalf("state after fallback %+v", f.State())
	}
	clk.Advance(time.Hour)
	if _, fb := rec.counts(); fb != 1 {
		t.Fatal("fell back twice")
	}
	// Stale epochs stay stale after fallback; the controller's next set
	// (even with the same limits) is applied again.
	mustOffer(set(11, 200), false)
	mustOffer(set(13, 200), true)
	if f.Enforced() != 13 {
		t.Errorf("enforced %d", f.Enforced())
	}
	if _, err := f.Offer(AssignmentSet{Epoch: 99, Gateway: "g2"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("another gateway's set: %v", err)
	}
	if _, err := f.Offer(AssignmentSet{Epoch: 0, Gateway: "g1"}); err != nil {
		t.Error(err)
	}
	// After Stop no callback runs.
	f.Stop()
	clk.Advance(time.Hour)
	mustOffer(set(14, 1), false)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := []string{"apply", "apply", "fallback", "apply"}
	if len(rec.events) != len(want) {
		t.Fatalf("events %v, want %v", rec.events, want)
	}
	for i := range want {
		if rec.events[i] != want[i] {
			t.Fatalf("events %v, want %v", rec.events, want)
		}
	}
}

func TestFollowerCustomGrace(t *testing.T) {
	clk := qos.NewFakeClock(time.Unix(0, 0))
	var rec recorder
	f := NewFollower(FollowerOptions{Gateway: "g1", Apply: rec.apply, Fallback: rec.fallback, Grace: 2 * time.Second, Clock: clk, Logger: quietLogger()})
	f.Offer(set(1, 1))
	clk.Advance(2 * time.Second)
	if _, fb := rec.counts(); fb != 1 {
		t.Fatal("no fallback after a 2 s grace")
	}
}

// Offers racing the real grace timer: callbacks never overlap, and the
// last word is the right one.
func TestFollowerConcurrent(t *testing.T) {
	var (
		mu     sync.Mutex
		inside bool
		bad    bool
	)
	enter := func() {
		mu.Lock()
		if inside {
			bad = true
		}
		inside = true
		mu.Unlock()
		time.Sleep(100 * time.Microsecond)
		mu.Lock()
		inside = false
		mu.Unlock()
	}
	f := NewFollower(FollowerOptions{Gateway: "g1", Grace: time.Millisecond, Logger: quietLogger(),
		Apply: func(AssignmentSet) { enter() }, Fallback: enter})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				f.Offer(set(uint64(i*4+w+1), float64(i)))
				if i%10 == 0 {
					time.Sleep(2 * time.Millisecond)
				}
			}
		}(w)
	}
	wg.Wait()
	waitUntil(t, "the fallback after the last contact", 10*time.Second, func() bool { return !f.State().Following })
	f.Stop() // no callback runs after this
	mu.Lock()
	defer mu.Unlock()
	if bad {
		t.Error("Apply and Fallback overlapped")
	}
}

// termSet is a set from the leader of term, at epoch.
func termSet(term, epoch uint64, gold float64) AssignmentSet {
	s := set(epoch, gold)
	s.Term = term
	return s
}

func TestFollowerIgnoresOlderTerms(t *testing.T) {
	clk := qos.NewFakeClock(time.Unix(1000, 0))
	var rec recorder
	f := NewFollower(FollowerOptions{Gateway: "g1", Apply: rec.apply, Fallback: rec.fallback, Clock: clk, Logger: quietLogger()})
	offer := func(s AssignmentSet) bool {
		t.Helper()
		got, err := f.Offer(s)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	gen := func(g, round uint64) uint64 { return g<<32 | round }

	if !offer(termSet(7, gen(100, 1), 100)) {
		t.Fatal("first set of term 7 not applied")
	}
	// The new leader (term 9) takes over; its sets win.
	if !offer(termSet(9, gen(101, 1), 200)) {
		t.Fatal("first set of term 9 not applied")
	}
	// The deposed leader, paused past its lease and resumed, still runs
	// rounds: its sets are newer in epoch than anything it sent before,
	// and even newer than the new leader's (a clock ahead), but from an
	// older term. Each is ignored and counted.
	for i, s := range []AssignmentSet{termSet(7, gen(100, 2), 50), termSet(7, gen(102, 1), 50)} {
		if offer(s) {
			t.Fatalf("stale-term set %d (term %d, epoch %s) applied", i, s.Term, FormatEpoch(s.Epoch))
		}
	}
	st := f.State()
	if st.Term != 9 || st.StaleTermSets != 2 || st.Epoch != gen(101, 1) || !st.Following {
		t.Fatalf("state after stale-term sets: %+v; want term 9, 2 ignored, epoch 101.1 in force", st)
	}
	if n, _ := rec.counts(); n != 2 || rec.applied[1] != gen(101, 1) {
		t.Fatalf("applied %v, want the two leaders' first sets only", rec.applied)
	}
	// A stale-term set is not contact: the grace period runs from the
	// new leader's last set.
	clk.Advance(DefaultGrace - time.Second)
	offer(termSet(7, gen(102, 2), 50))
	clk.Advance(2 * time.Second)
	if _, fb := rec.counts(); fb != 1 || f.State().Following {
		t.Fatalf("stale-term sets kept the follower from falling back: %d fallbacks, %+v", fb, f.State())
	}
	// The current term's next round is followed again; a set without a
	// term (a single controller) is ordered by epoch alone.
	if !offer(termSet(9, gen(101, 5), 200)) {
		t.Fatal("term 9 after the fallback not applied")
	}
	if offer(set(gen(101, 4), 10)) {
		t.Fatal("a term-less set with an older epoch applied")
	}
	if st := f.State(); st.Term != 9 || st.StaleTermSets != 3 {
		t.Fatalf("final state %+v", st)
	}
}
