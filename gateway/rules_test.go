package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func openTestGateway(t *testing.T) *Gateway {
	t.Helper()
	g, err := Open(context.Background(), Config{DataDir: t.TempDir(), PoolSize: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func admitted(g *Gateway, id uint64) uint64 {
	for _, r := range g.QoSRules() {
		if r.ID == id {
			return r.Stats.AdmittedOps
		}
	}
	return 0
}

// The most specific rule wins: file over volume over tenant, one op over all
// ops; block IO (no path) never matches a file rule; a volume no rule
// matches keeps a nil route (the fast path).
func TestRuleSpecificityAndFileRules(t *testing.T) {
	ctx := context.Background()
	g := openTestGateway(t)
	for _, name := range []string{"fs", "other"} {
		if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: name, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "beta", Name: "free", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	big := 1e9
	set := func(r QoSRule) uint64 {
		t.Helper()
		r.Limits.IOPS = big
		out, err := g.SetQoSRule(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return out.ID
	}
	tenant := set(QoSRule{Tenant: "acme"})
	volWrite := set(QoSRule{Tenant: "acme", Volume: "fs", Op: "write"})
	logs := set(QoSRule{Tenant: "acme", Volume: "fs", File: "*.log"})

	v, _ := g.Volume("acme/fs")
	other, _ := g.Volume("acme/other")
	free, _ := g.Volume("beta/free")
	buf := make([]byte, 4096)
	do := func(v *Volume, op Op, path string) {
		t.Helper()
		if err := v.Do(ctx, &Request{Op: op, Buf: buf, Path: path, Door: DoorFUSE}); err != nil {
			t.Fatal(err)
		}
	}
	do(v, OpWrite, "app.log")      // file rule
	do(v, OpRead, "app.log")       // file rule (all ops)
	do(v, OpRead, "var/log/a.log") // a glob without "/" matches at any depth
	do(v, OpWrite, "notes.txt")    // volume write rule
	do(v, OpWrite, "")             // block IO: volume write rule
	do(v, OpRead, "")              // tenant rule
	do(other, OpWrite, "x.log")    // tenant rule: the file rule is fs's
	do(free, OpWrite, "")          // no rule
	if got := admitted(g, logs); got != 3 {
		t.Errorf("file rule admitted %d, want 3", got)
	}
	if got := admitted(g, volWrite); got != 2 {
		t.Errorf("volume write rule admitted %d, want 2", got)
	}
	if got := admitted(g, tenant); got != 2 {
		t.Errorf("tenant rule admitted %d, want 2", got)
	}
	if free.route.Load() != nil {
		t.Error("a volume no rule matches has a route: it left the fast path")
	}

	// Deleting the file rule sends .log IO back to the volume rule.
	if err := g.DeleteQoSRule(ctx, logs); err != nil {
		t.Fatal(err)
	}
	do(v, OpWrite, "app.log")
	if got := admitted(g, volWrite); got != 3 {
		t.Errorf("after deleting the file rule, volume write rule admitted %d, want 3", got)
	}

	for _, bad := range []QoSRule{
		{Tenant: "acme", File: "*.log"},                   // file without volume
		{Tenant: "acme", Volume: "fs", File: "[unclosed"}, // malformed glob
		{Tenant: "acme", Volume: "nope"},                  // unknown volume
		{Tenant: "nobody"},                                // unknown tenant
		{Tenant: "acme", Op: "append"},                    // unknown op
	} {
		bad.Limits.IOPS = 10
		if _, err := g.SetQoSRule(ctx, bad); err == nil {
			t.Errorf("rule %+v accepted", bad)
		} else if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNotFound) {
			t.Errorf("rule %+v: %v is neither ErrInvalid nor ErrNotFound", bad, err)
		}
	}
}

// TestRefFileName: distinct volumes get distinct file names (issue 17:
// "x.y/z" and "x/y.z" both mapped to "x.y.z").
func TestRefFileName(t *testing.T) {
	seen := map[string]string{}
	for _, ref := range []string{"x.y/z", "x/y.z", "x/y", "x.y/z.w", "x/y.z.w", "a-b/c", "a/b-c"} {
		n := RefFileName(ref)
		if prev, ok := seen[n]; ok {
			t.Fatalf("%s and %s both map to %s", prev, ref, n)
		}
		if strings.Contains(n, "/") {
			t.Fatalf("%s maps to %s, which is not one file name", ref, n)
		}
		seen[n] = ref
	}
}
