package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/policy"
)

func testKeyring(t *testing.T, tenants ...string) *filter.Keyring {
	t.Helper()
	var text strings.Builder
	for _, tenant := range tenants {
		k := make([]byte, 32)
		rand.Read(k)
		fmt.Fprintf(&text, "%s %s\n", tenant, base64.StdEncoding.EncodeToString(k))
	}
	kr, err := filter.ParseKeyring(strings.NewReader(text.String()), "test")
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

func openPolicyGateway(t *testing.T, dir string, kr *filter.Keyring) *Gateway {
	t.Helper()
	g, err := Open(context.Background(), Config{DataDir: dir, PoolSize: 256 << 20, Keyring: kr, AutomationInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func words(n int) []byte {
	b := make([]byte, 0, n+16)
	for i := 0; len(b) < n; i++ {
		b = append(b, []string{"tenant ", "volume ", "chunk ", "policy\n"}[i*7%4]...)
	}
	return b[:n]
}

func mustAdd(t *testing.T, g *Gateway, text string) PolicyStatus {
	t.Helper()
	p, err := g.AddPolicy(context.Background(), text)
	if err != nil {
		t.Fatalf("add %q: %v", text, err)
	}
	return p
}

func do(t *testing.T, v *Volume, op Op, buf []byte, off int64) {
	t.Helper()
	if err := v.Do(context.Background(), &Request{Op: op, Buf: buf, Offset: off, Door: DoorInternal}); err != nil {
		t.Fatalf("%v at %d: %v", op, off, err)
	}
}

// A tenant-wide policy and a volume policy on the same tenant: the volume
// gets only its own; the pipeline runs in written order and reads undo it;
// the plain volume keeps the fast path.
func TestPolicySpecialisationAndPipeline(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), testKeyring(t, "acme"))
	defer g.Close()
	vols := map[string]*Volume{}
	for _, ref := range []string{"acme/db", "acme/logs", "beta/plain"} {
		tenant, name, _ := strings.Cut(ref, "/")
		v, err := g.CreateVolume(ctx, CreateOptions{Tenant: tenant, Name: name, Size: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		vols[ref] = v
	}
	tp := mustAdd(t, g, "FOR TENANT acme DO SET compression WITH algo=lz4")
	vp := mustAdd(t, g, "FOR VOLUME acme/db DO SET compression WITH algo=zstd, level=1, SET encryption")
	if !strings.Contains(vp.Compiled, "SET compression WITH algo=zstd, level=1, SET encryption WITH algo=aes-256-gcm") {
		t.Fatalf("compiled: %s", vp.Compiled)
	}
	db, logs := vols["acme/db"].Filters(), vols["acme/logs"].Filters()
	if db.Level != "volume" || len(db.Rules) != 1 || db.Rules[0] != vp.ID || db.Chain != "compression(algo=zstd,level=1) | encryption(algo=aes-256-gcm)" {
		t.Fatalf("acme/db filters: %+v", db)
	}
	if logs.Level != "tenant" || logs.Rules[0] != tp.ID || !strings.HasPrefix(logs.Chain, "compression(algo=lz4") {
		t.Fatalf("acme/logs filters: %+v", logs)
	}
	if vols["beta/plain"].filt.Load() != nil {
		t.Fatal("a volume no policy matches must keep a nil filter pointer")
	}
	data := words(4 << 20)
	for ref, v := range vols {
		do(t, v, OpWrite, data, 4096)
		got := make([]byte, len(data))
		do(t, v, OpRead, got, 4096)
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: read back differs", ref)
		}
	}
	if a := vols["acme/db"].AllocatedBytes(); a > int64(len(data))/4 {
		t.Fatalf("compressed+encrypted volume holds %d bytes for %d", a, len(data))
	}
	if a := vols["beta/plain"].AllocatedBytes(); a < int64(len(data)) {
		t.Fatalf("plain volume holds %d bytes for %d", a, len(data))
	}
	// Deleting the volume policy hands acme/db to the tenant policy; old
	// chunks still read.
	if err := g.DeletePolicy(ctx, vp.ID); err != nil {
		t.Fatal(err)
	}
	if f := vols["acme/db"].Filters(); f.Level != "tenant" {
		t.Fatalf("after delete: %+v", f)
	}
	got := make([]byte, len(data))
	do(t, vols["acme/db"], OpRead, got, 4096)
	if !bytes.Equal(got, data) {
		t.Fatal("old chunks unreadable after the policy changed")
	}
	rep, err := vols["acme/db"].Scrub(ctx)
	if err != nil || !rep.Clean() || rep.Transformed == 0 {
		t.Fatalf("scrub: %+v %v", rep, err)
	}
}

// Bad policies are refused with a clear message and change nothing.
func TestBadPoliciesRefused(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), testKeyring(t, "acme"))
	defer g.Close()
	for _, ref := range []string{"acme/db", "beta/db"} {
		tenant, name, _ := strings.Cut(ref, "/")
		if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: tenant, Name: name, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		text, msg string
		sentinel  error
	}{
		{"FOR TENNANT acme DO SET noop", "line 1, col 5: expected TENANT, VOLUME, FILE or GROUP", ErrInvalid},
		{"FOR VOLUME acme/db DO SET zip", `filter "zip" is not registered`, ErrInvalid},
		{"FOR VOLUME acme/db DO SET compression WITH algo=rar", "algo", ErrInvalid},
		{"FOR VOLUME acme/nope DO SET noop", "acme/nope", ErrNotFound},
		{"FOR TENANT gamma DO SET noop", "gamma", ErrNotFound},
		{"FOR VOLUME beta/db DO SET encryption", "no encryption key", filter.ErrNoKey},
		{"FOR FILE acme/db:*.log DO SET noop", "block volume", ErrInvalid},
		{"FOR VOLUME acme/db DO SET bandwidth WITH max=10MB/s", "qos", ErrInvalid},
		{"FOR GROUP gold DO SET noop", "gold", ErrInvalid},
	}
	for _, c := range cases {
		_, err := g.AddPolicy(ctx, c.text)
		if err == nil || !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%q: %v, want %v mentioning %q", c.text, err, c.sentinel, c.msg)
		}
	}
	if ps := g.Policies(); len(ps) != 0 {
		t.Fatalf("refused policies were stored: %+v", ps)
	}
	if _, err := g.AddPolicy(ctx, "FOR VOLUME acme/db DO SET encryption"); err != nil {
		t.Fatalf("a tenant with a key: %v", err)
	}
	// A group that would pull in a tenant without a key is refused too.
	if err := g.SetRegistryEntry(ctx, RegistryGroup, "gold", []string{"acme"}); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, g, "FOR GROUP gold DO SET encryption")
	err := g.SetRegistryEntry(ctx, RegistryGroup, "gold", []string{"acme", "beta"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no encryption key") {
		t.Fatalf("group with a keyless tenant: %v", err)
	}
	if err := g.DeleteRegistryEntry(ctx, RegistryGroup, "gold"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("deleting a group in use: %v", err)
	}
}

