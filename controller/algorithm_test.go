package controller

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

const mb = 1 << 20

var inf = math.Inf(1)

// readCap is a capacity with only read bandwidth known (other resources
// unknown: no capacity-derived limit).
func readCap(bw float64) Rates {
	return Rates{ReadBPS: bw, WriteBPS: inf, ReadIOPS: inf, WriteIOPS: inf}
}

// wants is a tenant held back on reads (wants more than demand d).
func wants(t string, d float64) Load {
	l := Load{Tenant: t, Demand: Rates{ReadBPS: d}}
	l.Unbounded[ReadBW] = true
	return l
}

// uses is a tenant that reads d and is not held back.
func uses(t string, d float64) Load { return Load{Tenant: t, Demand: Rates{ReadBPS: d}} }

func minRead(t string, min float64) SLO { return SLO{Tenant: t, Min: Rates{ReadBPS: min}} }

func gw(id string, c Rates, loads ...Load) GatewayLoad {
	return GatewayLoad{ID: id, Capacity: c, Loads: loads}
}

// readTotals sums each tenant's read-bandwidth limits over gateways.
func readTotals(out Output) map[string]float64 {
	tot := map[string]float64{}
	for _, m := range out.Assignments {
		for t, a := range m {
			tot[t] += a.Limit.ReadBPS
		}
	}
	return tot
}

func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.6g, want %.6g ± %.3g", what, got, want, tol)
	}
}

// Crystal Fig. 7 in miniature: three tenants with different minimums on
// three gateways, all pressing for more: each gets its minimum plus an
// equal third of the spare, spread evenly.
func TestMinimumsThenEqualSpare(t *testing.T) {
	var gws []GatewayLoad
	for i := 1; i <= 3; i++ {
		gws = append(gws, gw(fmt.Sprintf("g%d", i), readCap(100*mb), wants("gold", 10*mb), wants("silver", 10*mb), wants("bronze", 10*mb)))
	}
	in := Input{Tenants: []SLO{minRead("bronze", 0), minRead("gold", 90*mb), minRead("silver", 60*mb)}, Gateways: gws}
	out := expand(in, Crystal{}.Assign(in))
	if !out.Feasible() {
		t.Fatalf("shortfalls: %+v", out.Shortfalls)
	}
	tot := readTotals(out)
	near(t, "gold", tot["gold"], 140*mb, 1)
	near(t, "silver", tot["silver"], 110*mb, 1)
	near(t, "bronze", tot["bronze"], 50*mb, 1)
	for g, m := range out.Assignments {
		sum := 0.0
		for _, a := range m {
			sum += a.Limit.ReadBPS
		}
		near(t, g+" total", sum, 100*mb, 1)
		near(t, g+" gold", m["gold"].Limit.ReadBPS, (30+50.0/3)*mb, 1)
		near(t, g+" gold minimum", m["gold"].Minimum.ReadBPS, 30*mb, 1)
	}
	// Resources without a known capacity and without SLOs stay unlimited.
	if l := out.Assignments["g1"]["gold"].Limit; !math.IsInf(l.WriteBPS, 1) || !math.IsInf(l.ReadIOPS, 1) {
		t.Errorf("unknown-capacity resources got limits: %+v", l)
	}
	checkInvariants(t, in, Crystal{}, out)
}

// 3 tenants with minimums on 2 to 6 gateways, each tenant on a different
// subset, demands uneven: minimums met, split by demand, the rest fair.
func TestThreeTenantsOnTwoToSixGateways(t *testing.T) {
	for n := 2; n <= 6; n++ {
		t.Run(fmt.Sprintf("%d gateways", n), func(t *testing.T) {
			var gws []GatewayLoad
			for i := 0; i < n; i++ {
				var loads []Load
				if i%2 == 0 || i == 1 { // gold on even gateways and g1
					loads = append(loads, wants("gold", float64(1+i)*mb))
				}
				if i >= n/2 { // silver on the upper half
					loads = append(loads, wants("silver", 5*mb))
				}
				loads = append(loads, wants("bronze", 2*mb)) // bronze everywhere
				gws = append(gws, gw(fmt.Sprintf("g%d", i), readCap(100*mb), loads...))
			}
			in := Input{Tenants: []SLO{minRead("gold", 40*float64(n)*mb/2), minRead("silver", 30*mb), minRead("bronze", 10*mb)}, Gateways: gws}
			out := expand(in, Crystal{}.Assign(in))
			if !out.Feasible() {
				t.Fatalf("shortfalls: %+v", out.Shortfalls)
			}
			checkInvariants(t, in, Crystal{}, out)
			// Everyone wants more everywhere: every gateway is full.
			for g, m := range out.Assignments {
				sum := 0.0
				for _, a := range m {
					sum += a.Limit.ReadBPS
				}
				near(t, g+" total", sum, 100*mb, 1)
			}
		})
	}
}

