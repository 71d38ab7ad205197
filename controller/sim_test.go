package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httputil"
	"runtime"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"
)

// simCluster is a simulated cluster: gateways with capacities, tenants
// placed on some of them, SLOs, and a random source for each second's
// traffic.
type simCluster struct {
	rng      *rand.Rand
	slos     []SLO
	gateways []simGateway
}

type simGateway struct {
	id       string
	capacity Rates
	tenants  []string
}

// newSimCluster: 20 of the tenants have minimums, 10 have maximums; each
// tenant is on 4 to 30 gateways.
func newSimCluster(nG, nT int, seed uint64) *simCluster {
	c := &simCluster{rng: rand.New(rand.NewPCG(seed, seed+1))}
	rng := c.rng
	tenant := func(i int) string { return fmt.Sprintf("tenant-%02d", i) }
	for i := 0; i < nT; i++ {
		slo := SLO{Tenant: tenant(i)}
		if i < nT*2/5 {
			slo.Min = Rates{ReadBPS: float64(50+rng.IntN(150)) * mb, WriteBPS: float64(20+rng.IntN(80)) * mb, ReadIOPS: float64(1000 + rng.IntN(4000))}
		}
		if i >= nT*4/5 {
			slo.Max = Rates{ReadBPS: float64(200+rng.IntN(800)) * mb, WriteIOPS: float64(5000 + rng.IntN(20000))}
		}
		if !slo.Min.IsZero() || !slo.Max.IsZero() {
			c.slos = append(c.slos, slo)
		}
	}
	for i := 0; i < nG; i++ {
		c.gateways = append(c.gateways, simGateway{
			id: fmt.Sprintf("gw-%03d.rack%d", i, i%8),
			capacity: Rates{
				ReadBPS: float64(1024+rng.IntN(1024)) * mb, WriteBPS: float64(512+rng.IntN(512)) * mb,
				ReadIOPS: float64(100000 + rng.IntN(100000)), WriteIOPS: float64(50000 + rng.IntN(50000)),
			},
		})
	}
	for ti := 0; ti < nT; ti++ {
		for _, gi := range rng.Perm(nG)[:min(nG, 4+rng.IntN(27))] {
			c.gateways[gi].tenants = append(c.gateways[gi].tenants, tenant(ti))
		}
	}
	for i := range c.gateways {
		sort.Strings(c.gateways[i].tenants)
	}
	return c
}

// reports draws one second of reports: each tenant uses 20–120 % of an
// equal split of the gateway, demand up to 30 % more, half of them held
// back.
func (c *simCluster) reports(epoch uint64) []Report {
	op := func(capBW, capIOPS float64, n int) OpReport {
		bw := capBW / float64(n) * (0.2 + c.rng.Float64())
		iops := capIOPS / float64(n) * (0.2 + c.rng.Float64())
		return OpReport{BPS: bw, IOPS: iops, DemandBPS: bw * (1 + 0.3*c.rng.Float64()),
			DemandIOPS: iops * (1 + 0.3*c.rng.Float64()), Throttled: c.rng.IntN(2) == 0}
	}
	var out []Report
	for _, g := range c.gateways {
		rep := Report{Gateway: g.id, Interval: time.Second, Capacity: g.capacity, Epoch: epoch}
		for _, t := range g.tenants {
			n := len(g.tenants)
			rep.Tenants = append(rep.Tenants, TenantReport{Tenant: t,
				Read:  op(g.capacity.ReadBPS, g.capacity.ReadIOPS, n),
				Write: op(g.capacity.WriteBPS, g.capacity.WriteIOPS, n)})
		}
		out = append(out, rep)
	}
	return out
}