// Policies and the registry survive a restart; group changes recompile.
func TestPoliciesPersist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kr := testKeyring(t, "acme")
	g := openPolicyGateway(t, dir, kr)
	for _, name := range []string{"a", "b"} {
		if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: name, Size: 4 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.SetRegistryEntry(ctx, RegistryGroup, "hot", []string{"acme/a"}); err != nil {
		t.Fatal(err)
	}
	if err := g.SetRegistryEntry(ctx, RegistryFileType, "sheets", []string{"*.ods", "*.xlsx"}); err != nil {
		t.Fatal(err)
	}
	gp := mustAdd(t, g, "FOR GROUP hot DO SET checksum")
	data := words(1 << 20)
	va, _ := g.Volume("acme/a")
	do(t, va, OpWrite, data, 0)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	g = openPolicyGateway(t, dir, kr)
	defer g.Close()
	ps := g.Policies()
	if len(ps) != 1 || ps[0].ID != gp.ID || !ps[0].Active {
		t.Fatalf("policies after restart: %+v", ps)
	}
	if reg := g.Registry(); len(reg.FileTypes["sheets"]) != 2 || reg.Groups["hot"][0] != "acme/a" {
		t.Fatalf("registry after restart: %+v %+v", reg.Groups, reg.FileTypes)
	}
	va, _ = g.Volume("acme/a")
	vb, _ := g.Volume("acme/b")
	if va.Filters().Chain != "checksum(algo=crc32c)" || vb.filt.Load() != nil {
		t.Fatalf("after restart: a %+v, b %+v", va.Filters(), vb.Filters())
	}
	got := make([]byte, len(data))
	do(t, va, OpRead, got, 0)
	if !bytes.Equal(got, data) {
		t.Fatal("data differs after restart")
	}
	// Moving the group to b recompiles the policy.
	if err := g.SetRegistryEntry(ctx, RegistryGroup, "hot", []string{"acme/b"}); err != nil {
		t.Fatal(err)
	}
	if va.filt.Load() != nil || vb.Filters().Chain != "checksum(algo=crc32c)" {
		t.Fatalf("after the group changed: a %+v, b %+v", va.Filters(), vb.Filters())
	}
}

