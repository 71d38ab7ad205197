package qos

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

func schedInFlight(s *Scheduler) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

func TestAdmitFastPathAndDone(t *testing.T) {
	clk := NewFakeClock(time.Unix(0, 0))
	s := NewScheduler(Options{Clock: clk, MaxInFlight: 2})
	q, err := s.NewQueue("q", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d1, err := s.Admit(ctx, q, Read, 4096)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.Admit(ctx, q, Write, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.InFlight != 2 || st.AdmittedOps != 2 || st.AdmittedBytes != 4096+64<<10 || st.Depth != 0 {
		t.Fatalf("stats %+v", st)
	}
	// Third waits for a slot.
	got := make(chan error, 1)
	var d3 func()
	go func() {
		var err error
		d3, err = s.Admit(ctx, q, Read, 1)
		got <- err
	}()
	testwait.For(t, "third request to queue", func() bool { return q.Stats().Depth == 1 })
	d1()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	d2()
	d3()
	if st := q.Stats(); st.InFlight != 0 || st.AdmittedOps != 3 {
		t.Fatalf("stats %+v", st)
	}
	if n := schedInFlight(s); n != 0 {
		t.Fatalf("scheduler in flight %d", n)
	}
	defer func() {
		if recover() == nil {
			t.Error("calling done twice did not panic")
		}
	}()
	d3()
}

func TestAdmitErrors(t *testing.T) {
	clk := NewFakeClock(time.Unix(0, 0))
	s1 := NewScheduler(Options{Clock: clk})
	s2 := NewScheduler(Options{Clock: clk})
	q, _ := s1.NewQueue("q", Limits{})
	ctx := context.Background()
	if _, err := s2.Admit(ctx, q, Read, 1); !errors.Is(err, ErrForeignQueue) {
		t.Errorf("foreign queue: %v", err)
	}
	if _, err := s1.Admit(ctx, q, Class(9), 1); !errors.Is(err, ErrInvalidClass) {
		t.Errorf("bad class: %v", err)
	}
	if _, err := s1.Admit(ctx, q, Read, -1); !errors.Is(err, ErrInvalidBytes) {
		t.Errorf("negative bytes: %v", err)
	}
	if st := q.Stats(); st.AdmittedOps != 0 || st.InFlight != 0 {
		t.Errorf("refused requests were counted: %+v", st)
	}
}

// Close releases waiting requests (they are admitted and owe done), and a
// closed queue passes later requests straight through.
func TestCloseReleasesWaiters(t *testing.T) {
	clk := NewFakeClock(time.Unix(0, 0))
	s := NewScheduler(Options{Clock: clk})
	q, _ := s.NewQueue("q", Limits{IOPS: 1})
	ctx := context.Background()
	first, err := s.Admit(ctx, q, Read, 1)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	dones := make(chan func(), n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			d, err := s.Admit(ctx, q, Write, 4096)
			if err != nil {
				errs <- err
				return
			}
			dones <- d
		}()
	}
	testwait.For(t, "waiters", func() bool { return q.Stats().Depth == n })
	q.Close()
	for i := 0; i < n; i++ {
		select {
		case d := <-dones:
			defer d()
		case err := <-errs:
			t.Fatalf("released waiter failed: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not release waiters")
		}
	}
	st := q.Stats()
	if st.Depth != 0 || st.InFlight != n+1 || st.AdmittedOps != n+1 {
		t.Fatalf("after Close: %+v", st)
	}
	d, err := s.Admit(ctx, q, Read, 1)
	if err != nil {
		t.Fatal(err)
	}
	d()
	if st := q.Stats(); st.InFlight != n+1 || st.AdmittedOps != n+1 {
		t.Fatalf("a closed queue counted a pass-through request: %+v", st)
	}
	first()
	if err := q.SetLimits(Limits{}); !errors.Is(err, ErrClosed) {
		t.Errorf("SetLimits on a closed queue: %v", err)
	}
	q.Close() // idempotent
}

// Cancelling a waiting request takes it out of the queue and frees nothing
// it did not take: not another request's slot, not limit budget.
func TestCancelWaitingForSlot(t *testing.T) {
	clk := NewFakeClock(time.Unix(0, 0))
	s := NewScheduler(Options{Clock: clk, MaxInFlight: 1})
	a, _ := s.NewQueue("a", Limits{})
	b, _ := s.NewQueue("b", Limits{})
	doneB, err := s.Admit(context.Background(), b, Read, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		_, err := s.Admit(ctx, a, Read, 1)
		got <- err
	}()
	testwait.For(t, "a to wait", func() bool { return a.Stats().Depth == 1 })
	clk.Advance(3 * time.Second)
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Admit returned %v", err)
	}
	st := a.Stats()
	if st.Depth != 0 || st.InFlight != 0 || st.AdmittedOps != 0 || st.ThrottledTime != 3*time.Second {
		t.Fatalf("a after cancel: %+v", st)
	}
	if n := schedInFlight(s); n != 1 {
		t.Fatalf("scheduler in flight %d, want b's 1", n)
	}
	// b still holds the only slot: a new request on a must wait.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := s.Admit(ctx2, a, Read, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slot was freed by the cancel: %v", err)
	}
	doneB()
	d, err := s.Admit(context.Background(), a, Read, 1)
	if err != nil {
		t.Fatal(err)
	}
	d()
}

