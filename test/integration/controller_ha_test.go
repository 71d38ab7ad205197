package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	ep := startEtcd(t)
	etcdLeader := etcdLeaderOf(t, ep)
	tok := filepath.Join(t.TempDir(), "token")
	must(t, os.WriteFile(tok, []byte(strings.Repeat("h", 32)+"\n"), 0o600))
	flags := []string{"--etcd-endpoints", ep, "--token-file", tok, "--interval", "200ms", "--report-timeout", "3s"}

	// The first replica leads (it campaigns alone); the others follow.
	var ctls []*ctl
	var urls []string
	byURL := map[string]*ctl{}
	for i := 0; i < 3; i++ {
		c := startController(t, t.TempDir(), freeLoopbackAddr(t), flags...)
		ctls, urls = append(ctls, c), append(urls, c.url())
		byURL[c.url()] = c
		if i == 0 {
			testwait.For(t, "the first replica leads", func() bool { return etcdLeader() == c.url() })
		}
	}
	all := strings.Join(urls, ",")
	var gws []*gw
	for i := 1; i <= 2; i++ {
		// The leader last: the gateways must follow the followers'
		// answers to find it.
		rev := strings.Join([]string{urls[2], urls[1], urls[0]}, ",")
		gws = append(gws, startGateway(t, t.TempDir(), "--controller", rev, "--controller-token-file", tok, "--gateway-id", fmt.Sprintf("gw%d", i)))
	}
	gws[0].mustSluice("slo", "set", "gold", "--min-read-bw", "10MiB", "--controller", all, "--token-file", tok)

	state := func(g *gw) (haFollower, error) {
		var f haFollower
		return f, g.controllerJSON(&f)
	}
	status := func(g *gw, args ...string) (haStatus, error) {
		var st haStatus
		out, code := g.sluice(append([]string{"cluster", "status", "--json", "--token-file", tok}, args...)...)
		if code != 0 {
			return st, fmt.Errorf("cluster status: exit %d: %s", code, out)
		}
		return st, json.Unmarshal([]byte(out), &st)
	}

	var before []haFollower
	for i, g := range gws {
		testwait.For(t, fmt.Sprintf("gw%d follows the first leader", i+1), func() bool {
			f, err := state(g)
			return err == nil && f.Following && f.Term != 0 && f.Leader == urls[0]
		})
		f, _ := state(g)
		before = append(before, f)
	}
	if before[0].Term != before[1].Term {
		t.Fatalf("the gateways follow different terms: %+v", before)
	}
	// The status, asked through the gateway (its --controller list), is
	// the leader's.
	var st0 haStatus
	testwait.For(t, "the status shows both gateways live at the leader", func() bool {
		st, err := status(gws[0])
		st0 = st
		return err == nil && st.Leader == urls[0] && st.Replica == urls[0] && len(st.Gateways) == 2 && st.Gateways[0].Live && st.Gateways[1].Live
	})
	if len(st0.Replicas) != 3 || st0.Replicas[0].URL != urls[0] || !st0.Replicas[0].Leader || st0.Etcd == nil || !st0.Etcd.Healthy ||
		st0.Term != before[0].Term {
		t.Fatalf("status before the kill: %+v; want 3 replicas, %s leading in term %d, etcd healthy", st0, urls[0], before[0].Term)
	}
	t.Logf("before the kill: leader %s term %d, gateways at epoch %d.%d", st0.Leader, st0.Term, before[0].Epoch>>32, before[0].Epoch&(1<<32-1))

	// Sample both gateways' follower state until the end: the evidence
	// that neither falls back during the failover.
	var mu sync.Mutex
	samples := make([][]haSample, len(gws))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, g := range gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				if f, err := state(g); err == nil {
					mu.Lock()
					samples[i] = append(samples[i], haSample{time.Now(), f})
					mu.Unlock()
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	stopSampling := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	defer stopSampling()

	t0 := time.Now()
	ctls[0].kill()
	var elected time.Duration
	newLeader := ""
	testwait.For(t, "another replica leads in etcd", func() bool {
		newLeader = etcdLeader()
		elected = time.Since(t0)
		return newLeader != "" && newLeader != urls[0]
	})
	if !slices.Contains(urls[1:], newLeader) {
		t.Fatalf("new leader %q is not one of the surviving replicas %v", newLeader, urls[1:])
	}
	refound := make([]time.Duration, len(gws))
	for i, g := range gws {
		testwait.For(t, fmt.Sprintf("gw%d follows the new leader's term", i+1), func() bool {
			f, err := state(g)
			refound[i] = time.Since(t0)
			return err == nil && f.Following && f.Leader == newLeader && f.Term > before[i].Term && f.Epoch>>32 > before[i].Epoch>>32
		})
	}
	t.Logf("after SIGKILL of the leader: %s elected in %v (goal 3 s); gw1 follows its term after %v, gw2 after %v",
		newLeader, elected, refound[0], refound[1])
	if elected > 3*time.Second {
		t.Errorf("election took %v after the kill, goal 3 s (lease 2 s)", elected)
	}
	for i, d := range refound {
		// Election, then the new leader's warm-up (2 rounds) and first
		// round, then the gateway's next poll: well inside the 10 s grace.
		if d > 8*time.Second {
			t.Errorf("gw%d took %v to follow the new leader", i+1, d)
		}
	}

	// cluster status --json names the new leader, asked with every URL
	// (the dead one first) and through the gateway's own list.
	for _, args := range [][]string{{"--controller", all}, nil} {
		var st haStatus
		testwait.For(t, fmt.Sprintf("cluster status %v names the new leader with both gateways live", args), func() bool {
			var err error
			st, err = status(gws[1], args...)
			live := 0
			for _, g := range st.Gateways {
				if g.Live && g.Epoch>>32 > before[0].Epoch>>32 {
					live++
				}
			}
			return err == nil && st.Leader == newLeader && st.Replica == newLeader && live == 2
		})
		if len(st.Replicas) != 2 || st.Replicas[0].URL != newLeader || st.Term <= before[0].Term || st.Etcd == nil || !st.Etcd.Healthy {
			t.Errorf("status after the failover: %+v; want 2 replicas led by %s in a term above %d, etcd healthy", st, newLeader, before[0].Term)
		}
	}

	// Pause the new leader (SIGSTOP) past its lease: its connections stay
	// open but nothing answers, so the gateways find the third replica by
	// timeout. Then resume it: it learns it lost, and the gateways stay
	// with the third.
	paused := byURL[newLeader]
	must(t, paused.cmd.Process.Signal(syscall.SIGSTOP))
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			paused.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	t1 := time.Now()
	third := ""
	testwait.For(t, "the third replica leads in etcd", func() bool {
		third = etcdLeader()
		elected = time.Since(t1)
		return third != "" && third != newLeader
	})
	mid, _ := state(gws[0])
	for i, g := range gws {
		testwait.For(t, fmt.Sprintf("gw%d follows the third replica's term", i+1), func() bool {
			f, err := state(g)
			refound[i] = time.Since(t1)
			return err == nil && f.Following && f.Leader == third && f.Term > mid.Term
		})
	}
	last, _ := state(gws[0])
	t.Logf("after SIGSTOP of the leader: %s elected in %v; gw1 follows its term (%d, after %d) after %v, gw2 after %v",
		third, elected, last.Term, mid.Term, refound[0], refound[1])
	if elected > 3*time.Second {
		t.Errorf("election took %v after the pause, goal 3 s (lease 2 s)", elected)
	}
	for i, d := range refound {
		// Election, the report to the paused leader timing out (3 s),
		// the warm-up and a round: inside the 10 s grace.
		if d > 9*time.Second {
			t.Errorf("gw%d took %v to follow the third replica", i+1, d)
		}
	}
	resume()
	testwait.For(t, "the resumed replica knows it no longer leads", func() bool {
		b, err := os.ReadFile(filepath.Join(paused.dir, "controller.log"))
		return err == nil && strings.Contains(string(b), "no longer the leader")
	})
	testwait.For(t, "cluster status names the third replica, the resumed one a follower", func() bool {
		st, err := status(gws[0], "--controller", all)
		return err == nil && st.Leader == third && len(st.Replicas) == 2 && st.Replicas[0].URL == third && st.Replicas[1].URL == newLeader
	})

	// Sample until both gateways were seen at the third replica's term,
	// so that the samples cover the whole of both failovers.
	final, _ := state(gws[0])
	testwait.For(t, "the samplers see the final term", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ss := range samples {
			if len(ss) == 0 || ss[len(ss)-1].f.Term < final.Term {
				return false
			}
		}
		return true
	})
	stopSampling()
	for i, ss := range samples {
		// The transitions each gateway went through, for the log.
		var seen []string
		prev := haFollower{}
		for _, s := range ss {
			if !s.f.Following {
				t.Errorf("gw%d fell back to its static rules %v after the kill: %+v", i+1, s.at.Sub(t0), s.f)
				break
			}
			if s.f.Leader != prev.Leader || s.f.Term != prev.Term {
				seen = append(seen, fmt.Sprintf("%.1fs: %s term %d", s.at.Sub(t0).Seconds(), s.f.Leader, s.f.Term))
			}
			prev = s.f
		}
		t.Logf("gw%d: %d status samples, all following; %d stale-term sets ignored; transitions: %s",
			i+1, len(ss), prev.StaleTermSets, strings.Join(seen, ", "))
		if log, err := os.ReadFile(filepath.Join(gws[i].dir, "gateway.log")); err == nil && strings.Contains(string(log), "falling back to local rules") {
			t.Errorf("gw%d logged a fallback:\n%s", i+1, gws[i].logTail())
		}
	}
}
