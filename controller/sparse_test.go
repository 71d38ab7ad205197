package controller

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// expand returns out with every input tenant listed on every gateway (the
// defaults written out), as the dense algorithm gave it.
func expand(in Input, out Output) Output {
	full := Output{Assignments: make(map[string]map[string]Assignment, len(in.Gateways)), Shortfalls: out.Shortfalls}
	tenants := inputTenants(in)
	for _, g := range in.Gateways {
		m := make(map[string]Assignment, len(tenants))
		for _, t := range tenants {
			m[t.Tenant] = out.Get(g.ID, t.Tenant)
		}
		full.Assignments[g.ID] = m
	}
	return full
}

// sameRate reports whether a and b agree within a relative 1e-9 (and an
// absolute eps of the problem's scale): the sparse algorithm adds the
// leftover of step 4 in another order than the dense one did.
func sameRate(a, b, scale float64) bool {
	if math.IsInf(a, 1) || math.IsInf(b, 1) {
		return a == b
	}
	return math.Abs(a-b) <= 1e-9*math.Max(scale, math.Max(math.Abs(a), math.Abs(b)))
}

// compareWithDense runs the sparse and the dense (reference) algorithm on
// in and requires the same assignments, shortfalls and listing rules.
func compareWithDense(t *testing.T, in Input, alg Crystal) {
	t.Helper()
	sparse := alg.Assign(in)
	dense := denseCrystal(alg).Assign(in)
	scale := 1.0
	for _, g := range in.Gateways {
		for r := Resource(0); r < NumResources; r++ {
			scale = math.Max(scale, finite(g.Capacity.Get(r)))
		}
	}
	for _, tn := range in.Tenants {
		scale = math.Max(scale, tn.Min.ReadBPS+tn.Min.WriteBPS+tn.Min.ReadIOPS+tn.Min.WriteIOPS)
	}
	for _, g := range in.Gateways {
		if _, ok := sparse.Defaults[g.ID]; !ok {
			t.Fatalf("no default for %s", g.ID)
		}
		if !sparse.Defaults[g.ID].Minimum.IsZero() {
			t.Fatalf("default on %s has a minimum: %+v", g.ID, sparse.Defaults[g.ID])
		}
		for _, l := range g.Loads {
			if _, ok := sparse.Assignments[g.ID][l.Tenant]; !ok {
				t.Fatalf("%s reported by %s is not listed", l.Tenant, g.ID)
			}
		}
		if len(dense.Assignments[g.ID]) != len(inputTenants(in)) {
			t.Fatalf("dense lists %d tenants on %s", len(dense.Assignments[g.ID]), g.ID)
		}
		for tn, d := range dense.Assignments[g.ID] {
			s := sparse.Get(g.ID, tn)
			for r := Resource(0); r < NumResources; r++ {
				if !sameRate(s.Limit.Get(r), d.Limit.Get(r), scale) || !sameRate(s.Minimum.Get(r), d.Minimum.Get(r), scale) {
					t.Fatalf("%s on %s, %s: sparse limit %v minimum %v, dense limit %v minimum %v",
						tn, g.ID, r, s.Limit.Get(r), s.Minimum.Get(r), d.Limit.Get(r), d.Minimum.Get(r))
				}
			}
		}
	}
	if len(sparse.Shortfalls) != len(dense.Shortfalls) {
		t.Fatalf("shortfalls: sparse %+v, dense %+v", sparse.Shortfalls, dense.Shortfalls)
	}
	for i, d := range dense.Shortfalls {
		s := sparse.Shortfalls[i]
		if s.Tenant != d.Tenant || s.Resource != d.Resource || s.Reason != d.Reason ||
			!sameRate(s.Want, d.Want, scale) || !sameRate(s.Placed, d.Placed, scale) {
			t.Fatalf("shortfall %d: sparse %+v, dense %+v", i, s, d)
		}
	}
}

// TestSparseMatchesDense: the sparse algorithm gives what the dense one
// (dense_ref_test.go, the implementation before it) gave, on the property
// tests' random clusters, on larger ones with idle tenants and maximums
// (step 4's defaults and exceptions), and on the simulated cluster.
func TestSparseMatchesDense(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 300
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < n; i++ {
		in := randomInput(rng)
		alg := Crystal{Headroom: []float64{0, 0.1, 0.5}[i%3], MaxSteps: []int{0, 0, 3}[i%3]}
		if !t.Run(fmt.Sprintf("small%d", i), func(t *testing.T) { compareWithDense(t, in, alg) }) {
			t.Logf("input: %+v", in)
			return
		}
	}
	for i := 0; i < n/10; i++ {
		in := sparseInput(rng)
		if !t.Run(fmt.Sprintf("idle%d", i), func(t *testing.T) { compareWithDense(t, in, Crystal{Headroom: DefaultHeadroom}) }) {
			return
		}
	}
	c := newSimCluster(40, 300, 7)
	s := c.server(t)
	defer s.Close()
	for round := 0; round < 3; round++ {
		for _, rep := range c.reports(s.Epoch()) {
			if _, err := s.Report(t.Context(), rep); err != nil {
				t.Fatal(err)
			}
		}
		s.runRound()
		s.mu.Lock()
		in := s.inputLocked(s.clock.Now())
		s.mu.Unlock()
		t.Run(fmt.Sprintf("sim%d", round), func(t *testing.T) { compareWithDense(t, in, Crystal{Headroom: DefaultHeadroom}) })
	}
}