// A WHEN ... TRANSIENT policy is set while its condition holds and cleared
// when it stops; a WHEN policy without TRANSIENT stays set.
func TestAutomationControllers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g := openPolicyGateway(t, dir, nil)
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	w, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "cold", Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	do(t, v, OpWrite, words(64<<10), 0)
	cp := mustAdd(t, g, "FOR VOLUME acme/db WHEN read_iops > 50 DO SET cache WITH size=8MiB TRANSIENT")
	zp := mustAdd(t, g, "FOR VOLUME acme/cold WHEN write_bw > 1MB/s DO SET compression")
	if ps := g.Policies(); ps[0].Active || ps[1].Active || v.filt.Load() != nil {
		t.Fatalf("WHEN policies in force before their condition held: %+v", ps)
	}
	t0 := time.Now()
	g.tick(t0)
	buf := make([]byte, 4096)
	for i := 0; i < 100; i++ {
		do(t, v, OpRead, buf, int64(i%16)*4096)
	}
	do(t, w, OpWrite, words(2<<20), 0)
	g.tick(t0.Add(time.Second))
	ps := g.Policies()
	if !ps[0].Active || ps[0].Metrics["read_iops"] != 100 || !ps[1].Active {
		t.Fatalf("after a busy second: %+v", ps)
	}
	if v.sv.Cache() == nil || v.Filters().Cache == nil || !strings.Contains(v.Filters().Chain, "cache") {
		t.Fatalf("cache not on: %+v", v.Filters())
	}
	for i := 0; i < 10; i++ {
		do(t, v, OpRead, buf, 0)
	}
	if st := v.sv.Cache().Stats(); st.Hits < 9 {
		t.Fatalf("cache stats %+v", st)
	}
	g.tick(t0.Add(2 * time.Second))
	ps = g.Policies()
	if ps[0].Active || v.sv.Cache() != nil || v.filt.Load() != nil {
		t.Fatalf("transient policy still in force after an idle second: %+v", ps[0])
	}
	if !ps[1].Active || w.Filters().Chain != "compression(algo=zstd,level=3)" {
		t.Fatalf("a fired WHEN policy must stay: %+v", ps[1])
	}
	// The fired state survives a restart.
	g.Close()
	g = openPolicyGateway(t, dir, nil)
	defer g.Close()
	for _, p := range g.Policies() {
		if p.ID == zp.ID && !p.Active || p.ID == cp.ID && p.Active {
			t.Fatalf("after restart: %+v", p)
		}
	}
}

// The unfiltered path allocates nothing and classifies with one load.
func TestNoPolicyPathAllocationFree(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), nil)
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "beta", Name: "z", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	mustAdd(t, g, "FOR TENANT beta DO SET compression") // another tenant's policy
	buf := words(64 << 10)
	do(t, v, OpWrite, buf, 0)
	wr := &Request{Op: OpWrite, Buf: buf[:4096], Offset: 8192}
	rd := &Request{Op: OpRead, Buf: make([]byte, 4096), Offset: 4096}
	n := testing.AllocsPerRun(200, func() {
		if err := v.Do(ctx, wr); err != nil {
			t.Fatal(err)
		}
		if err := v.Do(ctx, rd); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Fatalf("plain Do allocates %v times", n)
	}
}