func TestCancelWaitingForLimit(t *testing.T) {
	clk := NewFakeClock(time.Unix(0, 0))
	s := NewScheduler(Options{Clock: clk})
	q, _ := s.NewQueue("q", Limits{IOPS: 10})
	ctx := context.Background()
	d, err := s.Admit(ctx, q, Read, 1) // takes the only token: level -1
	if err != nil {
		t.Fatal(err)
	}
	d()
	cctx, cancel := context.WithCancel(ctx)
	got := make(chan error, 1)
	go func() {
		_, err := s.Admit(cctx, q, Read, 1)
		got <- err
	}()
	testwait.For(t, "waiter", func() bool { return q.Stats().Depth == 1 })
	cancel()
	if err := <-got; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	s.mu.Lock()
	level := q.b[bIOPS].level
	s.mu.Unlock()
	if level != -1 {
		t.Fatalf("bucket level %v after a cancelled wait, want -1 (nothing taken)", level)
	}
	// The next request goes when the one token is back: 100 ms.
	go func() {
		d, err := s.Admit(ctx, q, Read, 1)
		if err == nil {
			d()
		}
		got <- err
	}()
	testwait.For(t, "second waiter", func() bool { return q.Stats().Depth == 1 })
	clk.Advance(99 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("admitted early: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	clk.Advance(time.Millisecond)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestFakeClock(t *testing.T) {
	start := time.Unix(100, 0)
	clk := NewFakeClock(start)
	var order []int
	clk.AfterFunc(30*time.Millisecond, func() { order = append(order, 3) })
	t1 := clk.AfterFunc(10*time.Millisecond, func() { order = append(order, 1) })
	clk.AfterFunc(20*time.Millisecond, func() {
		order = append(order, 2)
		if got := clk.Now().Sub(start); got != 20*time.Millisecond {
			t.Errorf("Now in callback = +%v", got)
		}
		clk.AfterFunc(5*time.Millisecond, func() { order = append(order, 25) })
	})
	stopped := clk.AfterFunc(time.Millisecond, func() { order = append(order, -1) })
	if !stopped.Stop() || stopped.Stop() {
		t.Error("Stop should succeed once")
	}
	clk.Advance(25 * time.Millisecond)
	if t1.Stop() {
		t.Error("Stop after firing should report false")
	}
	if want := []int{1, 2, 25}; len(order) != 3 || order[0] != 1 || order[1] != 2 || order[2] != 25 {
		t.Errorf("order %v, want %v", order, want)
	}
	if clk.Pending() != 1 || clk.Now() != start.Add(25*time.Millisecond) {
		t.Errorf("pending %d now %v", clk.Pending(), clk.Now())
	}
}

// Real clock: a 200 IOPS limit holds within ±10 % over 1 s.
func TestRealClockSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time test")
	}
	s := NewScheduler(Options{})
	q, _ := s.NewQueue("q", Limits{IOPS: 200})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var n atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Admit(ctx, q, Read, 4096)
				if err != nil {
					return
				}
				n.Add(1)
				d()
			}
		}()
	}
	wg.Wait()
	if got := n.Load(); got < 180 || got > 220 {
		t.Errorf("200 IOPS for 1 s admitted %d", got)
	}
	if st := q.Stats(); st.InFlight != 0 || st.Depth != 0 {
		t.Errorf("after the run: %+v", st)
	}
}

