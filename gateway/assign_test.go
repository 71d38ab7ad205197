package gateway

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

func assignedOps(g *Gateway, tenant string) uint64 {
	for _, a := range g.Assignments().Tenants {
		if a.Tenant == tenant {
			return a.Stats.AdmittedOps
		}
	}
	return 0
}

// While a tenant has an assignment, all its IO (every volume, file and op)
// goes through its assignment queue and its static rules see nothing;
// tenants without one keep their rules or the fast path; dropping the
// assignment (or the whole set) brings the static rules back.
func TestAssignmentsSuspendStaticRules(t *testing.T) {
	ctx := context.Background()
	g := openTestGateway(t)
	for _, ref := range [][2]string{{"acme", "fs"}, {"acme", "db"}, {"beta", "b"}, {"free", "f"}} {
		if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: ref[0], Name: ref[1], Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	set := func(r QoSRule) uint64 {
		t.Helper()
		r.Limits.IOPS = 1e9
		out, err := g.SetQoSRule(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return out.ID
	}
	tenantRule := set(QoSRule{Tenant: "acme"})
	fileRule := set(QoSRule{Tenant: "acme", Volume: "fs", File: "*.log"})
	betaRule := set(QoSRule{Tenant: "beta"})

	fs, _ := g.Volume("acme/fs")
	db, _ := g.Volume("acme/db")
	b, _ := g.Volume("beta/b")
	free, _ := g.Volume("free/f")
	buf := make([]byte, 4096)
	do := func(v *Volume, op Op, path string) {
		t.Helper()
		if err := v.Do(ctx, &Request{Op: op, Buf: buf, Path: path, Door: DoorFUSE}); err != nil {
			t.Fatal(err)
		}
	}
	all := func() {
		do(fs, OpWrite, "app.log")
		do(fs, OpRead, "notes.txt")
		do(db, OpRead, "")
		do(b, OpWrite, "")
		do(free, OpRead, "")
	}

	big := qos.Limits{ReadBPS: 1e12, WriteBPS: 1e12}
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": big, "ghost": big}, 1<<32|1); err != nil {
		t.Fatal(err)
	}
	all()
	if got := assignedOps(g, "acme"); got != 3 {
		t.Errorf("acme's assignment queue admitted %d, want all 3 of its requests", got)
	}
	if admitted(g, tenantRule) != 0 || admitted(g, fileRule) != 0 {
		t.Errorf("acme's static rules admitted %d and %d while it had an assignment", admitted(g, tenantRule), admitted(g, fileRule))
	}
	if admitted(g, betaRule) != 1 {
		t.Errorf("beta (no assignment) bypassed its static rule")
	}
	if free.route.Load() != nil {
		t.Error("a tenant without rules or assignment left the fast path")
	}
	st := g.Assignments()
	if !st.Following || st.Epoch != 1<<32|1 || len(st.Tenants) != 2 {
		t.Errorf("status %+v", st)
	}

	// A new epoch with new limits changes them in place: no reroute.
	r := db.route.Load()
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadBPS: 5e11}, "ghost": big}, 1<<32|2); err != nil {
		t.Fatal(err)
	}
	if db.route.Load() != r {
		t.Error("a limits-only change recomputed routes")
	}
	if st := g.Assignments(); st.Tenants[0].Limits.ReadBPS != 5e11 || st.Epoch != 1<<32|2 {
		t.Errorf("limits not changed: %+v", st)
	}

	// acme left out of the set: back to its static rules.
	if err := g.ApplyAssignments(map[string]qos.Limits{"beta": big}, 1<<32|3); err != nil {
		t.Fatal(err)
	}
	all()
	if admitted(g, tenantRule) != 2 || admitted(g, fileRule) != 1 || admitted(g, betaRule) != 1 {
		t.Errorf("after dropping acme: tenant rule %d (want 2), file rule %d (want 1), beta rule %d (want 1, beta is assigned now)",
			admitted(g, tenantRule), admitted(g, fileRule), admitted(g, betaRule))
	}
	if got := assignedOps(g, "beta"); got != 1 {
		t.Errorf("beta's assignment queue admitted %d, want 1", got)
	}

	// Fallback: every static rule again, the epoch is kept for status.
	g.ClearAssignments()
	all()
	if admitted(g, betaRule) != 2 || admitted(g, tenantRule) != 4 {
		t.Errorf("after ClearAssignments: beta rule %d (want 2), acme rule %d (want 4)", admitted(g, betaRule), admitted(g, tenantRule))
	}
	if st := g.Assignments(); st.Following || st.Epoch != 1<<32|3 || len(st.Tenants) != 0 {
		t.Errorf("status after fallback %+v", st)
	}
}