func TestPolicyResolveMatchesCompiler(t *testing.T) {
	// The classify step relies on couldMatch being a superset of Matches.
	reg := policy.NewRegistry()
	reg.SetGroup("g", []string{"acme/db"})
	for _, text := range []string{"FOR TENANT acme DO SET noop", "FOR VOLUME acme/db DO SET noop",
		"FOR FILE acme/db:*.log DO SET noop", "FOR GROUP g DO SET noop", "FOR TENANT acme WHERE file_type = logs DO SET noop"} {
		r, err := policy.Compile(text, reg)
		if err != nil {
			t.Fatal(err)
		}
		if r.Matches("acme", "db", "x/y.log", policy.FileInfo{}) && !couldMatch(&r, "acme", "db") {
			t.Errorf("%s matches but couldMatch says no", text)
		}
		if couldMatch(&r, "acme", "other") && r.Target.Kind != policy.TargetTenant {
			t.Errorf("%s: couldMatch too wide", text)
		}
	}
}

// File rules: a FILE glob and a WHERE file_type pick chains per file on an
// fs volume; block IO and other files stay plain.
func TestFilePolicies(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), nil)
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "home", Kind: KindFS, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	mustAdd(t, g, "FOR FILE acme/home:*.log DO SET compression")
	mustAdd(t, g, "FOR TENANT acme WHERE file_type = docs DO SET checksum")
	if f := v.Filters(); !f.PerFile || f.Chain != "plain" {
		t.Fatalf("volume filters: %+v", f)
	}
	fs := v.Namespace()
	data := words(256 << 10)
	chunksOf := map[string]int{"var/app.log": 4, "notes.txt": 4, "image.raw": 0}
	for name := range chunksOf {
		a, err := fs.Create(ctx, RootIno, strings.ReplaceAll(name, "/", "_"), NewInode{Mode: 0o100644})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fs.Open(ctx, a.Ino); err != nil {
			t.Fatal(err)
		}
		req := &Request{Op: OpWrite, Inode: a.Ino, Buf: data, Path: name, Door: DoorFUSE}
		if err := v.Do(ctx, req); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		if err := v.Do(ctx, &Request{Op: OpRead, Inode: a.Ino, Buf: got, Path: name, Door: DoorFUSE}); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back: %v", name, err)
		}
		if err := fs.Release(ctx, a.Ino); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := v.Scrub(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Transformed != 8 || rep.Checksummed != 4 {
		t.Fatalf("scrub: %+v (want the .log compressed, the .txt checksummed, the .raw plain)", rep)
	}
}

// A write from shared memory (Request.Shared) whose buffer the client
// changes while Do runs: on a volume whose policy checksums or compresses,
// the filters see one version of the bytes (the copy Do made first), so
// the chunk reads back whole, as it was when Do began. A plain volume
// writes from the buffer itself (no copy): it stores what the buffer
// held when the store wrote it.
func TestSharedWriteFiltersSeeOneVersion(t *testing.T) {
	ctx := context.Background()
	g := openPolicyGateway(t, t.TempDir(), testKeyring(t, "acme"))
	defer g.Close()
	for _, name := range []string{"sum", "zip", "plain"} {
		if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: name, Size: 4 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	mustAdd(t, g, "FOR VOLUME acme/sum DO SET checksum")
	mustAdd(t, g, "FOR VOLUME acme/zip DO SET compression WITH algo=lz4")
	before, after := words(128<<10), bytes.Repeat([]byte{0xa5}, 128<<10)
	for _, tc := range []struct {
		vol  string
		want []byte
	}{{"sum", before}, {"zip", before}, {"plain", after}} {
		v, _ := g.Volume("acme/" + tc.vol)
		v.testFault = func(req *Request) {
			if req.Op == OpWrite {
				copy(req.Buf, after) // the client's memory changes mid-write
			}
		}
		shared := bytes.Clone(before)
		if err := v.Do(ctx, &Request{Op: OpWrite, Offset: 64 << 10, Buf: shared, Shared: true, Door: DoorShim}); err != nil {
			t.Fatalf("%s: shared write: %v", tc.vol, err)
		}
		got := make([]byte, len(before))
		if err := v.Do(ctx, &Request{Op: OpRead, Offset: 64 << 10, Buf: got, Door: DoorShim}); err != nil {
			t.Fatalf("%s: read back: %v", tc.vol, err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: read back %q..., want %q...", tc.vol, got[:8], tc.want[:8])
		}
	}
}