// server opens an in-memory controller with the cluster's SLOs and
// gateways registered.
func (c *simCluster) server(tb testing.TB) *Server {
	ctx := context.Background()
	s, err := Open(ctx, Options{Logger: quietLogger()})
	if err != nil {
		tb.Fatal(err)
	}
	for _, slo := range c.slos {
		if _, err := s.SetSLO(ctx, slo); err != nil {
			tb.Fatal(err)
		}
	}
	for i, g := range c.gateways {
		if _, err := s.Register(ctx, GatewayRegistration{ID: g.id, Address: simAddress(i)}); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

// simAddress is gateway i's made-up address.
func simAddress(i int) string { return fmt.Sprintf("10.0.%d.%d:7480", i/250, i%250) }

// threadCPU returns the CPU time the calling OS thread has used (lock
// the goroutine to its thread around the measurement): unlike wall time it
// does not count time other processes took the CPU.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestSimulation100Gateways50Tenants runs the controller's rounds on a
// simulated cluster of 100 gateways and 50 tenants and measures:
//
//   - the time per round (building the input, the algorithm, the sets),
//     as wall time and as the CPU time of the round's thread (the machine
//     is shared, so the bound is on CPU time);
//   - monitoring bytes per second: every gateway's report, encoded as the
//     JSON it sends, once a second, plus the assignment sets sent back;
//   - Crystal's model O = |W|·s·(2|N|+|C|) for the same reports: W the
//     workload metrics (read/write bandwidth and IOPS: 4), s the bytes per
//     node per metric (a quarter of a report), N the nodes, C the
//     controllers (1). Crystal's 2|N| is node → broker → metric actor;
//     gateways here post straight to the controller, so the upstream cost
//     is W·s·N.
func TestSimulation100Gateways50Tenants(t *testing.T) {
	const nG, nT, rounds = 100, 50, 10
	ctx := context.Background()
	c := newSimCluster(nG, nT, 7)
	s := c.server(t)
	defer s.Close()

	// HTTP overhead of one report as the Client sends it (headers only).
	req, _ := http.NewRequest(http.MethodPost, "http://10.0.0.1:7470/v1/gateways/"+c.gateways[0].id+"/report", bytes.NewReader(nil))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer 0123456789abcdef0123456789abcdef")
	req.ContentLength = 2600
	hdr, err := httputil.DumpRequestOut(req, false)
	if err != nil {
		t.Fatal(err)
	}

	var reportBytes, setBytes, reports int
	var wall, cpu []time.Duration
	var lastIn Input
	var lastOut Output
	for round := 0; round < rounds; round++ {
		for _, rep := range c.reports(s.Epoch()) {
			b, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			reportBytes += len(b)
			reports++
			var decoded Report // what the controller does with it
			if err := json.NewDecoder(bytes.NewReader(b)).Decode(&decoded); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Report(ctx, decoded); err != nil {
				t.Fatal(err)
			}
		}
		runtime.LockOSThread()
		c0, w0 := threadCPU(), time.Now()
		s.runRound()
		wall = append(wall, time.Since(w0))
		cpu = append(cpu, threadCPU()-c0)
		runtime.UnlockOSThread()

		s.mu.Lock()
		lastIn = s.inputLocked(s.clock.Now())
		sets := s.sets
		s.mu.Unlock()
		if len(sets) != nG {
			t.Fatalf("round %d: %d sets, want %d", round, len(sets), nG)
		}
		for _, set := range sets {
			b, err := json.Marshal(set)
			if err != nil {
				t.Fatal(err)
			}
			setBytes += len(b)
		}
	}
	lastOut = s.alg.Assign(lastIn)
	checkInvariants(t, lastIn, Crystal{Headroom: DefaultHeadroom}, lastOut)

	median := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	edges := 0
	for _, g := range c.gateways {
		edges += len(g.tenants)
	}
	perReport := float64(reportBytes) / float64(reports)
	perSet := float64(setBytes) / float64(rounds*nG)
	up := perReport * nG   // bytes/s: one report per gateway per second
	down := perSet * nG    // bytes/s: one set per gateway per round
	const w, nc = 4.0, 1.0 // workload metrics, controllers
	sMsg := perReport / w  // bytes per node per metric
	crystal := w * sMsg * (2*nG + nc)
	httpUp := float64(len(hdr)) * nG

	t.Logf("cluster: %d gateways, %d tenants, %d tenant-gateway pairs, %d shortfalls in the last round", nG, nT, edges, len(lastOut.Shortfalls))
	t.Logf("round: median %v CPU (max %v), median %v wall (max %v), over %d rounds; race detector %v",
		median(cpu), slices.Max(cpu), median(wall), slices.Max(wall), rounds, raceEnabled)
	t.Logf("report: %.0f B per gateway per second (%.0f B per tenant on it); assignment set: %.0f B per gateway per round; HTTP request headers %d B",
		perReport, perReport*nG/float64(edges), perSet, len(hdr))
	t.Logf("monitoring: up %.1f KiB/s (+%.1f KiB/s headers), down %.1f KiB/s; total %.1f KiB/s",
		up/1024, httpUp/1024, down/1024, (up+down+httpUp)/1024)
	t.Logf("Crystal's model O = |W|·s·(2|N|+|C|) = %.0f·%.0f B·(2·%d+%.0f) = %.1f KiB/s; ours upstream W·s·N = %.1f KiB/s (%.2f× the model); with the sets %.2f×",
		w, sMsg, nG, nc, crystal/1024, up/1024, up/crystal, (up+down)/crystal)

	limit := 50 * time.Millisecond
	if raceEnabled {
		limit = 500 * time.Millisecond
	}
	if m := median(cpu); m > limit {
		t.Errorf("median round %v CPU, want under %v", m, limit)
	}
	if perReport > 32<<10 || perSet > 32<<10 {
		t.Errorf("messages too large: report %.0f B, set %.0f B", perReport, perSet)
	}
	if up > crystal {
		t.Errorf("upstream %.0f B/s above Crystal's model %.0f B/s", up, crystal)
	}
}

// BenchmarkRound100x50 is one controller round on the simulated cluster.
func BenchmarkRound100x50(b *testing.B) {
	c := newSimCluster(100, 50, 7)
	s := c.server(b)
	defer s.Close()
	for _, rep := range c.reports(0) {
		s.Report(context.Background(), rep)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.runRound()
	}
}

// BenchmarkAssign100x50 is the algorithm alone.
func BenchmarkAssign100x50(b *testing.B) {
	c := newSimCluster(100, 50, 7)
	s := c.server(b)
	defer s.Close()
	for _, rep := range c.reports(0) {
		s.Report(context.Background(), rep)
	}
	s.runRound()
	for _, rep := range c.reports(s.Epoch()) {
		s.Report(context.Background(), rep)
	}
	s.mu.Lock()
	in := s.inputLocked(s.clock.Now())
	s.mu.Unlock()
	alg := Crystal{Headroom: DefaultHeadroom}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		alg.Assign(in)
	}
}
