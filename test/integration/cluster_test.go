package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// The cluster test: a controller and three gateways, each its own process
// of the built binary on this machine (the controller on a loopback TCP
// port, gateways' APIs and NBD exports on unix sockets), three tenants with
// different cluster-wide minimums reading over NBD with fio.
//
// The shared capacity is bounded by Sluice, not by the machine's CPU: each
// gateway runs with --qos-capacity-iops, so the scheduler never admits more
// than clusterCapPerGW of routed IO, whatever the CPU does (2 noisy cores
// deliver several times that). The gateways measure their capacity
// (--controller-capacity bandwidth: the CapacityEstimator follows what they
// achieve while saturated), and the controller shares it out.

const (
	clusterGateways = 3
	// clusterCapIOPS is each gateway's --qos-capacity-iops: 5120 8 KiB
	// units/s, 40 MiB/s of the 64 KiB reads below.
	clusterCapIOPS  = 5120
	clusterCapPerGW = clusterCapIOPS * 8 << 10 // bytes/s
	clusterBS       = 64 << 10
	// clusterStatic is each tenant's static read limit on each gateway:
	// what applies before the first assignment and after the fallback.
	clusterStatic = 6 << 20
)

// clusterTenants are the tenants, their minimums (read bandwidth,
// cluster-wide; sum 90 MiB/s of 120: 30 MiB/s of spare, 10 each) and the
// gateways (0-based) where they have a volume and run fio.
var clusterTenants = []clusterTenant{{"gold", 48 << 20, []int{0, 1}}, {"silver", 30 << 20, []int{0, 1, 2}}, {"bronze", 12 << 20, []int{1, 2}}}

// clusterTenant is a tenant of a multi-gateway test: its cluster-wide
// read minimum (bytes/s) and the gateways (0-based) with a volume of it.
type clusterTenant struct {
	name string
	min  float64
	on   []int
}

// tenantFioArgs are fio's arguments for one tenant: random reads of bs
// bytes over NBD, one job per gateway it is on (named gwN, its volume
// <tenant>/data), bandwidth logged every logAvg to logDir/<tenant>_bw.J.log.
func tenantFioArgs(tn clusterTenant, gws []*gw, logDir string, bs, iodepth int, runtime, logAvg time.Duration) []string {
	args := []string{"--thread", "--ioengine=nbd", "--rw=randread", fmt.Sprintf("--bs=%d", bs), fmt.Sprintf("--iodepth=%d", iodepth),
		"--size=256m", "--time_based", fmt.Sprintf("--runtime=%d", int(runtime.Seconds())),
		fmt.Sprintf("--log_avg_msec=%d", logAvg.Milliseconds()), "--log_unix_epoch=1",
		"--write_bw_log=" + filepath.Join(logDir, tn.name), "--output=" + filepath.Join(logDir, tn.name+".out")}
	for _, i := range tn.on {
		args = append(args, fmt.Sprintf("--name=gw%d", i+1), "--uri="+gws[i].uri(tn.name+"/data"))
	}
	return args
}

// tenantLogs reads the bandwidth logs tenantFioArgs asked for: per
// tenant, per job.
func tenantLogs(t *testing.T, tenants []clusterTenant, logDir string) [][][]bwSample {
	logs := make([][][]bwSample, len(tenants))
	for ti, tn := range tenants {
		for j := range tn.on {
			logs[ti] = append(logs[ti], readBWLog(t, filepath.Join(logDir, fmt.Sprintf("%s_bw.%d.log", tn.name, j+1))))
		}
	}
	return logs
}

// ctl is the controller process.
type ctl struct {
	t      *testing.T
	dir    string
	addr   string
	cmd    *exec.Cmd
	log    *os.File
	exited chan error
	extra  []string // more flags for `sluice controller`
}

func (c *ctl) url() string { return "http://" + c.addr }

// freeLoopbackAddr returns a loopback address with a port that was free a
// moment ago.
func freeLoopbackAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startController starts `sluice controller` on dir and addr and waits
// until /v1/health answers.
func startController(t *testing.T, dir, addr string, extra ...string) *ctl {
	t.Helper()
	c := &ctl{t: t, dir: dir, addr: addr, extra: extra}
	c.start()
	t.Cleanup(func() {
		if c.cmd != nil {
			c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(20 * time.Second):
				c.cmd.Process.Kill()
				<-c.exited
			}
			c.log.Close()
		}
	})
	return c
}