// sparseInput draws a cluster where most tenants are idle on most
// gateways, some gateways have leftover and many tenants have maximums.
func sparseInput(rng *rand.Rand) Input {
	nG, nT := 2+rng.IntN(20), 5+rng.IntN(60)
	var in Input
	for t := 0; t < nT; t++ {
		slo := SLO{Tenant: fmt.Sprintf("t%02d", t)}
		for r := Resource(0); r < NumResources; r++ {
			if rng.IntN(3) == 0 {
				slo.Min.Set(r, float64(rng.IntN(100)))
			}
			if rng.IntN(3) == 0 {
				slo.Max.Set(r, slo.Min.Get(r)+float64(rng.IntN(300)))
			}
		}
		in.Tenants = append(in.Tenants, slo)
	}
	for g := 0; g < nG; g++ {
		gl := GatewayLoad{ID: fmt.Sprintf("g%02d", g)}
		for r := Resource(0); r < NumResources; r++ {
			c := float64(50 + rng.IntN(2000))
			if rng.IntN(10) == 0 {
				c = inf
			}
			gl.Capacity.Set(r, c)
		}
		for t := 0; t < nT; t++ {
			if rng.IntN(5) > 0 {
				continue
			}
			l := Load{Tenant: fmt.Sprintf("t%02d", t)}
			for r := Resource(0); r < NumResources; r++ {
				if rng.IntN(3) > 0 {
					l.Demand.Set(r, float64(rng.IntN(80)))
				}
				l.Unbounded[r] = rng.IntN(4) == 0
			}
			gl.Loads = append(gl.Loads, l)
		}
		in.Gateways = append(in.Gateways, gl)
	}
	return in
}

// TestRoundSetsAreSparse: a round's set for a gateway lists the tenants
// the gateway reported (and those whose limits differ from the default),
// carries the default for every other tenant, and For gives every tenant
// what the algorithm gave it; the status sums the defaults as the dense
// sets summed every entry.
func TestRoundSetsAreSparse(t *testing.T) {
	const nG, nT = 40, 300
	c := newSimCluster(nG, nT, 9)
	s := c.server(t)
	defer s.Close()
	for round := 0; round < 2; round++ {
		reps := c.reports(s.Epoch())
		for _, rep := range reps {
			if _, err := s.Report(t.Context(), rep); err != nil {
				t.Fatal(err)
			}
		}
		s.mu.Lock()
		in := s.inputLocked(s.clock.Now())
		s.mu.Unlock()
		s.runRound()
		out := s.alg.Assign(in)
		full := expand(in, out)
		assigned := map[string]Rates{}
		listed := 0
		for _, rep := range reps {
			set, ok, err := s.Assignments(t.Context(), rep.Gateway, 0, 0)
			if err != nil || !ok {
				t.Fatalf("no set for %s: %v", rep.Gateway, err)
			}
			if set.Default == nil {
				t.Fatalf("set for %s has no default", rep.Gateway)
			}
			for _, tr := range rep.Tenants {
				if _, ok := set.Assignments[tr.Tenant]; !ok {
					t.Fatalf("%s reported %s, not listed in its set", rep.Gateway, tr.Tenant)
				}
			}
			listed += len(set.Assignments)
			for tn, a := range full.Assignments[rep.Gateway] {
				got, ok := set.For(tn)
				if want := LimitsFor(a); !ok || got != want {
					t.Fatalf("%s on %s: set gives %+v, want %+v", tn, rep.Gateway, got, want)
				}
				r := assigned[tn]
				addRates(&r, a.Limit)
				assigned[tn] = r
			}
		}
		// Beyond the reported pairs only tenants with a maximum can be
		// listed (step 4 shares leftover by the maximum's budget).
		pairs, bounded := 0, 0
		for _, rep := range reps {
			pairs += len(rep.Tenants)
		}
		for _, tn := range in.Tenants {
			if !tn.Max.IsZero() {
				bounded++
			}
		}
		if listed < pairs || listed > pairs+bounded*nG {
			t.Errorf("round %d: the sets list %d entries; %d reported pairs, %d tenants with a maximum", round, listed, pairs, bounded)
		}
		t.Logf("round %d: %d entries listed in %d sets for %d reported pairs (dense: %d)", round, listed, nG, pairs, nG*len(in.Tenants))
		st := s.Status()
		for _, ts := range st.Tenants {
			want := assigned[ts.Tenant]
			for r := Resource(0); r < NumResources; r++ {
				if !sameRate(ts.Assigned.Get(r), want.Get(r), 1e3*want.Get(r)) {
					t.Errorf("status: %s assigned %s %v, want %v", ts.Tenant, r, ts.Assigned.Get(r), want.Get(r))
				}
			}
		}
	}
}

// An assignment set from a controller before defaults (every tenant
// listed, no default) still works: For finds the listed tenants and
// reports the others unassigned; and two sets differing only in their
// default are not Equal.
func TestAssignmentSetWithoutDefault(t *testing.T) {
	old := AssignmentSet{Epoch: 1, Gateway: "g", Assignments: map[string]qos.Limits{"a": {ReadBPS: 5}}}
	if l, ok := old.For("a"); !ok || l.ReadBPS != 5 {
		t.Errorf("listed tenant: %+v %v", l, ok)
	}
	if _, ok := old.For("b"); ok {
		t.Error("an unlisted tenant of a set without default is assigned")
	}
	d1, d2 := qos.Limits{ReadBPS: 1}, qos.Limits{ReadBPS: 2}
	a, b := old, old
	a.Default, b.Default = &d1, &d2
	if a.Equal(b) || a.Equal(old) || !a.Equal(a) {
		t.Error("Equal ignores the default")
	}
	if l, ok := a.For("b"); !ok || l != d1 {
		t.Errorf("unlisted tenant: %+v %v", l, ok)
	}
}
