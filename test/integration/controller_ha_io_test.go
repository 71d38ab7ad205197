package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/internal/etcdtest"
	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// The failover test under IO: TestClusterSLOs's placement at half its
// rates (less CPU on a shared machine), on three controller replicas and
// a three-member etcd.
const (
	// haCapIOPS is each gateway's --qos-capacity-iops: 2560 8 KiB cost
	// units/s, 20 MiB/s of reads.
	haCapIOPS = 2560
	// haBS is fio's block size.
	haBS = 64 << 10
	// haStatic is each tenant's static read limit on each gateway.
	haStatic = 3 << 20
	haLogAvg = 500 * time.Millisecond
	// haSettle is how long after a failover (every gateway follows the
	// new leader) the next window starts; haWindow is a window's length.
	haSettle = 2 * time.Second
	haWindow = 5 * time.Second
)

// haTenants: minimums 45 of 60 MiB/s, 5 MiB/s of spare each: gold 29,
// silver 20, bronze 11.
var haTenants = []clusterTenant{{"gold", 24 << 20, []int{0, 1}}, {"silver", 15 << 20, []int{0, 1, 2}}, {"bronze", 6 << 20, []int{1, 2}}}

// haIO is the cluster under IO and what the test has seen of it.
type haIO struct {
	*haCluster
	etcd    *etcdtest.Cluster
	logDir  string   // fio's logs
	windows []window // where the SLOs are checked
}

// TestControllerHAEtcdClusterUnderIO is issue 23's test. A 3-member etcd
// (each member its own process), three controller replicas given every
// member's URL, three gateways given every replica's URL, fio for three
// tenants with minimums. Then: SIGKILL the leader; SIGSTOP the next one
// past its lease (a write sent to it meanwhile must not land) and resume
// it; SIGKILL the etcd member that leads the raft group. Each time a
// replica leads and the gateways follow it (the times are logged; the
// goal is 3 s), no gateway falls back to its static rules (sampled every
// 50 ms, and their logs), and in a 5 s window after each failover every
// tenant gets its minimum plus an equal share of the spare ±10 % (from
// fio's logs). Then every process is stopped and restarted (etcd from its
// data directories): the SLOs are still there and the gateways follow
// the new leader.
func TestControllerHAEtcdClusterUnderIO(t *testing.T) {
	testtool.Need(t, "fio")
	began := time.Now()
	h := startHAIO(t)
	setUp := time.Since(began)
	h.logDir = t.TempDir()
	stopFio := startTenantsFio(t, h.gws, h.logDir)
	h.sample()
	t0 := time.Now()
	// Warm-up: the first capacity measurements and rounds. The steady
	// window starts once the gateways' estimates cover the minimums (a
	// second or two on a quiet machine; beside stress-ng the estimates
	// climb for tens of seconds) or after 90 s, when it is judged as a
	// window the machine is too busy for.
	covered := testwait.Poll(90*time.Second, func() bool { return h.capacityNow() >= haMinimums() })
	t.Logf("the gateways' estimates cover the minimums after %v (%v, %.1f MiB/s)", time.Since(t0).Round(100*time.Millisecond), covered, h.capacityNow()/(1<<20))
	from := time.Now().Add(time.Second)
	h.windows = append(h.windows, window{"steady", from, from.Add(haWindow)})
	h.through(h.windows[0])

	first := h.etcdLeader()
	killed := time.Now()
	h.byURL[first].kill()
	second := h.failover("SIGKILL of the leader", killed, first, h.term(), 8*time.Second)
	h.window("after the SIGKILL")

	h.pauseLeader(second)
	h.window("after the SIGSTOP")

	h.killEtcdLeader()
	h.window("after the etcd member's kill")

	stopFio()
	h.checkSamples(t0, h.term())
	h.checkShares(tenantLogs(t, haTenants, h.logDir))
	underIO := time.Since(t0)
	h.restartAll()
	t.Logf("set-up %v, under IO %v, restart %v", setUp.Round(100*time.Millisecond), underIO.Round(100*time.Millisecond),
		(time.Since(began) - setUp - underIO).Round(100*time.Millisecond))
}