// A tenant alone on one gateway and another on two: max-min fairness puts
// the second on its other gateway rather than splitting the shared one.
func TestSpareRoutesAroundContention(t *testing.T) {
	in := Input{Gateways: []GatewayLoad{
		gw("g1", readCap(100*mb), wants("a", mb), wants("b", mb)),
		gw("g2", readCap(100*mb), wants("b", mb)),
	}}
	out := expand(in, Crystal{}.Assign(in))
	tot := readTotals(out)
	near(t, "a", tot["a"], 100*mb, 0.01*mb)
	near(t, "b", tot["b"], 100*mb, 0.01*mb)
	checkInvariants(t, in, Crystal{}, out)
}

// An overloaded gateway pushes minimums to another gateway where the same
// tenant has work.
func TestOverloadedGatewayReroutesMinimums(t *testing.T) {
	in := Input{
		Tenants: []SLO{minRead("gold", 120*mb), minRead("silver", 70*mb)},
		Gateways: []GatewayLoad{
			gw("g1", readCap(100*mb), wants("gold", 10*mb), wants("silver", 10*mb)),
			gw("g2", readCap(100*mb), wants("gold", 10*mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	if !out.Feasible() {
		t.Fatalf("shortfalls: %+v", out.Shortfalls)
	}
	a := out.Assignments
	near(t, "gold minimum on g1", a["g1"]["gold"].Minimum.ReadBPS, 30*mb, 1)
	near(t, "gold minimum on g2", a["g2"]["gold"].Minimum.ReadBPS, 90*mb, 1)
	near(t, "silver minimum on g1", a["g1"]["silver"].Minimum.ReadBPS, 70*mb, 1)
	// g2's 10 MB/s of spare can only go to gold.
	near(t, "gold on g2", a["g2"]["gold"].Limit.ReadBPS, 100*mb, 1)
	checkInvariants(t, in, Crystal{}, out)
}

// A chain: freeing g2 needs gold to move to g1 so that silver can move
// from g3 to g2. Greedy one-hop moves fail here; augmenting paths do not.
func TestRerouteAlongAChain(t *testing.T) {
	in := Input{
		Tenants: []SLO{minRead("gold", 100*mb), minRead("silver", 100*mb), minRead("bronze", 90*mb)},
		Gateways: []GatewayLoad{
			gw("g1", readCap(100*mb), wants("gold", mb)),
			gw("g2", readCap(100*mb), wants("gold", mb), wants("silver", mb)),
			gw("g3", readCap(100*mb), wants("silver", mb), wants("bronze", mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	if !out.Feasible() {
		t.Fatalf("shortfalls: %+v", out.Shortfalls)
	}
	a := out.Assignments
	near(t, "gold on g1", a["g1"]["gold"].Minimum.ReadBPS, 90*mb, 1)
	near(t, "silver on g2", a["g2"]["silver"].Minimum.ReadBPS, 90*mb, 1)
	near(t, "bronze on g3", a["g3"]["bronze"].Minimum.ReadBPS, 90*mb, 1)
	checkInvariants(t, in, Crystal{}, out)
}

// Minimums above capacity: reported, and the best assignment is still
// given (gateways full, the largest minimums cut first).
func TestInfeasibleMinimums(t *testing.T) {
	in := Input{
		Tenants: []SLO{minRead("gold", 150*mb), minRead("silver", 100*mb), minRead("bronze", 20*mb)},
		Gateways: []GatewayLoad{
			gw("g1", readCap(100*mb), wants("gold", mb), wants("silver", mb), wants("bronze", mb)),
			gw("g2", readCap(100*mb), wants("gold", mb), wants("silver", mb), wants("bronze", mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	if out.Feasible() {
		t.Fatal("270 MB/s of minimums on 200 MB/s reported feasible")
	}
	tot := readTotals(out)
	near(t, "gold", tot["gold"], 90*mb, 1) // level 45 per gateway
	near(t, "silver", tot["silver"], 90*mb, 1)
	near(t, "bronze", tot["bronze"], 20*mb, 1) // small minimums are not cut
	byTenant := map[string]Shortfall{}
	for _, s := range out.Shortfalls {
		byTenant[s.Tenant] = s
		if !strings.Contains(s.Reason, "exceed the capacity") {
			t.Errorf("reason %q", s.Reason)
		}
	}
	if s := byTenant["gold"]; s.Resource != "read_bw" || math.Abs(s.Want-150*mb) > 1 || math.Abs(s.Placed-90*mb) > 1 {
		t.Errorf("gold shortfall %+v", s)
	}
	if _, ok := byTenant["bronze"]; ok || len(out.Shortfalls) != 2 {
		t.Errorf("shortfalls %+v", out.Shortfalls)
	}
	checkInvariants(t, in, Crystal{}, out)
}

// A minimum that fits in total but not where the tenant has work.
func TestShortfallWhereTheTenantIs(t *testing.T) {
	in := Input{
		Tenants: []SLO{minRead("gold", 150*mb)},
		Gateways: []GatewayLoad{
			gw("g1", readCap(100*mb), wants("gold", mb)),
			gw("g2", readCap(100*mb), wants("silver", mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	if len(out.Shortfalls) != 1 || !strings.Contains(out.Shortfalls[0].Reason, "g1") {
		t.Fatalf("shortfalls %+v", out.Shortfalls)
	}
	checkInvariants(t, in, Crystal{}, out)
}

func TestMaximumAcrossGateways(t *testing.T) {
	in := Input{
		Tenants: []SLO{{Tenant: "capped", Max: Rates{ReadBPS: 50 * mb}}},
		Gateways: []GatewayLoad{
			gw("g1", readCap(100*mb), wants("capped", mb), wants("other", mb)),
			gw("g2", readCap(100*mb), wants("capped", mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	tot := readTotals(out)
	near(t, "capped", tot["capped"], 50*mb, 1)
	near(t, "other on g1", out.Assignments["g1"]["other"].Limit.ReadBPS, 100*mb, 1)
	// g2's other 50 MB/s is idle slack: "other" has no work there.
	near(t, "other on g2", out.Assignments["g2"]["other"].Limit.ReadBPS, 50*mb, 1)
	checkInvariants(t, in, Crystal{}, out)
}

// A tenant that is not held back gets its demand plus headroom; the rest
// goes to those that want more; capacity nobody wants is shared by all.
func TestDemandAndHeadroom(t *testing.T) {
	alg := Crystal{Headroom: 0.1}
	in := Input{Gateways: []GatewayLoad{gw("g1", readCap(100*mb), uses("light", 10*mb), wants("heavy", 50*mb))}}
	out := expand(in, alg.Assign(in))
	a := out.Assignments["g1"]
	near(t, "light", a["light"].Limit.ReadBPS, 11*mb, 1)
	near(t, "heavy", a["heavy"].Limit.ReadBPS, 89*mb, 1)
	checkInvariants(t, in, alg, out)

	in = Input{Tenants: []SLO{{Tenant: "idle"}}, Gateways: []GatewayLoad{gw("g1", readCap(100*mb), uses("light", 10*mb))}}
	out = expand(in, alg.Assign(in))
	a = out.Assignments["g1"]
	// light: 11 by demand, then the 89 left over split between both.
	near(t, "light", a["light"].Limit.ReadBPS, 55.5*mb, 1)
	near(t, "idle", a["idle"].Limit.ReadBPS, 44.5*mb, 1)
	checkInvariants(t, in, alg, out)
}

// A minimum is only reserved for demand: a tenant that asks for less than
// its minimum gets what it asks for (plus headroom) and the rest is
// shared; an idle tenant with a minimum reserves nothing.
func TestMinimumCappedByDemand(t *testing.T) {
	alg := Crystal{Headroom: 0.1}
	in := Input{
		Tenants:  []SLO{minRead("gold", 50*mb), minRead("idle", 50*mb)},
		Gateways: []GatewayLoad{gw("g1", readCap(100*mb), uses("gold", 20*mb), wants("bronze", mb))},
	}
	out := expand(in, alg.Assign(in))
	a := out.Assignments["g1"]
	near(t, "gold minimum", a["gold"].Minimum.ReadBPS, 22*mb, 1)
	near(t, "gold", a["gold"].Limit.ReadBPS, 22*mb, 1)
	near(t, "bronze", a["bronze"].Limit.ReadBPS, 78*mb, 1)
	if a["idle"].Limit.ReadBPS != 0 || !out.Feasible() {
		t.Errorf("idle %+v, shortfalls %+v", a["idle"], out.Shortfalls)
	}
	checkInvariants(t, in, alg, out)
}

// Tenants join and leave over rounds; each round's assignment is a
// function of that round's input only.
func TestTenantsJoiningAndLeaving(t *testing.T) {
	slos := []SLO{minRead("gold", 60*mb), minRead("silver", 30*mb)}
	g := func(loads ...Load) []GatewayLoad {
		return []GatewayLoad{gw("g1", readCap(100*mb), loads...), gw("g2", readCap(100*mb), loads...)}
	}
	rounds := []struct {
		name  string
		loads []Load
		want  map[string]float64
	}{
		{"gold alone", []Load{wants("gold", mb)}, map[string]float64{"gold": 200, "silver": 0}},
		{"silver joins", []Load{wants("gold", mb), wants("silver", mb)}, map[string]float64{"gold": 115, "silver": 85}},
		{"bronze joins", []Load{wants("gold", mb), wants("silver", mb), wants("bronze", mb)}, map[string]float64{"gold": 60 + 110.0/3, "silver": 30 + 110.0/3, "bronze": 110.0 / 3}},
		{"gold leaves", []Load{wants("silver", mb), wants("bronze", mb)}, map[string]float64{"gold": 0, "silver": 115, "bronze": 85}},
	}
	for _, r := range rounds {
		in := Input{Tenants: slos, Gateways: g(r.loads...)}
		out := expand(in, Crystal{}.Assign(in))
		tot := readTotals(out)
		for tn, w := range r.want {
			near(t, r.name+": "+tn, tot[tn], w*mb, 1)
		}
		checkInvariants(t, in, Crystal{}, out)
	}
}

// Unknown capacity: no limit unless a maximum applies, which is split by
// demand.
func TestUnknownCapacity(t *testing.T) {
	in := Input{
		Tenants: []SLO{{Tenant: "capped", Max: Rates{ReadBPS: 90 * mb}}},
		Gateways: []GatewayLoad{
			gw("g1", Rates{ReadBPS: inf}, wants("capped", 10*mb), wants("free", mb)),
			gw("g2", Rates{ReadBPS: inf}, wants("capped", 20*mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	a := out.Assignments
	near(t, "capped on g1", a["g1"]["capped"].Limit.ReadBPS, 30*mb, 1)
	near(t, "capped on g2", a["g2"]["capped"].Limit.ReadBPS, 60*mb, 1)
	if !math.IsInf(a["g1"]["free"].Limit.ReadBPS, 1) || !math.IsInf(a["g2"]["free"].Limit.ReadBPS, 1) {
		t.Errorf("free: %+v %+v", a["g1"]["free"], a["g2"]["free"])
	}
	if l := LimitsFor(a["g1"]["free"]); l.ReadBPS != 0 || l.WriteBPS != minLimitBPS { // write capacity 0: nothing
		t.Errorf("no-limit assignment as queue limits: %+v", l)
	}
	if l := LimitsFor(a["g1"]["capped"]); l.ReadBPS != math.Floor(30*mb) {
		t.Errorf("capped as queue limits: %+v", l)
	}
	checkInvariants(t, in, Crystal{}, out)
}

func TestLimitsFor(t *testing.T) {
	a := Assignment{
		Limit:   Rates{ReadBPS: 0, WriteBPS: 1234.567, ReadIOPS: inf, WriteIOPS: 0.2},
		Minimum: Rates{ReadBPS: 0, WriteBPS: 1000.9, ReadIOPS: 3.333, WriteIOPS: 0.2},
	}
	l := LimitsFor(a)
	if l.ReadBPS != minLimitBPS || l.WriteBPS != 1234 || l.ReadIOPS != 0 || l.WriteIOPS != minLimitIOPS ||
		l.ReservationBPS != 1000 || l.ReservationIOPS != 3.53 {
		t.Errorf("LimitsFor = %+v", l)
	}
	if err := l.Validate(); err != nil {
		t.Error(err)
	}
}

func TestLoadFromReport(t *testing.T) {
	tr := TenantReport{Tenant: "t",
		Read:  OpReport{BPS: 95, IOPS: 10, DemandBPS: 120, DemandIOPS: 12, Throttled: true},
		Write: OpReport{BPS: 50, IOPS: 3, DemandBPS: 40, Throttled: false}}
	// Read bandwidth at its limit: only it is unbounded; IOPS far from
	// its limit is not.
	l := LoadFromReport(tr, Rates{ReadBPS: 100, ReadIOPS: 100, WriteBPS: 60}, true)
	if !l.Unbounded[ReadBW] || l.Unbounded[ReadIOPS] || l.Unbounded[WriteBW] || l.Unbounded[WriteIOPS] {
		t.Errorf("unbounded %v", l.Unbounded)
	}
	if l.Demand.ReadBPS != 120 || l.Demand.WriteBPS != 50 || l.Demand.ReadIOPS != 12 {
		t.Errorf("demand %+v", l.Demand)
	}
	// Throttled but at no limit (the device held it back, or no previous
	// round): both resources of the op.
	for _, last := range []Rates{{ReadBPS: 1000, ReadIOPS: 1000}, {ReadBPS: inf, ReadIOPS: inf}} {
		l = LoadFromReport(tr, last, true)
		if !l.Unbounded[ReadBW] || !l.Unbounded[ReadIOPS] || l.Unbounded[WriteBW] {
			t.Errorf("last %+v: unbounded %v", last, l.Unbounded)
		}
	}
	l = LoadFromReport(tr, Rates{}, false)
	if !l.Unbounded[ReadBW] || !l.Unbounded[ReadIOPS] {
		t.Errorf("first round: unbounded %v", l.Unbounded)
	}
}

func TestWaterLevelAndFill(t *testing.T) {
	if l := waterLevel(60, []float64{10, 50, 100}); math.Abs(l-25) > 1e-9 {
		t.Errorf("level %v, want 25", l)
	}
	got := fill(60, []float64{10, inf, 100})
	if got[0] != 10 || got[1] != 25 || got[2] != 25 {
		t.Errorf("fill %v", got)
	}
	got = fill(inf, []float64{10, inf})
	if got[0] != 10 || !math.IsInf(got[1], 1) {
		t.Errorf("fill inf %v", got)
	}
	p := &problem{}
	dem := func(i int) float64 { return []float64{1, 3}[i] }
	takes := p.spread(30, []float64{10, 40}, dem, make([]float64, 2), nil)
	if takes[0] != 0 || takes[1] != 30 {
		t.Errorf("spread %v", takes)
	}
	takes = p.spread(40, []float64{10, 40}, dem, make([]float64, 2), nil)
	if takes[0] != 5 || takes[1] != 35 {
		t.Errorf("spread %v", takes)
	}
	takes = p.spread(40, []float64{inf, inf}, dem, make([]float64, 2), nil)
	if takes[0] != 10 || takes[1] != 30 {
		t.Errorf("spread over unbounded slots %v", takes)
	}
}

// An idle tenant's maximum is spread over the gateways as slack, not spent
// on the first one, so that it can start anywhere.
func TestIdleMaximumSpreadEvenly(t *testing.T) {
	in := Input{
		Tenants: []SLO{{Tenant: "capped", Max: Rates{ReadBPS: 90 * mb}}},
		Gateways: []GatewayLoad{
			gw("g1", readCap(100*mb)), gw("g2", readCap(100*mb)), gw("g3", readCap(20*mb), wants("busy", mb)),
		},
	}
	out := expand(in, Crystal{}.Assign(in))
	a := out.Assignments
	// g3 is taken by busy; capped gets 45 on each of g1 and g2.
	near(t, "capped on g1", a["g1"]["capped"].Limit.ReadBPS, 45*mb, 1)
	near(t, "capped on g2", a["g2"]["capped"].Limit.ReadBPS, 45*mb, 1)
	near(t, "capped on g3", a["g3"]["capped"].Limit.ReadBPS, 0, 1)
	checkInvariants(t, in, Crystal{}, out)
}

func TestSortDescending(t *testing.T) {
	for _, n := range []int{0, 1, 5, 32, 33, 100} {
		a := make([]float64, n)
		for i := range a {
			a[i] = float64((i * 37) % 11)
		}
		if n > 3 {
			a[2] = inf
		}
		sortDescending(a)
		for i := 1; i < n; i++ {
			if a[i] > a[i-1] {
				t.Fatalf("n=%d: not descending: %v", n, a)
			}
		}
	}
}