// Limits apply at once to requests already waiting, and a fallback
// releases them; bad limits are refused per tenant.
func TestAssignmentsLiveAndRefused(t *testing.T) {
	ctx := context.Background()
	g := openTestGateway(t)
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "a", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := g.Volume("acme/a")
	// 1 B/s: the first read goes (a meter with debt), the next waits ~4096 s.
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadBPS: 1}}, 1); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := v.Do(ctx, &Request{Op: OpRead, Buf: buf}); err != nil {
		t.Fatal(err)
	}
	read := func() chan error {
		ch := make(chan error, 1)
		go func() { ch <- v.Do(ctx, &Request{Op: OpRead, Buf: make([]byte, 4096)}) }()
		return ch
	}
	waiting := func(ch chan error, what string) {
		t.Helper()
		select {
		case err := <-ch:
			t.Fatalf("%s: the read did not wait (err %v)", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	released := func(ch chan error, what string) {
		t.Helper()
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: the waiting read was not released", what)
		}
	}
	ch := read()
	waiting(ch, "1 B/s")
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadBPS: 1e9}}, 2); err != nil {
		t.Fatal(err)
	}
	released(ch, "raised limit")

	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadBPS: 1}}, 3); err != nil {
		t.Fatal(err)
	}
	v.Do(ctx, &Request{Op: OpRead, Buf: buf}) // spend what was banked
	ch = read()
	waiting(ch, "1 B/s again")
	g.ClearAssignments()
	released(ch, "fallback")

	err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadBPS: -1}, "beta": {WriteIOPS: 10}}, 4)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative limit: %v, want ErrInvalid", err)
	}
	if st := g.Assignments(); len(st.Tenants) != 1 || st.Tenants[0].Tenant != "beta" || !st.Following {
		t.Errorf("the valid part of the set was not applied: %+v", st)
	}
}

// TenantCounters sums the volumes' counters per tenant and op, adds waits
// and depths from the tenant's queues, and never goes backwards (a
// deleted volume, a dropped queue).
func TestTenantCounters(t *testing.T) {
	ctx := context.Background()
	g := openTestGateway(t)
	for _, ref := range [][2]string{{"acme", "a"}, {"acme", "b"}, {"beta", "c"}} {
		if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: ref[0], Name: ref[1], Size: 4 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := g.Volume("acme/a")
	b, _ := g.Volume("acme/b")
	c, _ := g.Volume("beta/c")
	do := func(v *Volume, op Op, n int, door Door) {
		t.Helper()
		if err := v.Do(ctx, &Request{Op: op, Buf: make([]byte, n), Door: door}); err != nil {
			t.Fatal(err)
		}
	}
	do(a, OpRead, 64<<10, DoorNBD) // 8 units
	do(b, OpRead, 64<<10, DoorFUSE)
	do(b, OpWrite, 4096, DoorNBD) // 1 unit
	do(c, OpWrite, 16<<10, DoorNBD)
	tc := g.TenantCounters()
	if len(tc) != 2 || tc[0].Tenant != "acme" || tc[1].Tenant != "beta" {
		t.Fatalf("tenants %+v", tc)
	}
	want := OpTotals{Bytes: 128 << 10, Units: 16, IOs: 2}
	if tc[0].Read != want || tc[0].Write != (OpTotals{Bytes: 4096, Units: 1, IOs: 1}) || tc[1].Write != (OpTotals{Bytes: 16 << 10, Units: 2, IOs: 1}) {
		t.Errorf("counters %+v", tc)
	}

	// Waits in the assignment queue are counted, and kept after the queue
	// is dropped; a deleted volume does not take its bytes with it.
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadIOPS: 20}}, 1); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); do(a, OpRead, 8192, DoorNBD) }()
	}
	wg.Wait() // 4 units at 20/s: the last waits about 150 ms
	tc = g.TenantCounters()
	if tc[0].Read.IOs != 6 || tc[0].Read.Waited < 100*time.Millisecond || tc[0].Read.Queued != 0 || tc[0].Write.Waited != 0 {
		t.Errorf("after throttled reads: %+v", tc[0])
	}
	before := tc[0]
	g.ClearAssignments()
	if err := g.DeleteVolume(ctx, "acme/b"); err != nil {
		t.Fatal(err)
	}
	tc = g.TenantCounters()
	if tc[0].Read.Bytes < before.Read.Bytes || tc[0].Read.IOs < before.Read.IOs || tc[0].Read.Units < before.Read.Units ||
		tc[0].Read.Waited < before.Read.Waited || tc[0].Write.Bytes < before.Write.Bytes {
		t.Errorf("counters went backwards: %+v, then %+v", before, tc[0])
	}
	do(a, OpRead, 8192, DoorNBD)
	if tc2 := g.TenantCounters(); tc2[0].Read.IOs != tc[0].Read.IOs+1 {
		t.Errorf("after one more read: %d IOs, want %d", tc2[0].Read.IOs, tc[0].Read.IOs+1)
	}
}

