package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// haFollower is what the test reads of a gateway's GET /v1/controller.
type haFollower struct {
	Leader        string `json:"leader"`
	Following     bool   `json:"following"`
	Epoch         uint64 `json:"epoch"`
	Term          uint64 `json:"term"`
	StaleTermSets uint64 `json:"stale_term_sets"`
	// Capacity is what the gateway estimates it can serve ("read_bw": B/s).
	Capacity map[string]float64 `json:"capacity"`
}

// haStatus is what the test reads of `sluice cluster status --json`.
type haStatus struct {
	Leader   string `json:"leader"`
	Replica  string `json:"replica"`
	Term     uint64 `json:"term"`
	Replicas []struct {
		URL    string `json:"url"`
		Leader bool   `json:"leader"`
	} `json:"replicas"`
	Etcd *struct {
		Healthy   bool `json:"healthy"`
		Endpoints []struct {
			Endpoint string `json:"endpoint"`
			Healthy  bool   `json:"healthy"`
		} `json:"endpoints"`
	} `json:"etcd"`
	Gateways []struct {
		ID         string    `json:"id"`
		Live       bool      `json:"live"`
		LastReport time.Time `json:"last_report"`
		Epoch      uint64    `json:"epoch"`
	} `json:"gateways"`
}

// haSample is one reading of a gateway's follower state.
type haSample struct {
	at time.Time
	f  haFollower
}

// haCluster is three controller replicas on etcd and gateways given every
// replica's URL.
type haCluster struct {
	t          *testing.T
	etcdLeader func() string
	tok        string
	urls       []string
	all        string // every URL, comma-separated
	byURL      map[string]*ctl
	gws        []*gw

	mu      sync.Mutex
	samples [][]haSample
	stop    chan struct{}
	wg      sync.WaitGroup
}

// haOptions shape newHACluster's cluster.
type haOptions struct {
	endpoints string   // etcd's client URLs, comma-separated
	gateways  int      // how many gateways
	ctlFlags  []string // more flags for each replica
	gwFlags   []string // more flags for each gateway
}

// startHACluster: three replicas on a one-member etcd (in this process),
// two gateways, an SLO for gold.
func startHACluster(t *testing.T) *haCluster {
	h := newHACluster(t, haOptions{endpoints: startEtcd(t), gateways: 2, ctlFlags: []string{"--interval", "200ms", "--report-timeout", "3s"}})
	h.gws[0].mustSluice("slo", "set", "gold", "--min-read-bw", "10MiB", "--controller", h.all, "--token-file", h.tok)
	return h
}

// newHACluster starts three replicas on o.endpoints, the first one
// leading, and o.gateways gateways (gw1, gw2, ...) given the replicas'
// URLs, the leader last: they must follow the followers' answers to
// find it.
func newHACluster(t *testing.T, o haOptions) *haCluster {
	h := &haCluster{t: t, etcdLeader: etcdLeaderOf(t, o.endpoints), tok: filepath.Join(t.TempDir(), "token"), byURL: map[string]*ctl{}}
	must(t, os.WriteFile(h.tok, []byte(strings.Repeat("h", 32)+"\n"), 0o600))
	flags := append([]string{"--etcd-endpoints", o.endpoints, "--token-file", h.tok}, o.ctlFlags...)
	// The first replica leads (it campaigns alone); the others follow.
	for i := 0; i < 3; i++ {
		c := startController(t, t.TempDir(), freeLoopbackAddr(t), flags...)
		h.urls, h.byURL[c.url()] = append(h.urls, c.url()), c
		if i == 0 {
			testwait.For(t, "the first replica leads", func() bool { return h.etcdLeader() == c.url() })
		}
	}
	h.all = strings.Join(h.urls, ",")
	rev := strings.Join([]string{h.urls[2], h.urls[1], h.urls[0]}, ",")
	for i := 1; i <= o.gateways; i++ {
		args := append([]string{"--controller", rev, "--controller-token-file", h.tok, "--gateway-id", fmt.Sprintf("gw%d", i)}, o.gwFlags...)
		h.gws = append(h.gws, startGateway(t, t.TempDir(), args...))
	}
	return h
}

func (h *haCluster) state(g *gw) (haFollower, error) {
	var f haFollower
	return f, g.controllerJSON(&f)
}