// tokenFile is the API token the controller generates in its data
// directory on first start.
func (c *ctl) tokenFile() string { return filepath.Join(c.dir, "state", "token") }

func (c *ctl) start() {
	c.t.Helper()
	var err error
	c.log, err = os.OpenFile(filepath.Join(c.dir, "controller.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	c.cmd = exec.Command(sluiceBin, append([]string{"controller", "--listen", c.addr, "--data-dir", filepath.Join(c.dir, "state")}, c.extra...)...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, ch chan error) { ch <- cmd.Wait() }(c.cmd, c.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(c.url() + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-c.exited:
			c.exited <- err
			b, _ := os.ReadFile(filepath.Join(c.dir, "controller.log"))
			c.t.Fatalf("controller exited during start-up: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatal("controller not ready after 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the process to end.
func (c *ctl) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
	c.log.Close()
}

// kill sends SIGKILL.
func (c *ctl) kill() {
	c.cmd.Process.Kill()
	<-c.exited
	c.cmd = nil
	c.log.Close()
}

// followerJSON is what the test reads of a gateway's GET /v1/controller.
type followerJSON struct {
	Joined      bool               `json:"joined"`
	Following   bool               `json:"following"`
	Epoch       uint64             `json:"epoch"`
	EpochText   string             `json:"epoch_text"`
	Capacity    map[string]float64 `json:"capacity"`
	Assignments struct {
		Following bool `json:"following"`
		Tenants   []struct {
			Tenant string `json:"tenant"`
			Limits struct {
				ReadBPS        float64 `json:"read_bps"`
				ReservationBPS float64 `json:"reservation_bps"`
			} `json:"limits"`
		} `json:"tenants"`
	} `json:"assignments"`
}

// follower reads GET /v1/controller from the gateway's API socket.
func (g *gw) follower() followerJSON {
	g.t.Helper()
	st, err := g.followerErr()
	if err != nil {
		g.t.Fatal(err)
	}
	return st
}

// followerErr is follower for goroutines other than the test's.
func (g *gw) followerErr() (followerJSON, error) {
	var st followerJSON
	return st, g.controllerJSON(&st)
}

// controllerJSON reads GET /v1/controller from the gateway's API socket
// into v.
func (g *gw) controllerJSON(v any) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", g.api)
	}}}
	resp, err := c.Get("http://sluice/v1/controller")
	if err != nil {
		return fmt.Errorf("GET /v1/controller: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, v); err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v1/controller: %d %v: %s", resp.StatusCode, err, body)
	}
	return nil
}

// bwSample is one fio bandwidth log entry: the mean rate of one job over
// the log_avg_msec period ending at `at`.
type bwSample struct {
	at time.Time
	bw float64 // bytes/s
}

// readBWLog reads a fio bandwidth log written with log_unix_epoch=1.
func readBWLog(t *testing.T, path string) []bwSample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []bwSample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ",")
		if len(fs) < 2 {
			continue
		}
		ms, err1 := strconv.ParseInt(strings.TrimSpace(fs[0]), 10, 64)
		kib, err2 := strconv.ParseFloat(strings.TrimSpace(fs[1]), 64)
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, bwSample{time.UnixMilli(ms), kib * 1024})
	}
	return out
}

// window is a named span of wall-clock time the test checks.
type window struct {
	name     string
	from, to time.Time
}

// mean is a tenant's rate over w: the sum over its jobs of each job's mean
// sample in w (samples cover the logAvg period before their stamp, so
// only those wholly inside count).
func mean(t *testing.T, jobs [][]bwSample, w window, logAvg time.Duration) float64 {
	t.Helper()
	var total float64
	for j, samples := range jobs {
		m, ok := windowMean(samples, w, logAvg)
		if !ok {
			t.Fatalf("window %s: job %d has no fio samples", w.name, j+1)
		}
		total += m
	}
	return total
}