// DeviceSaturated is true over an interval in which requests within their
// limits waited for the capacity, false over one in which they only
// waited for their limits.
func TestDeviceSaturated(t *testing.T) {
	ctx := context.Background()
	g, err := Open(ctx, Config{DataDir: t.TempDir(), PoolSize: 256 << 20, QoSCapacityIOPS: 200})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "a", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := g.Volume("acme/a")
	load := func(d time.Duration) {
		var wg sync.WaitGroup
		stop := time.Now().Add(d)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					v.Do(ctx, &Request{Op: OpRead, Buf: make([]byte, 8192)})
				}
			}()
		}
		wg.Wait()
	}
	if g.DeviceSaturated() {
		t.Error("the first call reported saturation")
	}
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {}}, 1); err != nil { // no limit: the capacity binds
		t.Fatal(err)
	}
	load(300 * time.Millisecond)
	if !g.DeviceSaturated() {
		t.Errorf("4 readers against a 200/s capacity: not saturated (held %v)", g.rules.sched.Stats().HeldTime)
	}
	if r, w := g.RoutedTotals(); r.IOs < 40 || r.IOs > 100 || r.Units != r.IOs || r.Bytes != 8192*r.IOs || w != (OpTotals{}) {
		t.Errorf("routed totals after 300 ms at 200/s: read %+v, write %+v", r, w)
	}
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadIOPS: 50}}, 2); err != nil { // the limit binds
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	g.DeviceSaturated()
	load(300 * time.Millisecond)
	if g.DeviceSaturated() {
		t.Error("readers held by their own 50/s limit under a 200/s capacity: reported saturated")
	}
}

// A set's default assigns every tenant with a volume here that the set
// does not list, also one whose first volume appears while the set is in
// force; tenants without a volume get no queue; a set without a default
// (an older controller) or a fallback returns unlisted tenants to their
// static rules.
func TestAssignmentDefault(t *testing.T) {
	ctx := context.Background()
	g := openTestGateway(t)
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "a", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "idle", Name: "i", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	limits := func() map[string]qos.Limits {
		out := map[string]qos.Limits{}
		for _, a := range g.Assignments().Tenants {
			out[a.Tenant] = a.Limits
		}
		return out
	}
	def := qos.Limits{ReadBPS: 1 << 20, WriteBPS: 1 << 20}
	if err := g.ApplyAssignmentSet(map[string]qos.Limits{"acme": {ReadBPS: 5 << 20}}, &def, 1); err != nil {
		t.Fatal(err)
	}
	got := limits()
	if len(got) != 2 || got["acme"].ReadBPS != 5<<20 || got["idle"] != def {
		t.Fatalf("assigned %+v, want acme listed and idle on the default", got)
	}
	// A new tenant's first volume while the set is in force.
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "late", Name: "l", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := limits()["late"]; !ok || l != def {
		t.Fatalf("late's first volume: assigned %+v (%v), want the default", l, ok)
	}
	if err := v.Do(ctx, &Request{Op: OpRead, Buf: make([]byte, 4096), Door: DoorNBD}); err != nil {
		t.Fatal(err)
	}
	if n := assignedOps(g, "late"); n != 1 {
		t.Errorf("late's read went through its assignment queue %d times, want 1", n)
	}
	// A new default changes the unlisted tenants' limits in place.
	def2 := qos.Limits{ReadBPS: 2 << 20}
	if err := g.ApplyAssignmentSet(map[string]qos.Limits{"acme": {ReadBPS: 5 << 20}}, &def2, 2); err != nil {
		t.Fatal(err)
	}
	if got := limits(); got["idle"] != def2 || got["late"] != def2 || assignedOps(g, "late") != 1 {
		t.Errorf("after a new default: %+v", got)
	}
	// A set without a default: only the listed tenants are assigned.
	if err := g.ApplyAssignments(map[string]qos.Limits{"acme": {ReadBPS: 5 << 20}}, 3); err != nil {
		t.Fatal(err)
	}
	if got := limits(); len(got) != 1 {
		t.Errorf("a set without default: assigned %+v, want acme only", got)
	}
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "later", Name: "l", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := limits(); len(got) != 1 {
		t.Errorf("a volume created under a set without default: assigned %+v", got)
	}
	// Fallback drops the default with the set.
	if err := g.ApplyAssignmentSet(nil, &def, 4); err != nil {
		t.Fatal(err)
	}
	g.ClearAssignments()
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "after", Name: "f", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := limits(); len(got) != 0 {
		t.Errorf("after the fallback: assigned %+v", got)
	}
	bad := qos.Limits{ReadBPS: -1}
	if err := g.ApplyAssignmentSet(map[string]qos.Limits{"acme": {ReadBPS: 5 << 20}}, &bad, 5); err == nil {
		t.Error("an invalid default was accepted")
	}
	if got := limits(); len(got) != 1 {
		t.Errorf("with an invalid default: assigned %+v, want acme only", got)
	}
}
