package controller

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitParked waits until a goroutine waits in a select with fn on its
// stack (a long poll has parked).
func waitParked(t *testing.T, fn string) {
	t.Helper()
	waitUntil(t, "a goroutine parked in "+fn, 10*time.Second, func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			head, _, _ := strings.Cut(g, "\n")
			if strings.Contains(head, "[select") && strings.Contains(g, fn) {
				return true
			}
		}
		return false
	})
}

type testEnv struct {
	s   *Server
	c   *Client
	clk *qos.FakeClock
	url string
}

// newEnv starts a controller (fake clock, rounds run by hand) behind an
// httptest server.
func newEnv(t *testing.T, opts Options) *testEnv {
	t.Helper()
	clk := qos.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	opts.Clock = clk
	opts.Logger = quietLogger()
	s, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		s.Close()
		hs.Close()
	})
	c, err := NewClient(hs.URL, opts.Token)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{s: s, c: c, clk: clk, url: hs.URL}
}

// pressing is a report where every tenant is held back on reads.
func pressing(gateway string, capRead float64, tenants ...string) Report {
	r := Report{Gateway: gateway, Interval: time.Second, Capacity: Rates{ReadBPS: capRead}}
	for _, t := range tenants {
		r.Tenants = append(r.Tenants, TenantReport{Tenant: t, Read: OpReport{BPS: 10 * mb, IOPS: 160, DemandBPS: 12 * mb, DemandIOPS: 190, Throttled: true}})
	}
	return r
}

