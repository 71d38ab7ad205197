package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// TestSimulation1000Gateways10000Tenants is issue 23's scale: 1,000
// gateways and 10,000 tenants (6,000 with SLOs; each tenant on 4 to 30
// gateways, about 170,000 tenant-gateway pairs) on a controller whose
// desired state is in a real etcd (internal/etcdtest). It reports and
// bounds:
//
//   - the etcd writes of setting it up (the SLOs and the registrations,
//     one fenced transaction each) and the rate reached;
//   - the time to compute one round's assignments (the round's thread's
//     CPU time: the machine is shared), over a few rounds of reports;
//   - the etcd writes made by reports and rounds: none (runtime state
//     goes to the leader, never to etcd), read from etcd's own revision;
//   - the etcd writes of churn (simChurn): one per gateway that joins or
//     leaves, none when a known gateway registers again unchanged (as
//     every gateway does when it restarts or finds a new leader).
//
// It runs without the race detector (make unit runs it so; under -race
// it is skipped: ten times slower and nothing racy that the smaller
// simulation does not cover).
func TestSimulation1000Gateways10000Tenants(t *testing.T) {
	if raceEnabled {
		t.Skip("the 1,000-gateway simulation runs without -race (make unit)")
	}
	const nG, nT, rounds = 1000, 10000, 3
	ctx := context.Background()
	c := newSimCluster(nG, nT, 11)
	ep := startEtcd(t)
	cli := etcdClient(t, ep)
	s, err := Open(ctx, Options{Store: openTestEtcdStore(t, ep, "http://sim"), Logger: quietLogger(), Advertise: "http://sim"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// No Run loop: the test takes the lead and runs the rounds itself.
	testwait.For(t, "the only replica leads", func() bool { return s.syncLeadership(ctx) })

	revision := func() int64 {
		r, err := cli.Get(ctx, "sluice-sim-revision-probe")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	rev0, t0 := revision(), time.Now()
	for _, slo := range c.slos {
		if _, err := s.SetSLO(ctx, slo); err != nil {
			t.Fatal(err)
		}
	}
	for i, g := range c.gateways {
		if _, err := s.Register(ctx, GatewayRegistration{ID: g.id, Address: simAddress(i)}); err != nil {
			t.Fatal(err)
		}
	}
	setup, setupWrites := time.Since(t0), revision()-rev0
	if want := int64(len(c.slos) + nG); setupWrites < want {
		t.Errorf("setting up wrote %d revisions to etcd, want at least one per SLO and gateway (%d)", setupWrites, want)
	}

	rev1 := revision()
	var cpu, wall []time.Duration
	edges := 0
	for _, g := range c.gateways {
		edges += len(g.tenants)
	}
	var reportBytes, setBytes, listed int
	for round := 0; round < rounds; round++ {
		reps := c.reports(s.Epoch())
		for _, rep := range reps {
			if _, err := s.Report(ctx, rep); err != nil {
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
		sets := len(s.sets)
		in := s.inputLocked(s.clock.Now())
		s.mu.Unlock()
		if sets != nG {
			t.Fatalf("round %d: %d assignment sets, want %d", round, sets, nG)
		}
		if round == rounds-1 {
			checkInvariants(t, in, Crystal{Headroom: DefaultHeadroom}, s.alg.Assign(in))
			// What goes over the wire at this scale, as JSON.
			for _, rep := range reps {
				b, err := json.Marshal(rep)
				if err != nil {
					t.Fatal(err)
				}
				reportBytes += len(b)
			}
			s.mu.Lock()
			for _, set := range s.sets {
				b, err := json.Marshal(set)
				if err != nil {
					t.Fatal(err)
				}
				setBytes += len(b)
				listed += len(set.Assignments)
			}
			s.mu.Unlock()
		}
	}
	roundWrites := revision() - rev1
	median := slices.Sorted(slices.Values(cpu))[len(cpu)/2]
	t.Logf("cluster: %d gateways, %d tenants, %d SLOs, %d tenant-gateway pairs", nG, nT, len(c.slos), edges)
	t.Logf("etcd at set-up: %d writes in %v (%.0f writes/s, one client, one member, fsync per write)",
		setupWrites, setup.Round(time.Millisecond), float64(setupWrites)/setup.Seconds())
	t.Logf("round: median %v CPU (max %v), wall %v (max %v), over %d rounds",
		median, slices.Max(cpu), slices.Sorted(slices.Values(wall))[len(wall)/2], slices.Max(wall), rounds)
	t.Logf("wire, per second: reports %d B per gateway (%.0f B per tenant on it), %.1f MiB/s in all; sets %d B per gateway (%.0f tenants listed of %d), %.1f MiB/s in all",
		reportBytes/nG, float64(reportBytes)/float64(edges), float64(reportBytes)/(1<<20), setBytes/nG, float64(listed)/nG, nT, float64(setBytes)/(1<<20))
	t.Logf("etcd writes during %d rounds of %d reports each: %d", rounds, nG, roundWrites)
	if roundWrites != 0 {
		t.Errorf("reports and rounds wrote %d revisions to etcd; runtime state must stay out of it", roundWrites)
	}
	simChurn(ctx, t, s, c, revision)
	// A round must fit in its interval (1 s): the sparse algorithm takes
	// about 0.45 s of CPU here on a quiet machine (the dense one ~16 s).
	// CPU time is no shield from a busy machine: beside stress-ng --cpu 4
	// on these 2 vCPUs (which share caches and a core's pipelines) the
	// same round took 1.09 s of CPU. So the test's bound is 2.5 s, a guard
	// against the dense algorithm's return, and the claim of fitting the
	// interval rests on the quiet measurement in docs/CONTROLLER.md.
	if median > 2500*time.Millisecond {
		t.Errorf("median round %v CPU, want under 2.5 s (0.45 s on a quiet machine; the round interval is 1 s)", median)
	}
}

// simChurn: 100 gateways join, every known gateway registers again with
// the same address, the 100 leave; it logs and checks the etcd writes of
// each, read from etcd's revision, and the rate the joins were written at.
func simChurn(ctx context.Context, t *testing.T, s *Server, c *simCluster, revision func() int64) {
	const joins = 100
	id := func(i int) string { return fmt.Sprintf("sim-join-%d", i) }
	rev, t0 := revision(), time.Now()
	for i := 0; i < joins; i++ {
		if _, err := s.Register(ctx, GatewayRegistration{ID: id(i), Address: simAddress(len(c.gateways) + i)}); err != nil {
			t.Fatal(err)
		}
	}
	joinTime, joinWrites := time.Since(t0), revision()-rev
	rev = revision()
	for i, g := range c.gateways {
		if _, err := s.Register(ctx, GatewayRegistration{ID: g.id, Address: simAddress(i)}); err != nil {
			t.Fatal(err)
		}
	}
	againWrites := revision() - rev
	rev = revision()
	for i := 0; i < joins; i++ {
		if err := s.Deregister(ctx, id(i)); err != nil {
			t.Fatal(err)
		}
	}
	leaveWrites := revision() - rev
	t.Logf("etcd writes at churn: %d gateways joining %d (%.0f writes/s as fast as they came), %d known gateways registering again %d, %d leaving %d",
		joins, joinWrites, float64(joinWrites)/joinTime.Seconds(), len(c.gateways), againWrites, joins, leaveWrites)
	if joinWrites != joins || againWrites != 0 || leaveWrites != joins {
		t.Errorf("churn wrote %d, %d and %d revisions; want one per join (%d), none for the unchanged registrations, one per leave (%d)",
			joinWrites, againWrites, leaveWrites, joins, joins)
	}
}

// BenchmarkRound1000x10000 is one round at issue 23's scale, in memory.
func BenchmarkRound1000x10000(b *testing.B) {
	c := newSimCluster(1000, 10000, 11)
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
