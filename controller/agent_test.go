package controller

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// controllerProc is a controller serving on a loopback address, as the
// daemon runs it.
type controllerProc struct {
	s      *Server
	hs     *http.Server
	cancel context.CancelFunc
	done   chan struct{}
}

func startController(t *testing.T, addr, dir string) *controllerProc {
	t.Helper()
	s, err := Open(context.Background(), Options{DataDir: dir, Interval: 50 * time.Millisecond,
		ReportTimeout: 500 * time.Millisecond, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	for i := 0; ; i++ { // the old listener's port may take a moment to free
		if l, err = net.Listen("tcp", addr); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &controllerProc{s: s, hs: &http.Server{Handler: s.Handler()}, cancel: cancel, done: make(chan struct{})}
	go p.hs.Serve(l)
	go func() {
		defer close(p.done)
		s.Run(ctx)
	}()
	return p
}

func (p *controllerProc) kill() {
	p.cancel()
	<-p.done
	p.hs.Close()
	p.s.Close()
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A gateway's agent follows the controller, falls back when it dies, and
// follows the restarted controller (which recovered its SLOs) again.
func TestAgentFollowsControllerAcrossRestart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	ctrl := startController(t, addr, dir)
	if _, err := ctrl.s.SetSLO(context.Background(), SLO{Tenant: "gold", Min: Rates{ReadBPS: 60 * mb}}); err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		sets      []AssignmentSet
		fallbacks []time.Time
	)
	client, err := NewClient("http://"+addr, "")
	if err != nil {
		t.Fatal(err)
	}
	agent, err := NewAgent(AgentOptions{
		Client:         client,
		Registration:   GatewayRegistration{ID: "g1"},
		Report:         func() Report { return pressing("ignored", 100*mb, "gold", "bronze") },
		Apply:          func(s AssignmentSet) { mu.Lock(); sets = append(sets, s); mu.Unlock() },
		Fallback:       func() { mu.Lock(); fallbacks = append(fallbacks, time.Now()); mu.Unlock() },
		ReportInterval: 50 * time.Millisecond,
		Grace:          400 * time.Millisecond,
		PollWait:       200 * time.Millisecond,
		Logger:         quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		agent.Run(ctx)
	}()
	defer func() {
		cancel()
		<-agentDone
	}()
	applied := func() int { mu.Lock(); defer mu.Unlock(); return len(sets) }
	waitUntil(t, "the first assignment set", 5*time.Second, func() bool { return applied() > 0 })
	mu.Lock()
	first := sets[0]
	mu.Unlock()
	if g := first.Assignments["gold"]; g.ReservationBPS != 60*mb || g.ReadBPS < 60*mb {
		t.Errorf("gold %+v", g)
	}
	waitUntil(t, "the controller to see the enforced epoch", 5*time.Second, func() bool {
		st := ctrl.s.Status()
		return len(st.Gateways) == 1 && st.Gateways[0].Epoch != 0
	})

	// Kill the controller: assignments stay for the grace period, then
	// fallback.
	killed := time.Now()
	ctrl.kill()
	fellBack := func() int { mu.Lock(); defer mu.Unlock(); return len(fallbacks) }
	waitUntil(t, "fallback", 5*time.Second, func() bool { return fellBack() == 1 })
	mu.Lock()
	held := fallbacks[0].Sub(killed)
	lastEpoch := sets[len(sets)-1].Epoch
	n := len(sets)
	mu.Unlock()
	if held < 300*time.Millisecond {
		t.Errorf("fell back %v after the controller died, grace is 400ms", held)
	}
	if agent.Follower().State().Following {
		t.Error("still following after fallback")
	}

	// Restart it on the same address and data: the SLO is back, the
	// gateway is still registered, and assignments resume with newer
	// epochs.
	ctrl = startController(t, addr, dir)
	defer ctrl.kill()
	waitUntil(t, "assignments to resume", 10*time.Second, func() bool { return applied() > n })
	mu.Lock()
	resumed := sets[n]
	mu.Unlock()
	if resumed.Epoch <= lastEpoch {
		t.Errorf("resumed epoch %x not above %x", resumed.Epoch, lastEpoch)
	}
	if g := resumed.Assignments["gold"]; g.ReservationBPS != 60*mb {
		t.Errorf("gold after restart %+v", g)
	}
	if fellBack() != 1 || !agent.Follower().State().Following {
		t.Errorf("fallbacks %d, state %+v", fellBack(), agent.Follower().State())
	}
}

func TestNewAgentChecks(t *testing.T) {
	c, _ := NewClient("http://127.0.0.1:1", "")
	if _, err := NewAgent(AgentOptions{Client: c, Registration: GatewayRegistration{ID: "bad id"}, Report: func() Report { return Report{} }}); err == nil {
		t.Error("bad gateway id accepted")
	}
	if _, err := NewAgent(AgentOptions{Registration: GatewayRegistration{ID: "g1"}}); err == nil {
		t.Error("missing client accepted")
	}
	if _, err := NewClient("ftp://x", ""); err == nil {
		t.Error("ftp URL accepted")
	}
}