func TestSLOCRUD(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	gold := SLO{Tenant: "gold", Min: Rates{ReadBPS: 30 * mb}, Max: Rates{WriteBPS: 100 * mb}}
	if got, err := e.c.SetSLO(ctx, gold); err != nil || got != gold {
		t.Fatalf("SetSLO = %+v, %v", got, err)
	}
	if _, err := e.c.SetSLO(ctx, SLO{Tenant: "silver", Min: Rates{ReadIOPS: 500}}); err != nil {
		t.Fatal(err)
	}
	list, err := e.c.SLOs(ctx)
	if err != nil || len(list) != 2 || list[0].Tenant != "gold" || list[1].Tenant != "silver" {
		t.Fatalf("SLOs = %+v, %v", list, err)
	}
	if got, err := e.c.SLO(ctx, "gold"); err != nil || got != gold {
		t.Fatalf("SLO = %+v, %v", got, err)
	}
	bad := []SLO{
		{Tenant: "no/slash"},
		{Tenant: "x", Min: Rates{ReadBPS: 10}, Max: Rates{ReadBPS: 5}},
		{Tenant: "x", Min: Rates{ReadBPS: -1}},
	}
	for _, b := range bad {
		if _, err := e.c.SetSLO(ctx, b); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetSLO(%+v) = %v, want ErrInvalid", b, err)
		}
	}
	if err := e.c.DeleteSLO(ctx, "gold"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteSLO(ctx, "gold"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := e.c.SLO(ctx, "gold"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get deleted: %v", err)
	}
}

func TestRoundsAndLongPoll(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	for _, id := range []string{"g1", "g2"} {
		if _, err := e.c.Register(ctx, GatewayRegistration{ID: id, Address: "unix:///run/" + id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.c.SetSLO(ctx, SLO{Tenant: "gold", Min: Rates{ReadBPS: 60 * mb}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"g1", "g2"} {
		if _, err := e.c.Report(ctx, pressing(id, 100*mb, "gold", "bronze")); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := e.c.Assignments(ctx, "g1", 0, 0); ok || err != nil {
		t.Fatalf("a set before any round: %v %v", ok, err)
	}
	type result struct {
		set AssignmentSet
		ok  bool
		err error
	}
	got := make(chan result, 1)
	go func() {
		set, ok, err := e.c.Assignments(ctx, "g1", 0, 10*time.Second)
		got <- result{set, ok, err}
	}()
	waitParked(t, "controller.(*Server).Assignments(") // the test passes either way; this covers the wake-up
	e.s.runRound()
	r := <-got
	if r.err != nil || !r.ok {
		t.Fatalf("long poll: %v %v", r.ok, r.err)
	}
	if r.set.Epoch != e.s.Epoch() || r.set.Epoch>>32 == 0 || r.set.Gateway != "g1" {
		t.Fatalf("set epoch %x (server %x), gateway %s", r.set.Epoch, e.s.Epoch(), r.set.Gateway)
	}
	// gold: 30 MB/s minimum per gateway + half of the 70 left.
	gold, bronze := r.set.Assignments["gold"], r.set.Assignments["bronze"]
	if math.Abs(gold.ReadBPS-65*mb) > 1 || math.Abs(bronze.ReadBPS-35*mb) > 1 || gold.ReservationBPS != 30*mb {
		t.Errorf("gold %+v bronze %+v", gold, bronze)
	}
	for tn, l := range r.set.Assignments {
		if err := l.Validate(); err != nil {
			t.Errorf("%s: %v", tn, err)
		}
	}
	// Nothing newer: an immediate poll says so; a waiting one times out.
	if _, ok, err := e.c.Assignments(ctx, "g1", r.set.Epoch, 0); ok || err != nil {
		t.Errorf("poll after the newest: %v %v", ok, err)
	}
	if _, ok, err := e.c.Assignments(ctx, "g1", r.set.Epoch, 20*time.Millisecond); ok || err != nil {
		t.Errorf("timed-out poll: %v %v", ok, err)
	}
	if _, _, err := e.c.Assignments(ctx, "nobody", 0, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("unregistered gateway: %v", err)
	}
	st, err := e.c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Gateways) != 2 || !st.Gateways[0].Live || st.Epoch != r.set.Epoch || len(st.Tenants) != 2 {
		t.Fatalf("status %+v", st)
	}
	if g := st.Tenants[1]; g.Tenant != "gold" || !g.HasSLO || g.Achieved.ReadBPS != 20*mb || g.Gateways != 2 ||
		math.Abs(g.Assigned.ReadBPS-130*mb) > 2 || g.Min.ReadBPS != 60*mb {
		t.Errorf("gold status %+v", g)
	}
}

// A gateway that stops reporting is left out after the report timeout:
// the tenant's minimum moves to the gateways still reporting.
func TestSilentGatewayReleased(t *testing.T) {
	e := newEnv(t, Options{ReportTimeout: 5 * time.Second})
	ctx := context.Background()
	e.s.SetSLO(ctx, SLO{Tenant: "gold", Min: Rates{ReadBPS: 60 * mb}})
	for _, id := range []string{"g1", "g2"} {
		e.s.Register(ctx, GatewayRegistration{ID: id})
		if _, err := e.s.Report(ctx, pressing(id, 100*mb, "gold", "bronze")); err != nil {
			t.Fatal(err)
		}
	}
	e.s.runRound()
	set, _, _ := e.s.Assignments(ctx, "g1", 0, 0)
	if set.Assignments["gold"].ReservationBPS != 30*mb {
		t.Fatalf("gold on g1 before: %+v", set.Assignments["gold"])
	}
	for i := 0; i < 6; i++ {
		e.clk.Advance(time.Second)
		e.s.Report(ctx, pressing("g1", 100*mb, "gold", "bronze"))
		e.s.runRound()
	}
	set, _, _ = e.s.Assignments(ctx, "g1", 0, 0)
	if set.Assignments["gold"].ReservationBPS != 60*mb {
		t.Errorf("gold on g1 after g2 went silent: %+v", set.Assignments["gold"])
	}
	if _, ok, _ := e.s.Assignments(ctx, "g2", 0, 0); ok {
		t.Error("a silent gateway still gets assignments")
	}
	st := e.s.Status()
	if st.Gateways[1].ID != "g2" || st.Gateways[1].Live || !st.Gateways[0].Live {
		t.Errorf("status %+v", st.Gateways)
	}
	// Deregistering removes it for good.
	if err := e.s.Deregister(ctx, "g2"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Report(ctx, pressing("g2", 100*mb, "gold")); !errors.Is(err, ErrNotFound) {
		t.Errorf("report from a deregistered gateway: %v", err)
	}
}

func TestRestartRecoversDesiredState(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	open := func() *Server {
		s, err := Open(ctx, Options{DataDir: dir, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	s.SetSLO(ctx, SLO{Tenant: "gold", Min: Rates{ReadBPS: 30 * mb}})
	s.SetSLO(ctx, SLO{Tenant: "silver", Max: Rates{WriteIOPS: 1000}})
	s.DeleteSLO(ctx, "silver")
	reg, err := s.Register(ctx, GatewayRegistration{ID: "g1", Labels: map[string]string{"rack": "a"}})
	if err != nil {
		t.Fatal(err)
	}
	s.Report(ctx, pressing("g1", 100*mb, "gold"))
	s.runRound()
	before := s.Epoch()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetSLO(ctx, SLO{Tenant: "late"}); !errors.Is(err, ErrClosed) {
		t.Errorf("SetSLO after Close: %v", err)
	}

	s = open()
	defer s.Close()
	if slos := s.SLOs(); len(slos) != 1 || slos[0].Min.ReadBPS != 30*mb {
		t.Fatalf("SLOs after restart: %+v", slos)
	}
	st := s.Status()
	if len(st.Gateways) != 1 || st.Gateways[0].Labels["rack"] != "a" || !st.Gateways[0].Registered.Equal(reg.Registered) || st.Gateways[0].Live {
		t.Fatalf("registry after restart: %+v", st.Gateways)
	}
	// Nothing to assign until the gateway reports again; then epochs
	// carry on above the old ones.
	s.runRound()
	if _, ok, _ := s.Assignments(ctx, "g1", 0, 0); ok {
		t.Error("assignments before any report")
	}
	if _, err := s.Report(ctx, pressing("g1", 100*mb, "gold")); err != nil {
		t.Fatalf("a registered gateway reports after restart: %v", err)
	}
	s.runRound()
	set, ok, _ := s.Assignments(ctx, "g1", before, 0)
	if !ok || set.Epoch <= before {
		t.Fatalf("epoch after restart %x, before %x", set.Epoch, before)
	}
}

func TestBearerToken(t *testing.T) {
	e := newEnv(t, Options{Token: "s3cret"})
	ctx := context.Background()
	if _, err := e.c.SLOs(ctx); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	anon, _ := NewClient(e.url, "")
	if err := anon.Health(ctx); err != nil {
		t.Errorf("health needs no token: %v", err)
	}
	wrong, _ := NewClient(e.url, "guess")
	for _, c := range []*Client{anon, wrong} {
		if _, err := c.SLOs(ctx); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("without the right token: %v", err)
		}
	}
	resp, err := http.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/metrics without a token: %s", resp.Status)
	}
	cases := map[string]bool{ // addr → allowed without a token
		"127.0.0.1:7470": true, "localhost:7470": true, "[::1]:7470": true,
		":7470": false, "0.0.0.0:7470": false, "10.0.0.5:7470": false,
	}
	for addr, ok := range cases {
		if err := CheckListen(addr, ""); (err == nil) != ok {
			t.Errorf("CheckListen(%q) = %v", addr, err)
		}
		if err := CheckListen(addr, "tok"); err != nil {
			t.Errorf("CheckListen(%q, token) = %v", addr, err)
		}
	}
	if err := CheckListen("nonsense", "tok"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad address: %v", err)
	}
}

func TestReportValidation(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	if _, err := e.c.Report(ctx, pressing("g1", 100*mb, "gold")); !errors.Is(err, ErrNotFound) {
		t.Errorf("unregistered: %v", err)
	}
	e.c.Register(ctx, GatewayRegistration{ID: "g1"})
	bad := []Report{
		{Gateway: "g1", Tenants: []TenantReport{{Tenant: "a"}, {Tenant: "a"}}},
		{Gateway: "g1", Tenants: []TenantReport{{Tenant: "a", Read: OpReport{BPS: -1}}}},
		{Gateway: "g1", Capacity: Rates{ReadBPS: 1e300}},
		{Gateway: "g1", Tenants: []TenantReport{{Tenant: ""}}},
	}
	for _, r := range bad {
		if _, err := e.c.Report(ctx, r); !errors.Is(err, ErrInvalid) {
			t.Errorf("Report(%+v) = %v", r, err)
		}
	}
	// Posting g1's report under another gateway's path.
	req, _ := http.NewRequest(http.MethodPost, e.url+"/v1/gateways/g2/report", strings.NewReader(`{"gateway":"g1","tenants":[]}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("mismatched path: %s", resp.Status)
	}
	// Unknown fields are refused (a typo must not silently drop a field).
	req, _ = http.NewRequest(http.MethodPut, e.url+"/v1/slos/gold", strings.NewReader(`{"tenant":"gold","min":{"read_bsp":1}}`))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown field: %s", resp.Status)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	e.s.SetSLO(ctx, SLO{Tenant: "gold", Min: Rates{ReadBPS: 150 * mb}})
	e.c.Register(ctx, GatewayRegistration{ID: "g1"})
	e.c.Report(ctx, pressing("g1", 100*mb, "gold"))
	e.s.runRound()
	resp, err := http.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"sluice_controller_rounds_total 1",
		"sluice_controller_round_seconds_count 1",
		"sluice_controller_reports_total 1",
		"sluice_controller_report_bytes_total",
		`sluice_controller_gateways{state="live"} 1`,
		`sluice_controller_gateway_capacity{gateway="g1",resource="read_bw"} 1.048576e+08`,
		`sluice_controller_tenant_slo_min{resource="read_bw",tenant="gold"} 1.572864e+08`,
		`sluice_controller_tenant_achieved{resource="read_bw",tenant="gold"} 1.048576e+07`,
		`sluice_controller_tenant_shortfall{resource="read_bw",tenant="gold"} 5.24288e+07`,
		"sluice_controller_epoch",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(string(body))
	}
}

// Close releases long polls at once.
func TestCloseReleasesLongPoll(t *testing.T) {
	s, err := Open(context.Background(), Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s.Register(context.Background(), GatewayRegistration{ID: "g1"})
	done := make(chan error, 1)
	go func() {
		_, _, err := s.Assignments(context.Background(), "g1", 0, time.Minute)
		done <- err
	}()
	waitParked(t, "controller.(*Server).Assignments(")
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("poll ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not release the long poll")
	}
}