func BenchmarkAdmitUnthrottled(b *testing.B) {
	for _, bc := range []struct {
		name string
		l    Limits
	}{
		{"NoLimits", Limits{}},
		{"HighLimits", Limits{IOPS: 1e12, BPS: 1e15, ReservationIOPS: 1}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewScheduler(Options{})
			q, _ := s.NewQueue("q", bc.l)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				d, err := s.Admit(ctx, q, Read, 4096)
				if err != nil {
					b.Fatal(err)
				}
				d()
			}
		})
		b.Run(bc.name+"Parallel", func(b *testing.B) {
			s := NewScheduler(Options{})
			q, _ := s.NewQueue("q", bc.l)
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d, err := s.Admit(ctx, q, Read, 4096)
					if err != nil {
						b.Error(err)
						return
					}
					d()
				}
			})
		})
	}
}

// A saturated scheduler: every Admit waits for a slot (the slow path).
func BenchmarkAdmitContended(b *testing.B) {
	s := NewScheduler(Options{MaxInFlight: 4})
	qs := make([]*Queue, 4)
	for i := range qs {
		qs[i], _ = s.NewQueue("q", Limits{Weight: float64(i + 1)})
	}
	ctx := context.Background()
	var i atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		q := qs[i.Add(1)%int64(len(qs))]
		for pb.Next() {
			d, err := s.Admit(ctx, q, Read, 4096)
			if err != nil {
				b.Error(err)
				return
			}
			d()
		}
	})
}

// Stress on the real clock: concurrent Admit with timeouts, SetLimits and a
// Close; afterwards every count must be back to zero and slots never
// oversubscribed (no Close-released request is in this mix until the end).
func TestStressRealClock(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time test")
	}
	const slots = 4
	s := NewScheduler(Options{MaxInFlight: slots})
	lims := []Limits{
		{IOPS: 2000},
		{ReadBPS: 8 << 20, ReservationIOPS: 100},
		{Weight: 3},
		{WriteIOPS: 500, Priority: 1},
	}
	qs := make([]*Queue, len(lims))
	for i, l := range lims {
		qs[i], _ = s.NewQueue("q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var over atomic.Bool
	var inDevice atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				q := qs[(g+i)%len(qs)]
				rctx, rcancel := context.WithTimeout(ctx, time.Duration(i%5)*time.Millisecond)
				d, err := s.Admit(rctx, q, Class(i%3), int64(i%9)*4096)
				rcancel()
				if err != nil {
					continue
				}
				if inDevice.Add(1) > slots {
					over.Store(true)
				}
				time.Sleep(50 * time.Microsecond)
				inDevice.Add(-1)
				d()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			_ = qs[0].SetLimits(Limits{IOPS: float64(500 + 500*(i%4))})
			time.Sleep(7 * time.Millisecond)
		}
	}()
	wg.Wait()
	if over.Load() {
		t.Error("more requests in flight than slots")
	}
	var total uint64
	for _, q := range qs {
		st := q.Stats()
		if st.Depth != 0 || st.InFlight != 0 {
			t.Errorf("queue left with %+v", st)
		}
		total += st.AdmittedOps
		q.Close()
	}
	if total < 100 {
		t.Errorf("only %d requests admitted: the stress did not run", total)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inFlight != 0 || s.nWaiting != 0 || len(s.active) != 0 || len(s.queues) != 0 {
		t.Errorf("scheduler left with inFlight %d waiting %d active %d queues %d",
			s.inFlight, s.nWaiting, len(s.active), len(s.queues))
	}
}
