package qos

import (
	"math"
	"testing"
	"time"
)

// sim drives a Scheduler on a FakeClock with closed-loop clients and a
// device that completes each admitted request a fixed service time after it
// was dispatched. It is deterministic: everything runs on the test's
// goroutine, one clock event at a time.
type sim struct {
	t       testing.TB
	clk     *FakeClock
	s       *Scheduler
	service time.Duration
	clients []*simClient
}

type simClient struct {
	q        *Queue
	class    Class
	sizes    []int64 // cycled through
	depth    int     // requests kept outstanding (waiting + on the device)
	pending  []*waiter
	onDevice int
	n        int
	stopped  bool
}

// newSim returns a sim whose device has maxInFlight slots, each serving one
// request per service time.
func newSim(t testing.TB, maxInFlight int, service time.Duration) *sim {
	clk := NewFakeClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	return &sim{
		t:       t,
		clk:     clk,
		s:       NewScheduler(Options{Clock: clk, MaxInFlight: maxInFlight}),
		service: service,
	}
}

func (m *sim) queue(name string, l Limits) *Queue {
	m.t.Helper()
	q, err := m.s.NewQueue(name, l)
	if err != nil {
		m.t.Fatal(err)
	}
	return q
}

// client adds a closed-loop client on q that keeps depth requests of class
// c outstanding, with sizes cycled from sizes (default 4 KiB).
func (m *sim) client(q *Queue, c Class, depth int, sizes ...int64) *simClient {
	if len(sizes) == 0 {
		sizes = []int64{4096}
	}
	cl := &simClient{q: q, class: c, sizes: sizes, depth: depth}
	m.clients = append(m.clients, cl)
	return cl
}

// run advances the simulation by d.
func (m *sim) run(d time.Duration) {
	end := m.clk.Now().Add(d)
	m.poll()
	for m.clk.Step(end) {
		m.poll()
	}
}

// poll starts device work for requests dispatched since the last event and
// tops clients up to their depth.
func (m *sim) poll() {
	for _, c := range m.clients {
		m.s.mu.Lock()
		var started []*waiter
		keep := c.pending[:0]
		for _, w := range c.pending {
			if w.dispatched {
				started = append(started, w)
			} else {
				keep = append(keep, w)
			}
		}
		c.pending = keep
		m.s.mu.Unlock()
		for _, w := range started {
			<-w.ready
			m.start(c, m.s.epoch.Add(time.Duration(math.Round(w.at*1e9))), true)
		}
		for !c.stopped && len(c.pending)+c.onDevice < c.depth {
			size := c.sizes[c.n%len(c.sizes)]
			c.n++
			w, closed := m.s.submit(c.q, c.class, size)
			switch {
			case closed:
				m.start(c, m.clk.Now(), false)
			case w == nil:
				m.start(c, m.clk.Now(), true)
			default:
				c.pending = append(c.pending, w)
			}
		}
	}
}

func (m *sim) start(c *simClient, at time.Time, owesDone bool) {
	c.onDevice++
	m.clk.AfterFunc(at.Add(m.service).Sub(m.clk.Now()), func() {
		c.onDevice--
		if owesDone {
			c.q.doneFns[c.class]()
		}
	})
}

// ops returns the admitted op count of q.
func ops(q *Queue) float64 { return float64(q.Stats().AdmittedOps) }

func within(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.1f, want %.1f ± %.1f", what, got, want, tol)
	}
}