// startHAIO starts the etcd members, the replicas and the gateways, gives
// each gateway its tenants' volumes and static limits, sets the SLOs and
// waits until every gateway follows the first leader.
func startHAIO(t *testing.T) *haIO {
	etcd := etcdtest.StartCluster(t, 3)
	h := &haIO{etcd: etcd, haCluster: newHACluster(t, haOptions{
		endpoints: strings.Join(etcd.Endpoints(), ","), gateways: 3,
		ctlFlags: []string{"--interval", "500ms", "--report-timeout", "3s"},
		gwFlags:  []string{"--qos-capacity-iops", strconv.Itoa(haCapIOPS), "--controller-capacity", "bandwidth"},
	})}
	for i, g := range h.gws {
		for _, tn := range haTenants {
			if slices.Contains(tn.on, i) {
				g.createVolume(tn.name+"/data", "256M")
				g.mustSluice("qos", "set", "--tenant", tn.name, "--op", "read", "--bw", strconv.Itoa(haStatic))
			}
		}
	}
	for _, tn := range haTenants {
		h.setSLO(tn)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the replicas' leadership, from their logs:\n%s", h.leadership())
			for i, g := range h.gws {
				b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
				var warn []string
				for _, l := range strings.Split(string(b), "\n") {
					if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
						warn = append(warn, l)
					}
				}
				t.Logf("gw%d's warnings:\n%s", i+1, strings.Join(warn, "\n"))
			}
		}
	})
	for i, g := range h.gws {
		testwait.For(t, fmt.Sprintf("gw%d follows the first leader", i+1), func() bool {
			f, err := h.state(g)
			return err == nil && f.Following && f.Term != 0 && f.Leader == h.urls[0]
		})
	}
	return h
}

