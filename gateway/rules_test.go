package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-storage/sluice/gateway/qos"
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

// fileRulesGateway makes a gateway with volume acme/fs, a volume write rule
// on it, and returns a function that sets a rule (IOPS far above any test's
// rate when the rule gives no limit) and returns its id.
func fileRulesGateway(t *testing.T) (*Gateway, *Volume, func(QoSRule) uint64) {
	t.Helper()
	ctx := context.Background()
	g := openTestGateway(t)
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "fs", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := g.Volume("acme/fs")
	if err != nil {
		t.Fatal(err)
	}
	set := func(r QoSRule) uint64 {
		t.Helper()
		r.Tenant, r.Volume = "acme", "fs"
		if r.Limits.IOPS == 0 {
			r.Limits.IOPS = 1e9
		}
		out, err := g.SetQoSRule(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return out.ID
	}
	return g, v, set
}

// ruleOf returns the id of the rule whose queue classification gives req
// (0: none, the fast path).
func ruleOf(t *testing.T, g *Gateway, v *Volume, req Request) uint64 {
	t.Helper()
	r := v.route.Load()
	if r == nil {
		return 0
	}
	q := v.queueFor(r, &req, classOf(req.Op))
	if q == nil {
		return 0
	}
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	for id, rq := range g.rules.byID {
		if rq.queue == q {
			return id
		}
	}
	t.Fatalf("request %+v went to a queue no rule owns", req)
	return 0
}

// Equally specific file rules resolve the same way every time, by the
// documented order: priority, then the lowest id; a more specific rule
// beats both.
func TestFileRuleTies(t *testing.T) {
	g, v, set := fileRulesGateway(t)
	logs := set(QoSRule{File: "*.log"})
	aStar := set(QoSRule{File: "a.*"})
	vol := set(QoSRule{})
	// classify a.log 1,000 times, each a file never seen (no cache hit),
	// over ten route recomputations; count the winners.
	ino := uint64(100)
	classify := func(op Op) map[uint64]int {
		t.Helper()
		got := map[uint64]int{}
		for round := range 10 {
			set(QoSRule{Limits: qosLimits(1e9 + float64(round))}) // the volume rule changes: routes are recomputed
			for range 100 {
				ino++
				got[ruleOf(t, g, v, Request{Op: op, Inode: ino, Path: "a.log", Door: DoorFUSE})]++
			}
		}
		return got
	}
	want := func(what string, got map[uint64]int, id uint64) {
		t.Helper()
		if got[id] != 1000 {
			t.Errorf("%s: a.log classified %v (rule id: times), want rule %d 1000 times", what, got, id)
		}
	}
	want("equal priority", classify(OpWrite), logs) // the lowest id
	set(QoSRule{File: "a.*", Limits: qosLimits(1e9, 1)})
	want("a.* with priority 1", classify(OpWrite), aStar)
	writeLogs := set(QoSRule{File: "*.log", Op: "write"})
	want("writes, a write rule for *.log", classify(OpWrite), writeLogs) // more specific than priority
	want("reads, a write rule for *.log", classify(OpRead), aStar)
	if got := ruleOf(t, g, v, Request{Op: OpWrite, Inode: 1, Path: "b.txt", Door: DoorFUSE}); got != vol {
		t.Errorf("b.txt went to rule %d, want the volume rule %d", got, vol)
	}
}

// qosLimits is an IOPS limit and, optionally, a priority.
func qosLimits(iops float64, priority ...int) qos.Limits {
	l := qos.Limits{IOPS: iops}
	if len(priority) > 0 {
		l.Priority = priority[0]
	}
	return l
}

// A file classified before a rule existed is classified under it once it
// exists, and so is a file created afterwards; deleting the rule frees both.
func TestFileRuleAppliesToFilesAfterChange(t *testing.T) {
	ctx := context.Background()
	g, v, set := fileRulesGateway(t)
	set(QoSRule{File: "*.dat"}) // the volume has file rules: paths are classified
	old := Request{Op: OpWrite, Inode: 5, Path: "old.log", Door: DoorFUSE}
	if got := ruleOf(t, g, v, old); got != 0 {
		t.Fatalf("old.log went to rule %d before any *.log rule", got)
	}
	logs := set(QoSRule{File: "*.log"})
	if got := ruleOf(t, g, v, old); got != logs {
		t.Errorf("old.log, classified before the rule, went to rule %d after it; want %d", got, logs)
	}
	if got := ruleOf(t, g, v, Request{Op: OpWrite, Inode: 6, Path: "new.log", Door: DoorFUSE}); got != logs {
		t.Errorf("new.log, created after the rule, went to rule %d; want %d", got, logs)
	}
	// Through Do: the rule's queue admits the new file's write.
	buf := make([]byte, 4096)
	if err := v.Do(ctx, &Request{Op: OpWrite, Buf: buf, Inode: 0, Path: "new.log", Door: DoorFUSE}); err != nil {
		t.Fatal(err)
	}
	if got := admitted(g, logs); got != 1 {
		t.Errorf("the *.log rule admitted %d writes to new.log, want 1", got)
	}
	if err := g.DeleteQoSRule(ctx, logs); err != nil {
		t.Fatal(err)
	}
	if got := ruleOf(t, g, v, old); got != 0 {
		t.Errorf("old.log went to rule %d after the *.log rule was deleted", got)
	}
}

// A file is classified by the path its request carries: after a rename by
// its new name, into and out of a match; a file with two hard links by the
// link its request names.
func TestFileRuleRenameAndHardLinks(t *testing.T) {
	g, v, set := fileRulesGateway(t)
	logs := set(QoSRule{File: "*.log"})
	vol := set(QoSRule{})
	check := func(ino uint64, path string, want uint64) {
		t.Helper()
		if got := ruleOf(t, g, v, Request{Op: OpWrite, Inode: ino, Path: path, Door: DoorFUSE}); got != want {
			t.Errorf("inode %d as %s went to rule %d, want %d", ino, path, got, want)
		}
	}
	for _, step := range []struct {
		path string
		want uint64
	}{{"x.txt", vol}, {"x.log", logs}, {"x.txt", vol}, {"sub/x.log", logs}, {"sub/x", vol}} {
		check(7, step.path, step.want) // inode 7 renamed from one name to the next
	}
	for range 100 { // two links of inode 8, used in turn
		check(8, "a.log", logs)
		check(8, "b.txt", vol)
	}
	// Block IO on the same volume (no path) never matches a file rule.
	check(0, "", vol)
}

// Classification runs concurrently with rule changes (run with -race): it
// never picks a rule that cannot match, and after the changes every file
// is classified under the rules left in force.
func TestFileRuleConcurrentChanges(t *testing.T) {
	ctx := context.Background()
	g, v, set := fileRulesGateway(t)
	vol := set(QoSRule{})
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				ino := uint64(w)*1000 + i%50
				path := fmt.Sprintf("d%d/f%d.txt", w, i%50)
				if i%2 == 0 {
					path = fmt.Sprintf("d%d/f%d.log", w, i%50)
				}
				if err := v.Do(ctx, &Request{Op: OpRead, Buf: buf, Inode: 0, Path: path, Door: DoorFUSE}); err != nil {
					errs <- err
					return
				}
				// Another inode number for the same path, classified without IO.
				r := v.route.Load()
				if q := v.queueFor(r, &Request{Op: OpRead, Inode: ino, Path: path, Door: DoorFUSE}, qos.Read); q == nil {
					errs <- fmt.Errorf("%s went to no queue: the volume rule matches every request", path)
					return
				}
			}
		}()
	}
	var logs uint64
	for i := range 40 {
		if logs != 0 {
			if err := g.DeleteQoSRule(ctx, logs); err != nil {
				t.Fatal(err)
			}
		}
		logs = set(QoSRule{File: "*.log", Limits: qosLimits(1e9 + float64(i))})
	}
	close(stop)
	wg.Wait()
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for w := range 4 {
		for i := range 50 {
			ino := uint64(w)*1000 + uint64(i)
			want, path := logs, fmt.Sprintf("d%d/f%d.log", w, i)
			if i%2 == 1 {
				want, path = vol, fmt.Sprintf("d%d/f%d.txt", w, i)
			}
			if got := ruleOf(t, g, v, Request{Op: OpRead, Inode: ino, Path: path, Door: DoorFUSE}); got != want {
				t.Errorf("after the changes, inode %d as %s went to rule %d, want %d", ino, path, got, want)
			}
		}
	}
}