// windowMean is one fio job's mean bandwidth over the samples that cover
// only w (each averages the logAvg before it); false if it logged none
// there (it completed no IO for the whole window).
func windowMean(samples []bwSample, w window, logAvg time.Duration) (float64, bool) {
	var sum float64
	n := 0
	for _, s := range samples {
		if !s.at.Add(-logAvg).Before(w.from) && !s.at.After(w.to) {
			sum += s.bw
			n++
		}
	}
	if n == 0 {
		return 0, false
	}
	return sum / float64(n), true
}

// TestClusterSLOs is Crystal's Fig. 7 on one machine: each tenant gets its
// minimum plus an equal share of the spare, within ±10 % in every 5 s
// window, cluster-wide. The placement is uneven (gold on gw1 and gw2,
// silver on all three, bronze on gw2 and gw3), so no per-gateway split of
// the SLOs gives the answer: gold's 58 MiB/s must come from two gateways
// of 40, which leaves silver most of gw3; then the controller is killed (IO goes on under the last
// assignments, the gateways fall back to their static rules after the
// grace period) and restarted (a new epoch is applied and the shares come
// back).
//
// "The spare" is the capacity the tenants achieved together in the window
// minus the sum of the minimums: the shares are checked against what was
// actually shared. That total is checked too, against the capacity the
// gateways estimated in the window (±10 %), so the controller neither
// leaves capacity idle nor hands out more than there is; the estimate
// never exceeds the capacity Sluice enforces (3 × 40 MiB/s) and reaches it
// (±10 %) in some window. The estimate, not the configured capacity, is
// the yardstick for each window because on two noisy cores the device can
// stay saturated below its pacing for a while, and the estimator then
// follows what it achieves (a CI run saw 79 MiB/s in steady 2, with the
// shares exact). A window in which the tenants used less than 97% of the
// estimate is one where a load generator, not the controller, fell short
// (beside stress-ng a starved fio job deflated "the spare" and made its
// neighbours look over-served): it is logged, not judged; a second such
// window fails the test.
func TestClusterSLOs(t *testing.T) {
	testtool.Need(t, "fio")
	const grace = 10 * time.Second // the default --controller-grace
	const logAvg = 500 * time.Millisecond
	mib := func(v float64) float64 { return v / (1 << 20) }

	c := startController(t, t.TempDir(), freeLoopbackAddr(t))
	var gws []*gw
	for i := 1; i <= clusterGateways; i++ {
		g := startGateway(t, t.TempDir(), "--controller", c.url(), "--controller-token-file", c.tokenFile(), "--gateway-id", fmt.Sprintf("gw%d", i),
			"--qos-capacity-iops", strconv.Itoa(clusterCapIOPS), "--controller-capacity", "bandwidth")
		for _, tn := range clusterTenants {
			if slices.Contains(tn.on, i-1) {
				g.createVolume(tn.name+"/data", "256M")
				g.mustSluice("qos", "set", "--tenant", tn.name, "--op", "read", "--bw", strconv.Itoa(clusterStatic))
			}
		}
		gws = append(gws, g)
	}
	for _, tn := range clusterTenants {
		gws[0].mustSluice("slo", "set", tn.name, "--min-read-bw", strconv.FormatFloat(tn.min, 'f', 0, 64), "--controller", c.url(), "--token-file", c.tokenFile())
	}

	// One fio per tenant, one job per gateway. The scenario's clock (t0)
	// starts once every job reads (a loaded machine starts fio late);
	// fio's runtime leaves room for that.
	const runtime = 72 * time.Second
	logDir := t.TempDir()
	fioDone := make(chan error, len(clusterTenants))
	fioStart := time.Now()
	for _, tn := range clusterTenants {
		args := tenantFioArgs(tn, gws, logDir, clusterBS, 16, runtime, logAvg)
		cmd := exec.Command("fio", args...)
		go func() {
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = fmt.Errorf("fio for %s: %w\n%s", tn.name, err, out)
			}
			fioDone <- err
		}()
	}
	testwait.For(t, "every fio job reads", func() bool {
		n := 0
		for _, b := range nbdReadBytes(gws) {
			if b > 0 {
				n++
			}
		}
		want := 0
		for _, tn := range clusterTenants {
			want += len(tn.on)
		}
		return n == want
	})
	t0 := time.Now()
	t.Logf("every fio job read %v after fio started", t0.Sub(fioStart).Round(time.Millisecond))
	// The gateways' own capacity estimates, every 250 ms: what the
	// controller has to share out at each moment. One sampler per gateway,
	// so that a slow answer from one (a loaded machine) costs only its own
	// samples.
	type capSample struct {
		at  time.Time
		bps float64
	}
	capDone := make(chan [][]capSample)
	stopCap := make(chan struct{})
	go func() {
		per := make([][]capSample, len(gws))
		var wg sync.WaitGroup
		for i, g := range gws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(250 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stopCap:
						return
					case <-tick.C:
					}
					asked := time.Now()
					if st, err := g.followerErr(); err == nil {
						per[i] = append(per[i], capSample{asked, st.Capacity["read_bw"]})
					}
				}
			}()
		}
		wg.Wait()
		capDone <- per
	}()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	sleepUntil := func(when time.Time) { time.Sleep(time.Until(when)) }

	// Steady state under the controller: four 5 s windows after 6 s of
	// convergence (warm-up, first capacity measurement, first rounds).
	var steady []window
	for i := 0; i < 4; i++ {
		from := at(6*time.Second + time.Duration(i)*5*time.Second)
		steady = append(steady, window{fmt.Sprintf("steady %d", i+1), from, from.Add(5 * time.Second)})
	}
	sleepUntil(steady[len(steady)-1].to)
	before := make([]followerJSON, len(gws))
	for i, g := range gws {
		before[i] = g.follower()
		// A set lists the tenants the gateway reports (those with a
		// volume on it); the others get the set's default.
		hosted := 0
		for _, tn := range clusterTenants {
			if slices.Contains(tn.on, i) {
				hosted++
			}
		}
		if !before[i].Following || before[i].Epoch == 0 || len(before[i].Assignments.Tenants) != hosted {
			t.Errorf("gw%d before the kill: not following the controller: %+v", i+1, before[i])
		}
		line := fmt.Sprintf("gw%d enforces epoch %s, read limit (reservation) in MiB/s:", i+1, before[i].EpochText)
		for _, a := range before[i].Assignments.Tenants {
			line += fmt.Sprintf("  %s %.1f (%.1f)", a.Tenant, mib(a.Limits.ReadBPS), mib(a.Limits.ReservationBPS))
		}
		t.Log(line)
	}
	var status struct {
		Epoch    uint64 `json:"epoch"`
		Gateways []struct {
			ID       string `json:"id"`
			Live     bool   `json:"live"`
			Epoch    uint64 `json:"epoch"`
			Capacity struct {
				ReadBPS float64 `json:"read_bps"`
			} `json:"capacity"`
		} `json:"gateways"`
	}
	if err := json.Unmarshal([]byte(gws[0].mustSluice("cluster", "status", "--json", "--token-file", c.tokenFile())), &status); err != nil {
		t.Fatal(err)
	}
	for _, g := range status.Gateways {
		t.Logf("controller's view before the kill: %s live=%v epoch %d.%d, measured read capacity %.1f MiB/s (configured %.1f)",
			g.ID, g.Live, g.Epoch>>32, g.Epoch&(1<<32-1), mib(g.Capacity.ReadBPS), mib(clusterCapPerGW))
	}

	// Kill the controller. The gateways keep the last assignments for the
	// grace period, then fall back to their static rules.
	c.kill()
	killed := time.Now()
	fellBack := make([]time.Duration, len(gws))
	for deadline := killed.Add(grace + 5*time.Second); ; time.Sleep(100 * time.Millisecond) {
		pending := 0
		for i, g := range gws {
			if fellBack[i] == 0 {
				if st := g.follower(); !st.Following {
					fellBack[i] = time.Since(killed)
					// The last epoch is kept (a round or so newer than the
					// snapshot taken before the kill, same generation).
					if st.Assignments.Following || len(st.Assignments.Tenants) != 0 ||
						st.Epoch < before[i].Epoch || st.Epoch>>32 != before[i].Epoch>>32 {
						t.Errorf("gw%d after the fallback: %+v, want no assignments in force and the last epoch kept", i+1, st)
					}
					if capa := st.Capacity["read_bw"]; capa > clusterCapPerGW {
						t.Errorf("gw%d measured %.1f MiB/s of read capacity, above the %.0f MiB/s it paces routed IO at",
							i+1, mib(capa), mib(clusterCapPerGW))
					}
				} else {
					pending++
				}
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateways still following a dead controller %v after the kill: %v", time.Since(killed), fellBack)
		}
	}
	allFellBack := time.Now()
	for i, d := range fellBack {
		t.Logf("gw%d fell back to static rules %v after the kill (grace %v)", i+1, d.Round(10*time.Millisecond), grace)
		// Contact was at most a round (1 s) plus a poll before the kill.
		if d < grace-2*time.Second || d > grace+time.Second {
			t.Errorf("gw%d fell back %v after the kill, want the grace period %v (less up to a round)", i+1, d, grace)
		}
	}
	graceW := window{"grace period", killed.Add(500 * time.Millisecond), killed.Add(grace - 2*time.Second)}
	staticW := window{"static rules", allFellBack.Add(time.Second), allFellBack.Add(6 * time.Second)}
	sleepUntil(staticW.to)

	// Restart the controller on the same state: it loads the SLOs and the
	// registry and carries on with a newer generation.
	restarted := time.Now()
	c.start()
	resumed := make([]time.Duration, len(gws))
	for deadline := restarted.Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		pending := 0
		for i, g := range gws {
			if resumed[i] == 0 {
				if st := g.follower(); st.Following && st.Epoch>>32 > before[i].Epoch>>32 {
					resumed[i] = time.Since(restarted)
				} else {
					pending++
				}
			}
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("assignments did not resume within 15 s of the restart: %v", resumed)
		}
	}
	allResumed := time.Now()
	for i, d := range resumed {
		st := gws[i].follower()
		t.Logf("gw%d follows again %v after the restart: epoch %s (was %s), %d tenants assigned",
			i+1, d.Round(10*time.Millisecond), st.EpochText, before[i].EpochText, len(st.Assignments.Tenants))
	}
	var after []window
	for i := 0; i < 2; i++ {
		from := allResumed.Add(3*time.Second + time.Duration(i)*5*time.Second)
		after = append(after, window{fmt.Sprintf("resumed %d", i+1), from, from.Add(5 * time.Second)})
	}
	if end := fioStart.Add(runtime - time.Second); after[len(after)-1].to.After(end) {
		t.Fatalf("the scenario ran late: the last window ends %v after fio's", after[len(after)-1].to.Sub(end))
	}
	sleepUntil(after[len(after)-1].to)
	if err := json.Unmarshal([]byte(gws[0].mustSluice("cluster", "status", "--json", "--token-file", c.tokenFile())), &status); err != nil {
		t.Fatal(err)
	}
	for _, g := range status.Gateways {
		if !g.Live || g.Epoch>>32 != status.Epoch>>32 {
			t.Errorf("controller's view after the restart: %s live=%v epoch %d.%d, want live at generation %d",
				g.ID, g.Live, g.Epoch>>32, g.Epoch&(1<<32-1), status.Epoch>>32)
		}
	}
	for range clusterTenants {
		if err := <-fioDone; err != nil {
			t.Fatal(err)
		}
	}

	close(stopCap)
	capSamples := <-capDone
	// estimated is the sum over gateways of each one's mean estimate over
	// w, a second earlier (assignments follow reports by a round); a
	// gateway that answered no sample then counts with its last one
	// before.
	estimated := func(w window) float64 {
		from, to := w.from.Add(-time.Second), w.to.Add(-time.Second)
		var total float64
		for i, samples := range capSamples {
			var sum float64
			n := 0
			last := -1.0
			for _, s := range samples {
				if s.at.After(to) {
					break
				}
				last = s.bps
				if !s.at.Before(from) {
					sum += s.bps
					n++
				}
			}
			switch {
			case n > 0:
				total += sum / float64(n)
			case last >= 0:
				t.Logf("window %s: gw%d answered no capacity sample in it; using its last one", w.name, i+1)
				total += last
			default:
				t.Fatalf("window %s: gw%d answered no capacity sample up to it", w.name, i+1)
			}
		}
		return total
	}

	// The figures, from fio's logs.
	logs := tenantLogs(t, clusterTenants, logDir)
	var sumMin float64
	for _, tn := range clusterTenants {
		sumMin += tn.min
	}
	capacity := float64(clusterGateways * clusterCapPerGW)
	var bestEstimate float64
	// shares checks min + equal share of the spare in w. A window in
	// which the tenants together used less than 97% of what the gateways
	// estimated is one where the load generators, not the controller,
	// fell short (a busy machine starved a fio job, deflating "the
	// spare"): it is logged, not judged; more than one such window fails.
	starved := 0
	shares := func(w window) {
		got := make([]float64, len(clusterTenants))
		var total float64
		for ti := range clusterTenants {
			got[ti] = mean(t, logs[ti], w, logAvg)
			total += got[ti]
		}
		est := estimated(w)
		if est > capacity*1.01 {
			t.Errorf("%s: the gateways estimated %.1f MiB/s of capacity, above the %.0f MiB/s they pace routed IO at", w.name, mib(est), mib(capacity))
		}
		spare := (total - sumMin) / float64(len(clusterTenants))
		line := fmt.Sprintf("%-12s total %6.1f MiB/s (capacity %.0f):", w.name, mib(total), mib(capacity))
		for ti, tn := range clusterTenants {
			line += fmt.Sprintf("  %s %5.1f/%5.1f (%+5.1f%%)", tn.name, mib(got[ti]), mib(tn.min+spare), 100*(got[ti]/(tn.min+spare)-1))
		}
		line += fmt.Sprintf("  (gateways estimate %.1f)", mib(est))
		if total < 0.97*est {
			starved++
			t.Logf("%s: not judged: the tenants used %.1f of the %.1f MiB/s the gateways had", line, mib(total), mib(est))
			if starved > 1 {
				t.Errorf("%s: a second window in which the tenants used less than 97%% of the capacity the gateways had", w.name)
			}
			return
		}
		t.Log(line)
		for ti, tn := range clusterTenants {
			if want := tn.min + spare; !within(got[ti], want, 0.10) {
				t.Errorf("%s: %s got %.1f MiB/s, want its minimum %.0f + an equal share of the spare %.1f = %.1f MiB/s ± 10%%",
					w.name, tn.name, mib(got[ti]), mib(tn.min), mib(spare), mib(want))
			}
		}
		if total > est*1.10 {
			t.Errorf("%s: the tenants achieved %.1f MiB/s together, more than the %.1f MiB/s the gateways estimated + 10%%", w.name, mib(total), mib(est))
		}
		bestEstimate = max(bestEstimate, est)
	}
	for _, w := range steady {
		shares(w)
	}
	shares(graceW) // IO went on under the last assignments
	// Static rules: each tenant's static limit on each gateway.
	line := fmt.Sprintf("%-12s", staticW.name)
	for ti, tn := range clusterTenants {
		got, want := mean(t, logs[ti], staticW, logAvg), float64(len(tn.on)*clusterStatic)
		line += fmt.Sprintf("  %s %5.1f/%5.1f (%+5.1f%%)", tn.name, mib(got), mib(want), 100*(got/want-1))
		if !within(got, want, 0.10) {
			t.Errorf("%s: %s got %.1f MiB/s, want its static limits %.0f MiB/s ± 10%%", staticW.name, tn.name, mib(got), mib(want))
		}
	}
	t.Log(line)
	for _, w := range after {
		shares(w)
	}
	if !within(bestEstimate, capacity, 0.10) {
		t.Errorf("the gateways' capacity estimate peaked at %.1f MiB/s, want the %.0f MiB/s they pace routed IO at ± 10%% in some window", mib(bestEstimate), mib(capacity))
	}
	t.Logf("scenario: fio %v, kill at %v, all fell back %v later, restart at %v, all resumed %v later",
		runtime, killed.Sub(t0).Round(100*time.Millisecond), allFellBack.Sub(killed).Round(100*time.Millisecond),
		restarted.Sub(t0).Round(100*time.Millisecond), allResumed.Sub(restarted).Round(100*time.Millisecond))
}
