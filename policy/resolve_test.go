package policy

import (
	"reflect"
	"testing"
)

func rules(t *testing.T, reg *Registry, texts ...string) []Rule {
	t.Helper()
	var out []Rule
	for i, text := range texts {
		r := mustCompile(t, reg, text)
		r.ID = uint64(i + 1)
		out = append(out, r)
	}
	return out
}

func filters(m Match) []string {
	var out []string
	for _, a := range m.Actions {
		out = append(out, a.Filter)
	}
	return out
}

func TestResolveSpecificity(t *testing.T) {
	reg := testRegistry(t)
	rs := rules(t, reg,
		"FOR TENANT acme DO SET compression, SET checksum",                // 1
		"FOR VOLUME acme/db DO SET encryption",                            // 2
		"FOR FILE acme/home:*.log DO SET compression WITH algo=lz4",       // 3
		"FOR FILE acme/home:db/*.sst DO SET noop",                         // 4
		"FOR GROUP gold DO SET bandwidth WITH read_min=30MB/s",            // 5
		"FOR VOLUME acme/home WHERE file_type = docs DO SET encryption",   // 6
		"FOR VOLUME acme/home WHERE file_size >= 1GiB DO SET compression", // 7
	)
	for _, tc := range []struct {
		tenant, volume, path string
		size                 int64
		level                TargetKind
		rules                []uint64
		filters              []string
	}{
		// The volume gets only its own policy, not the tenant's.
		{"acme", "db", "", 0, TargetVolume, []uint64{2}, []string{"encryption"}},
		// Another volume of the tenant gets the tenant's.
		{"acme", "scratch", "", 0, TargetTenant, []uint64{1}, []string{"compression", "checksum"}},
		// A file glob without '/' matches the base name anywhere.
		{"acme", "home", "/var/app/x.log", 0, TargetFile, []uint64{3}, []string{"compression"}},
		{"acme", "home", "db/000001.sst", 0, TargetFile, []uint64{4}, []string{"noop"}},
		{"acme", "home", "other/db/000001.sst", 0, TargetTenant, []uint64{1}, []string{"compression", "checksum"}},
		// Block IO never matches file rules or WHERE rules.
		{"acme", "home", "", 0, TargetTenant, []uint64{1}, []string{"compression", "checksum"}},
		// WHERE: file type (case-insensitive) and size; both volume rules match and combine.
		{"acme", "home", "a/Report.PDF", 0, TargetVolume, []uint64{6}, []string{"encryption"}},
		{"acme", "home", "a/big.pdf", 2 << 30, TargetVolume, []uint64{6, 7}, []string{"encryption", "compression"}},
		{"acme", "home", "a/small.bin", 10, TargetTenant, []uint64{1}, []string{"compression", "checksum"}},
		// A group is the least specific: acme's own tenant policy wins.
		{"acme", "other", "", 0, TargetTenant, []uint64{1}, []string{"compression", "checksum"}},
		// globex/db is in gold by volume; globex/web is not.
		{"globex", "db", "", 0, TargetGroup, []uint64{5}, []string{"bandwidth"}},
		{"globex", "web", "", 0, "", nil, nil},
		{"initech", "db", "x.log", 0, "", nil, nil},
	} {
		m := Resolve(rs, tc.tenant, tc.volume, tc.path, FileInfo{Size: tc.size})
		if m.Level != tc.level || !reflect.DeepEqual(m.Rules, tc.rules) || !reflect.DeepEqual(filters(m), tc.filters) {
			t.Errorf("%s/%s %q: got %s %v %v, want %s %v %v", tc.tenant, tc.volume, tc.path,
				m.Level, m.Rules, filters(m), tc.level, tc.rules, tc.filters)
		}
	}
}