// leadership is every replica's log lines about winning and losing, and
// its warnings and errors.
func (h *haIO) leadership() string {
	var out []string
	for _, u := range h.urls {
		b, _ := os.ReadFile(filepath.Join(h.byURL[u].dir, "controller.log"))
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "this replica leads") || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") ||
				strings.Contains(l, "controller: leading") {
				out = append(out, u+": "+l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// leaderTerm is the leading replica's URL and term (its election key's
// create revision) in etcd.
func (h *haIO) leaderTerm() (string, uint64) {
	cli := etcdClientOf(h.t, strings.Join(h.etcd.Endpoints(), ","))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, controller.DefaultEtcdPrefix+"election/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return "", 0
	}
	return string(resp.Kvs[0].Value), uint64(resp.Kvs[0].CreateRevision)
}

// setSLO sets tn's minimum through the CLI with every replica's URL.
func (h *haIO) setSLO(tn clusterTenant) (string, int) {
	return h.gws[0].sluice("slo", "set", tn.name, "--min-read-bw", strconv.FormatFloat(tn.min, 'f', 0, 64), "--controller", h.all, "--token-file", h.tok)
}

// startTenantsFio starts one fio per tenant (one job per gateway it is on)
// and returns the function that stops them (SIGINT: fio writes its logs)
// and waits.
func startTenantsFio(t *testing.T, gws []*gw, logDir string) (stop func()) {
	var cmds []*exec.Cmd
	done := make(chan error, len(haTenants))
	for _, tn := range haTenants {
		// Far longer than the scenario: the test stops fio.
		cmd := exec.Command("fio", tenantFioArgs(tn, gws, logDir, haBS, 8, 300*time.Second, haLogAvg)...)
		out, err := os.Create(filepath.Join(logDir, tn.name+".stdout"))
		must(t, err)
		cmd.Stdout, cmd.Stderr = out, out
		must(t, cmd.Start())
		out.Close()
		cmds = append(cmds, cmd)
		go func() { done <- cmd.Wait() }()
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		for _, cmd := range cmds {
			cmd.Process.Signal(syscall.SIGINT)
		}
		for range cmds {
			select {
			case <-done: // fio exits non-zero when interrupted; its logs say the rest
			case <-time.After(30 * time.Second):
				t.Error("fio did not stop within 30 s of SIGINT")
				for _, cmd := range cmds {
					cmd.Process.Kill()
				}
				return
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

// term is the term gw1 follows.
func (h *haIO) term() uint64 {
	f, err := h.state(h.gws[0])
	must(h.t, err)
	return f.Term
}

// window adds a window haSettle from now and waits through it (through).
func (h *haIO) window(name string) {
	from := time.Now().Add(haSettle)
	w := window{name, from, from.Add(haWindow)}
	h.windows = append(h.windows, w)
	h.through(w)
}

// through waits until window w has been served: its end on the clock (a
// window is a span of wall-clock time, over which the shares are
// measured), then, as evidence that every fio job ran through it and not
// only the clock, until every tenant's NBD reads have moved on every
// gateway it is on since then. A job stalled past the window's end is
// waited for (testwait's limit), not taken as its samples being there.
func (h *haIO) through(w window) {
	<-time.After(time.Until(w.to))
	at := nbdReadBytes(h.gws)
	testwait.For(h.t, "every tenant's reads after window "+w.name, func() bool {
		now := nbdReadBytes(h.gws)
		for k, n := range at {
			if now[k] <= n {
				return false
			}
		}
		return true
	})
}

// nbdReadBytes is the bytes each volume has read through NBD on each of
// gws, by "gwN tenant/name".
func nbdReadBytes(gws []*gw) map[string]int64 {
	out := map[string]int64{}
	for i, g := range gws {
		for _, v := range g.stats().Volumes {
			for _, o := range v.Ops {
				if o.Door == "nbd" && o.Op == "read" {
					out[fmt.Sprintf("gw%d %s", i+1, v.Ref)] += o.Bytes
				}
			}
		}
	}
	return out
}

// pauseLeader stops the leader (SIGSTOP) until another replica leads and
// the gateways follow it, which is past the paused one's lease; a write
// sent to it while it is stopped (it reads it when it resumes, still
// believing it leads until its keep-alive fails) must not land.
func (h *haIO) pauseLeader(leader string) {
	t := h.t
	paused := h.byURL[leader]
	minTerm := h.term()
	must(t, paused.cmd.Process.Signal(syscall.SIGSTOP))
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			paused.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	type answer struct {
		code int
		body string
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		code, body, err := h.rawSetSLO(leader, controller.SLO{Tenant: "deposed", Min: controller.Rates{ReadBPS: 1 << 20}})
		answered <- answer{code, body, err}
	}()
	h.failover("SIGSTOP of the leader", stopped, leader, minTerm, 9*time.Second)
	resume()
	t.Logf("the leader was stopped for %v (lease 2 s)", time.Since(stopped).Round(10*time.Millisecond))
	select {
	case a := <-answered:
		// "storing slo/...: ... not the leader" is etcd refusing the
		// fenced transaction (the replica still believed it led); without
		// "storing" the replica had already learnt it lost.
		how := "refused by the replica, which had already learnt it lost"
		switch {
		case a.err == nil && a.code/100 == 2:
			how = "ACCEPTED"
		case strings.Contains(a.body, "storing slo/deposed"):
			how = "refused by etcd: the fenced transaction's compare failed"
		}
		t.Logf("the resumed replica answered the write sent to it while stopped (%s): %d %v %s", how, a.code, a.err, strings.TrimSpace(a.body))
		if a.err == nil && a.code/100 == 2 {
			t.Logf("the resumed replica accepted the write; election keys now: %s", h.electionKeys())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the resumed replica did not answer the write sent while it was stopped")
	}
	testwait.For(t, "the resumed replica knows it no longer leads", func() bool {
		b, err := os.ReadFile(filepath.Join(paused.dir, "controller.log"))
		return err == nil && strings.Contains(string(b), "no longer the leader")
	})
	// Nothing of it is in etcd, nor in what the leader serves: unless the
	// replica, resumed, legitimately won a later election (its log then
	// says it leads a second time) and took the write in that term.
	plog, err := os.ReadFile(filepath.Join(paused.dir, "controller.log"))
	must(t, err)
	if v := h.etcdGet(controller.DefaultEtcdPrefix + "slo/deposed"); v != "" {
		if strings.Count(string(plog), "this replica leads") < 2 {
			t.Errorf("the deposed leader's write landed in etcd: %s\nleadership:\n%s", v, h.leadership())
		} else {
			t.Logf("the resumed replica won a later election and took the write in that term:\n%s", h.leadership())
		}
		h.gws[0].mustSluice("slo", "delete", "deposed", "--controller", h.all, "--token-file", h.tok)
	}
}

// electionKeys lists the election keys: key, create revision, lease, value.
func (h *haIO) electionKeys() string {
	cli := etcdClientOf(h.t, strings.Join(h.etcd.Endpoints(), ","))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, controller.DefaultEtcdPrefix+"election/", clientv3.WithPrefix())
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, kv := range resp.Kvs {
		out = append(out, fmt.Sprintf("%s create %d lease %x %s", kv.Key, kv.CreateRevision, kv.Lease, kv.Value))
	}
	return fmt.Sprintf("revision %d: %s", resp.Header.Revision, strings.Join(out, "; "))
}

// rawSetSLO sends PUT /v1/slos/<tenant> to one replica, following no
// redirect (the CLI would take a follower's answer to the leader).
func (h *haIO) rawSetSLO(url string, slo controller.SLO) (int, string, error) {
	tok, err := os.ReadFile(h.tok)
	if err != nil {
		return 0, "", err
	}
	body, err := json.Marshal(slo)
	if err != nil {
		return 0, "", err
	}
	req, err := http.NewRequest(http.MethodPut, url+"/v1/slos/"+slo.Tenant, strings.NewReader(string(body)))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// killEtcdLeader kills (SIGKILL) the etcd member that leads the raft
// group. A replica must take writes again within 3 s (the leading one, if
// its lease survived the raft election, else a new one the gateways
// follow), and cluster status shows the dead member.
func (h *haIO) killEtcdLeader() {
	t := h.t
	ctx := context.Background()
	li := h.etcd.Leader(ctx)
	if li < 0 {
		t.Fatal("no etcd member leads")
	}
	m := h.etcd.Members[li]
	before, term := h.etcdLeader(), h.term()
	killed := time.Now()
	m.Kill()
	var writable time.Duration
	testwait.For(t, "a replica takes writes again", func() bool {
		_, code := h.setSLO(haTenants[0]) // the same value: a write, no change
		writable = time.Since(killed)
		return code == 0
	})
	after, raft := h.etcdLeader(), "none"
	if i := h.etcd.Leader(ctx); i >= 0 {
		raft = h.etcd.Members[i].Name()
	}
	t.Logf("after SIGKILL of etcd member %s (the raft leader): the raft leader is now %s; a replica took a write after %v (goal 3 s); the leading replica is %s (was %s)",
		m.Name(), raft, writable.Round(time.Millisecond), after, before)
	if writable > 3*time.Second {
		t.Errorf("after the etcd member's kill writes were refused for %v, goal 3 s", writable)
	}
	// The leading replica may lose its session while etcd elects a raft
	// leader (its keep-alives go unanswered for most of its 2 s lease):
	// then another replica, or the same one with a new key, leads in a
	// newer term. Either way the gateways follow whoever leads.
	var leader string
	var lterm uint64
	for i, g := range h.gws {
		testwait.For(t, fmt.Sprintf("gw%d follows the leader after the etcd member's kill", i+1), func() bool {
			leader, lterm = h.leaderTerm()
			f, err := h.state(g)
			return err == nil && leader != "" && f.Following && f.Leader == leader && f.Term == lterm
		})
	}
	t.Logf("after the etcd member's kill: the gateways follow %s in term %d (was %s in term %d) %v after the kill",
		leader, lterm, before, term, time.Since(killed).Round(time.Millisecond))
	var st haStatus
	var err error
	if !testwait.Poll(testwait.Timeout, func() bool {
		st, err = h.status(h.gws[0], "--controller", h.all)
		return err == nil && st.Etcd != nil && !st.Etcd.Healthy && len(st.Etcd.Endpoints) == 3
	}) {
		t.Fatalf("cluster status does not show etcd member %s (%s) dead after %v: %v %+v", m.Name(), m.ClientURL(), testwait.Timeout, err, st.Etcd)
	}
	out, _ := h.gws[0].sluice("cluster", "status", "--controller", h.all, "--token-file", h.tok)
	t.Logf("cluster status with one etcd member dead:\n%s", out)
	for _, e := range st.Etcd.Endpoints {
		if e.Healthy == (e.Endpoint == m.ClientURL()) {
			t.Errorf("cluster status: etcd endpoint %s healthy=%v; only %s is dead", e.Endpoint, e.Healthy, m.ClientURL())
		}
	}
}

// etcdGet reads a key from etcd ("" if absent).
func (h *haIO) etcdGet(key string) string {
	cli := etcdClientOf(h.t, strings.Join(h.etcd.Endpoints(), ","))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	must(h.t, err)
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// checkShares checks each window in fio's logs: every tenant gets its
// minimum plus an equal share of the spare (what the tenants achieved
// together less the minimums) ±10 %, so at least its minimum less 10 %.
// A window in which the gateways themselves measured less capacity than
// the minimums add up to (a machine too busy to give the paced rate: no
// controller could meet the SLOs there) is logged, not judged; at most
// one window may be, or the run shows nothing of the shares.
func (h *haIO) checkShares(logs [][][]bwSample) {
	t := h.t
	mib := func(v float64) float64 { return v / (1 << 20) }
	sumMin := haMinimums()
	infeasible := 0
	for _, w := range h.windows {
		if est := h.estimated(w); est < sumMin {
			// Judged before the samples: on a gateway short of capacity
			// the controller may rightly give a tenant whose minimum
			// fits elsewhere nothing there, and its job logs nothing.
			infeasible++
			t.Logf("%-28s not judged: the gateways measured %.1f MiB/s of capacity, less than the minimums' %.0f", w.name, mib(est), mib(sumMin))
			if infeasible > 1 {
				t.Errorf("%d windows with less capacity than the minimums: the machine is too busy to judge the SLOs", infeasible)
			}
			continue
		}
		h.logStalls(logs, w)
		got := make([]float64, len(haTenants))
		var total float64
		for ti := range haTenants {
			for _, samples := range logs[ti] {
				got[ti] += stalledAsZero(samples, w)
			}
			total += got[ti]
		}
		spare := (total - sumMin) / float64(len(haTenants))
		line := fmt.Sprintf("%-28s total %5.1f MiB/s (paced %d, the gateways estimate %.1f):", w.name, mib(total), 3*haCapIOPS*8/1024, mib(h.estimated(w)))
		for ti, tn := range haTenants {
			want := tn.min + spare
			line += fmt.Sprintf("  %s %5.1f/%5.1f (%+5.1f%%)", tn.name, mib(got[ti]), mib(want), 100*(got[ti]/want-1))
			if !within(got[ti], want, 0.10) || got[ti] < 0.9*tn.min {
				var jobs []string
				for j, samples := range logs[ti] {
					jobs = append(jobs, fmt.Sprintf("gw%d %.1f", tn.on[j]+1, mib(stalledAsZero(samples, w))))
				}
				t.Errorf("%s: %s got %.1f MiB/s (%s), want its minimum %.0f + an equal share of the spare %.1f = %.1f MiB/s ± 10%%",
					w.name, tn.name, mib(got[ti]), strings.Join(jobs, ", "), mib(tn.min), mib(spare), mib(want))
			}
		}
		t.Log(line)
	}
}

// stalledAsZero is windowMean with 0 for a job that logged nothing in w.
func stalledAsZero(samples []bwSample, w window) float64 {
	m, _ := windowMean(samples, w, haLogAvg)
	return m
}

// logStalls logs each fio job that completed no IO in w, with its samples
// around w. The SLOs are cluster-wide: a tenant whose minimum is met on
// its other gateways may be given nothing on one short of capacity (its
// requests there wait for the next assignment that gives it some), and
// its total, which checkShares judges, counts that job as 0.
// docs/CONTROLLER.md ("Not done") says so.
func (h *haIO) logStalls(logs [][][]bwSample, w window) {
	for ti, tn := range haTenants {
		for j, samples := range logs[ti] {
			if _, ok := windowMean(samples, w, haLogAvg); ok {
				continue
			}
			var around []string
			for _, s := range samples {
				if s.at.After(w.from.Add(-3*time.Second)) && s.at.Before(w.to.Add(3*time.Second)) {
					around = append(around, fmt.Sprintf("%.1fs %.1f", s.at.Sub(w.from).Seconds(), s.bw/(1<<20)))
				}
			}
			h.t.Logf("window %s: %s's job on gw%d completed no IO (counted as 0 in %s's total); its samples from 3 s before to 3 s after (s, MiB/s): %s",
				w.name, tn.name, tn.on[j]+1, tn.name, strings.Join(around, ", "))
		}
	}
}

// capacityNow is the sum over the gateways of their latest read
// bandwidth estimate.
func (h *haIO) capacityNow() float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var total float64
	for _, ss := range h.samples {
		if len(ss) > 0 {
			total += ss[len(ss)-1].f.Capacity["read_bw"]
		}
	}
	return total
}

// haMinimums is what the tenants' minimums add up to.
func haMinimums() float64 {
	var sum float64
	for _, tn := range haTenants {
		sum += tn.min
	}
	return sum
}

// estimated is the sum over the gateways of their mean capacity estimate
// in the samples of w, a second earlier (assignments follow reports).
func (h *haIO) estimated(w window) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var total float64
	for _, ss := range h.samples {
		var sum float64
		n := 0
		for _, s := range ss {
			if !s.at.Before(w.from.Add(-time.Second)) && !s.at.After(w.to.Add(-time.Second)) {
				sum += s.f.Capacity["read_bw"]
				n++
			}
		}
		if n > 0 {
			total += sum / float64(n)
		}
	}
	return total
}

// restartAll stops every gateway, replica and etcd member, starts them
// again on their data directories, and checks that the SLOs are there
// and that the gateways follow the leader.
func (h *haIO) restartAll() {
	t := h.t
	for _, g := range h.gws {
		g.stop()
	}
	for _, u := range h.urls {
		if c := h.byURL[u]; c.cmd != nil {
			c.stop()
		}
	}
	for _, m := range h.etcd.Members {
		m.Stop()
	}
	began := time.Now()
	for _, m := range h.etcd.Members {
		m.Start()
	}
	h.etcd.WaitHealthy(30 * time.Second)
	for _, u := range h.urls {
		h.byURL[u].start()
	}
	for _, g := range h.gws {
		g.start()
	}
	var slos []controller.SLO
	testwait.For(t, "the SLOs are listed after the restart", func() bool {
		out, code := h.gws[0].sluice("slo", "list", "--json", "--controller", h.all, "--token-file", h.tok)
		return code == 0 && json.Unmarshal([]byte(out), &slos) == nil && len(slos) == len(haTenants)
	})
	for _, tn := range haTenants {
		i := slices.IndexFunc(slos, func(s controller.SLO) bool { return s.Tenant == tn.name })
		if i < 0 || slos[i].Min.ReadBPS != tn.min {
			t.Errorf("after the restart: SLOs %+v, want %s with a read minimum of %.0f", slos, tn.name, tn.min)
		}
	}
	leader := ""
	for i, g := range h.gws {
		testwait.For(t, fmt.Sprintf("gw%d follows a leader after the restart", i+1), func() bool {
			leader = h.etcdLeader()
			f, err := h.state(g)
			return err == nil && leader != "" && f.Following && f.Leader == leader
		})
	}
	t.Logf("after restarting 3 etcd members, 3 replicas and 3 gateways: %d SLOs kept, the gateways follow %s after %v",
		len(slos), leader, time.Since(began).Round(10*time.Millisecond))
}