// status runs `sluice cluster status --json` on g's API socket.
func (h *haCluster) status(g *gw, args ...string) (haStatus, error) {
	var st haStatus
	out, code := g.sluice(append([]string{"cluster", "status", "--json", "--token-file", h.tok}, args...)...)
	if code != 0 {
		return st, fmt.Errorf("cluster status: exit %d: %s", code, out)
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// sample reads every gateway's follower state every 50 ms until
// stopSampling: the evidence that none falls back.
func (h *haCluster) sample() {
	h.samples, h.stop = make([][]haSample, len(h.gws)), make(chan struct{})
	for i, g := range h.gws {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				if f, err := h.state(g); err == nil {
					h.mu.Lock()
					h.samples[i] = append(h.samples[i], haSample{time.Now(), f})
					h.mu.Unlock()
				}
				select {
				case <-h.stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	h.t.Cleanup(h.stopSampling)
}

func (h *haCluster) stopSampling() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
		h.wg.Wait()
	}
}

// failover waits for a replica other than old to lead in etcd, then for
// every gateway to follow it in a term above minTerm; it returns the new
// leader and logs the times since t0, failing above the goals.
func (h *haCluster) failover(what string, t0 time.Time, old string, minTerm uint64, refindGoal time.Duration) string {
	t := h.t
	t.Helper()
	var elected time.Duration
	leader := ""
	testwait.For(t, what+": another replica leads in etcd", func() bool {
		leader = h.etcdLeader()
		elected = time.Since(t0)
		return leader != "" && leader != old
	})
	if h.byURL[leader] == nil || leader == old {
		t.Fatalf("%s: new leader %q is not one of the surviving replicas %v", what, leader, h.urls)
	}
	refound := make([]time.Duration, len(h.gws))
	var f haFollower
	for i, g := range h.gws {
		testwait.For(t, fmt.Sprintf("%s: gw%d follows the new leader's term", what, i+1), func() bool {
			var err error
			f, err = h.state(g)
			refound[i] = time.Since(t0)
			return err == nil && f.Following && f.Leader == leader && f.Term > minTerm
		})
	}
	t.Logf("after %s: %s elected in %v (goal 3 s); the gateways follow its term %d (was %d) after %v",
		what, leader, elected, f.Term, minTerm, refound)
	if elected > 3*time.Second {
		t.Errorf("%s: election took %v, goal 3 s (lease 2 s)", what, elected)
	}
	for i, d := range refound {
		if d > refindGoal {
			t.Errorf("%s: gw%d took %v to follow the new leader, more than %v", what, i+1, d, refindGoal)
		}
	}
	return leader
}

// checkSamples waits until the samplers saw every gateway at term, stops
// them, and fails if any sample or log shows a fallback to static rules.
func (h *haCluster) checkSamples(t0 time.Time, term uint64) {
	t := h.t
	testwait.For(t, "the samplers see the final term", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, ss := range h.samples {
			if len(ss) == 0 || ss[len(ss)-1].f.Term < term {
				return false
			}
		}
		return true
	})
	h.stopSampling()
	for i, ss := range h.samples {
		var seen []string // the transitions, for the log
		prev := haFollower{}
		for _, s := range ss {
			if !s.f.Following {
				t.Errorf("gw%d fell back to its static rules %v after the sampling started: %+v", i+1, s.at.Sub(t0), s.f)
				break
			}
			if s.f.Leader != prev.Leader || s.f.Term != prev.Term {
				seen = append(seen, fmt.Sprintf("%.1fs: %s term %d", s.at.Sub(t0).Seconds(), s.f.Leader, s.f.Term))
			}
			prev = s.f
		}
		t.Logf("gw%d: %d status samples, all following; %d stale-term sets ignored; transitions: %s",
			i+1, len(ss), prev.StaleTermSets, strings.Join(seen, ", "))
		if log, err := os.ReadFile(filepath.Join(h.gws[i].dir, "gateway.log")); err == nil && strings.Contains(string(log), "falling back to local rules") {
			t.Errorf("gw%d logged a fallback:\n%s", i+1, h.gws[i].logTail())
		}
	}
}

// TestControllerReplicasGatewaysFollowLeader: three `sluice controller`
// replicas on one etcd, two gateways given all three URLs. The gateways
// find the leader and follow its term; SIGKILL the leader: a new one is
// elected (goal 3 s), the gateways find it and follow its newer term
// within a few seconds, never fall back to their static rules on the way
// (sampled from their status all along, and their logs), and `sluice
// cluster status --json` names the new leader. Then pause the new leader
// (SIGSTOP) past its lease: the gateways find the third replica by
// timeout, and the paused one, resumed, follows.
func TestControllerReplicasGatewaysFollowLeader(t *testing.T) {
	h := startHACluster(t)
	first := h.urls[0]
	var before haFollower
	for i, g := range h.gws {
		testwait.For(t, fmt.Sprintf("gw%d follows the first leader", i+1), func() bool {
			f, err := h.state(g)
			before = f
			return err == nil && f.Following && f.Term != 0 && f.Leader == first
		})
	}
	// The status, asked through the gateway (its --controller list), is
	// the leader's.
	var st haStatus
	testwait.For(t, "the status shows both gateways live at the leader", func() bool {
		var err error
		st, err = h.status(h.gws[0])
		return err == nil && st.Leader == first && st.Replica == first && len(st.Gateways) == 2 && st.Gateways[0].Live && st.Gateways[1].Live
	})
	if len(st.Replicas) != 3 || st.Replicas[0].URL != first || !st.Replicas[0].Leader || st.Etcd == nil || !st.Etcd.Healthy || st.Term != before.Term {
		t.Fatalf("status before the kill: %+v; want 3 replicas, %s leading in term %d, etcd healthy", st, first, before.Term)
	}
	t.Logf("before the kill: leader %s term %d, gateways at epoch %d.%d", st.Leader, st.Term, before.Epoch>>32, before.Epoch&(1<<32-1))

	h.sample()
	t0 := time.Now()
	h.byURL[first].kill()
	// Election, the gateway's next report and poll, the new leader's
	// warm-up (2 rounds) and first round: well inside the 10 s grace.
	second := h.failover("SIGKILL of the leader", t0, first, before.Term, 8*time.Second)

	// cluster status --json names the new leader, asked with every URL
	// (the dead one first) and through the gateway's own list.
	for _, args := range [][]string{{"--controller", h.all}, nil} {
		testwait.For(t, fmt.Sprintf("cluster status %v names the new leader with both gateways live", args), func() bool {
			var err error
			st, err = h.status(h.gws[1], args...)
			live := 0
			for _, g := range st.Gateways {
				if g.Live && g.Epoch>>32 > before.Epoch>>32 {
					live++
				}
			}
			return err == nil && st.Leader == second && st.Replica == second && live == 2
		})
		if len(st.Replicas) != 2 || st.Replicas[0].URL != second || st.Term <= before.Term || st.Etcd == nil || !st.Etcd.Healthy {
			t.Errorf("status after the failover: %+v; want 2 replicas led by %s in a term above %d, etcd healthy", st, second, before.Term)
		}
	}

	// Pause the new leader (SIGSTOP) past its lease: its connections stay
	// open but nothing answers, so the gateways find the third replica by
	// timeout (the report to the paused one times out after 3 s). Then
	// resume it: it learns it lost, and the gateways stay with the third.
	paused := h.byURL[second]
	must(t, paused.cmd.Process.Signal(syscall.SIGSTOP))
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			paused.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	mid, err := h.state(h.gws[0])
	must(t, err)
	third := h.failover("SIGSTOP of the leader", time.Now(), second, mid.Term, 9*time.Second)
	resume()
	testwait.For(t, "the resumed replica knows it no longer leads", func() bool {
		b, err := os.ReadFile(filepath.Join(paused.dir, "controller.log"))
		return err == nil && strings.Contains(string(b), "no longer the leader")
	})
	testwait.For(t, "cluster status names the third replica, the resumed one a follower", func() bool {
		st, err := h.status(h.gws[0], "--controller", h.all)
		return err == nil && st.Leader == third && len(st.Replicas) == 2 && st.Replicas[0].URL == third && st.Replicas[1].URL == second
	})
	final, err := h.state(h.gws[0])
	must(t, err)
	h.checkSamples(t0, final.Term)
}