func TestResolveMergesSameLevelInIDOrder(t *testing.T) {
	reg := testRegistry(t)
	rs := rules(t, reg,
		"FOR VOLUME acme/db DO SET compression WITH algo=zstd, SET checksum",
		"FOR VOLUME acme/db WHEN read_iops > 100 DO SET cache WITH size=16MiB, SET compression WITH algo=lz4 TRANSIENT",
	)
	// Out of order input: IDs decide.
	m := Resolve([]Rule{rs[1], rs[0]}, "acme", "db", "", FileInfo{})
	if !reflect.DeepEqual(m.Rules, []uint64{1, 2}) || !reflect.DeepEqual(filters(m), []string{"compression", "checksum", "cache"}) ||
		m.Actions[0].Params["algo"] != "lz4" {
		t.Fatalf("%+v", m)
	}
	// With the WHEN rule out of force, the static one alone.
	m = Resolve(rs[:1], "acme", "db", "", FileInfo{})
	if m.Actions[0].Params["algo"] != "zstd" || len(m.Actions) != 2 {
		t.Fatalf("%+v", m)
	}
	if rs[0].NeedsPath() || !mustCompile(t, reg, "FOR FILE a/b:x DO SET noop").NeedsPath() ||
		!mustCompile(t, reg, "FOR VOLUME a/b WHERE file_size > 1 DO SET noop").NeedsPath() {
		t.Fatal("NeedsPath")
	}
}

func TestCondEval(t *testing.T) {
	reg := testRegistry(t)
	r := mustCompile(t, reg, "FOR TENANT acme WHEN read_iops > 5K AND (write_iops < 10 OR read_bw >= 1MB/s) DO SET cache TRANSIENT")
	for _, tc := range []struct {
		m            map[string]float64
		value, known bool
	}{
		{map[string]float64{"read_iops": 6000, "write_iops": 5, "read_bw": 0}, true, true},
		{map[string]float64{"read_iops": 6000, "write_iops": 50, "read_bw": 1e6}, true, true},
		{map[string]float64{"read_iops": 6000, "write_iops": 50, "read_bw": 1}, false, true},
		{map[string]float64{"read_iops": 5000, "write_iops": 5}, false, true},   // AND with a false term is known
		{map[string]float64{"read_iops": 6000, "write_iops": 5}, true, true},    // OR with a true term is known
		{map[string]float64{"read_iops": 6000, "write_iops": 50}, false, false}, // depends on read_bw
		{map[string]float64{}, false, false},                                    // nothing known
		{map[string]float64{"write_iops": 5, "read_bw": 1e9}, false, false},     // depends on read_iops
	} {
		v, k := r.When.Eval(tc.m)
		if v != tc.value || k != tc.known {
			t.Errorf("%v: Eval = %v,%v; want %v,%v", tc.m, v, k, tc.value, tc.known)
		}
	}
	if got := r.When.Metrics(); !reflect.DeepEqual(got, []string{"read_bw", "read_iops", "write_iops"}) {
		t.Errorf("Metrics %v", got)
	}
}

func TestRuleStep(t *testing.T) {
	reg := testRegistry(t)
	static := mustCompile(t, reg, "FOR TENANT acme DO SET cache")
	transient := mustCompile(t, reg, "FOR TENANT acme WHEN read_iops > 100 DO SET cache TRANSIENT")
	persistent := mustCompile(t, reg, "FOR TENANT acme WHEN read_iops > 100 DO SET cache")
	hot, cold, none := map[string]float64{"read_iops": 500}, map[string]float64{"read_iops": 5}, map[string]float64{}
	if !static.Step(false, cold) {
		t.Fatal("static rule not in force")
	}
	steps := []struct {
		m                map[string]float64
		trans, persisted bool
	}{
		{cold, false, false},
		{none, false, false}, // unknown: unchanged
		{hot, true, true},
		{none, true, true}, // unknown: unchanged
		{hot, true, true},
		{cold, false, true}, // TRANSIENT clears; a persistent rule stays
		{hot, true, true},
	}
	at, ap := false, false
	for i, s := range steps {
		at, ap = transient.Step(at, s.m), persistent.Step(ap, s.m)
		if at != s.trans || ap != s.persisted {
			t.Fatalf("step %d (%v): transient %v persistent %v, want %v %v", i, s.m, at, ap, s.trans, s.persisted)
		}
	}
}
