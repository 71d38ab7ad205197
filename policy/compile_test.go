package policy

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/gateway/filter"
)

func testRegistry(t testing.TB) *Registry {
	t.Helper()
	r := NewRegistry()
	if err := r.SetGroup("gold", []string{"acme", "globex/db"}); err != nil {
		t.Fatal(err)
	}
	return r
}

func mustCompile(t testing.TB, reg *Registry, text string) Rule {
	t.Helper()
	r, err := Compile(text, reg)
	if err != nil {
		t.Fatalf("%q: %v", text, err)
	}
	return r
}

// sameRule compares rules ignoring Text.
func sameRule(a, b Rule) bool {
	a.Text, b.Text = "", ""
	return reflect.DeepEqual(a, b)
}

func TestCompileGrammarFormsRoundTrip(t *testing.T) {
	reg := testRegistry(t)
	for _, tc := range grammarForms {
		r := mustCompile(t, reg, tc.text)
		back, err := Compile(r.String(), reg)
		if err != nil {
			t.Errorf("%q: String() = %q does not compile: %v", tc.text, r.String(), err)
			continue
		}
		if !sameRule(r, back) {
			t.Errorf("%q: round trip through %q changed the rule:\n%+v\n%+v", tc.text, r.String(), r, back)
		}
		j, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var fromJSON Rule
		if err := json.Unmarshal(j, &fromJSON); err != nil || !reflect.DeepEqual(r, fromJSON) {
			t.Errorf("%q: JSON round trip: %v\n%s", tc.text, err, j)
		}
	}
}

func TestCompileRule(t *testing.T) {
	reg := testRegistry(t)
	r := mustCompile(t, reg, `FOR TENANT acme WHERE file_type = docs AND file_size < 1MiB
		WHEN read_iops > 5K OR (read_bw >= 100MB/s AND write_bw < 1GiB/s)
		DO SET compression WITH algo=LZ4, SET cache WITH size=64MiB, SET bandwidth WITH read_min=30MB/s TRANSIENT`)
	if !reflect.DeepEqual(r.Target, Target{Kind: TargetTenant, Tenant: "acme"}) {
		t.Fatalf("target %+v", r.Target)
	}
	if len(r.Where) != 2 || r.Where[0].Set != "docs" || !contains(r.Where[0].Globs, "*.pdf") || r.Where[1].Size != 1<<20 || r.Where[1].Op != OpLT {
		t.Fatalf("where %+v", r.Where)
	}
	want := &Cond{Or: []Cond{
		{Metric: "read_iops", Op: OpGT, Value: 5000},
		{And: []Cond{{Metric: "read_bw", Op: OpGE, Value: 1e8}, {Metric: "write_bw", Op: OpLT, Value: 1 << 30}}},
	}}
	if !reflect.DeepEqual(r.When, want) {
		t.Fatalf("when %+v", r.When)
	}
	wantActions := []Action{
		{Filter: "compression", Params: map[string]string{"algo": "lz4", "level": "3"}},
		{Filter: "cache", Params: map[string]string{"size": "67108864"}},
		{Filter: "bandwidth", Params: map[string]string{"read_min": "30000000"}},
	}
	if !reflect.DeepEqual(r.Actions, wantActions) || !r.Transient {
		t.Fatalf("actions %+v", r.Actions)
	}
	want2 := "FOR TENANT acme WHERE file_type == docs AND file_size < 1048576 WHEN read_iops > 5000 OR read_bw >= 100000000 AND write_bw < 1073741824 " +
		"DO SET compression WITH algo=lz4, level=3, SET cache WITH size=67108864, SET bandwidth WITH read_min=30000000 TRANSIENT"
	if r.String() != want2 {
		t.Fatalf("String:\n got %s\nwant %s", r.String(), want2)
	}
	g := mustCompile(t, reg, "FOR GROUP GOLD DO SET noop")
	if g.Target.Group != "gold" || !reflect.DeepEqual(g.Target.Members, []string{"acme", "globex/db"}) {
		t.Fatalf("group %+v", g.Target)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestCompileErrors(t *testing.T) {
	reg := testRegistry(t)
	for _, tc := range []struct {
		text     string
		sentinel error
		want     string
	}{
		{"FOR TENANT acme DO SET compresion", ErrUnknownFilter,
			`line 1, col 24: filter "compresion" is not registered (filters: bandwidth, cache, checksum, compression, encryption, iops, noop)`},
		{"FOR TENANT acme DO SET compression WITH lvl=3", ErrBadParam,
			`line 1, col 41: filter compression: unknown parameter "lvl" (parameters: algo, level)`},
		{"FOR TENANT acme DO SET compression WITH level=99", ErrBadParam,
			`line 1, col 41: filter compression: parameter level: "99" is out of range 1..22`},
		{"FOR TENANT acme DO SET compression WITH algo=gzip", ErrBadParam,
			`line 1, col 41: filter compression: parameter algo: "gzip" is not one of zstd, lz4`},
		{"FOR TENANT acme DO SET cache WITH size=1Mb", ErrBadParam,
			`line 1, col 35: filter cache: parameter size: "1Mb": unknown unit "Mb" for size (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)`},
		{"FOR TENANT acme DO SET compression WITH level=1, level=2", ErrBadParam,
			`line 1, col 50: filter compression: parameter level given twice`},
		{"FOR TENANT acme DO SET bandwidth", ErrBadParam,
			`line 1, col 24: filter bandwidth: give at least one of min, max, read_min, read_max, write_min, write_max`},
		{"FOR TENANT acme DO SET bandwidth WITH min=2MB/s, max=1MB/s", ErrBadParam,
			`line 1, col 24: filter bandwidth: min is above max`},
		{"FOR TENANT acme DO SET noop, SET noop", ErrBadPolicy,
			`line 1, col 34: filter noop is set twice in one policy`},
		{"FOR TENANT acme WHEN reads > 5 DO SET cache", ErrUnknownMetric,
			`line 1, col 22: metric "reads" is not registered (metrics: read_bw, read_iops, write_bw, write_iops)`},
		{"FOR TENANT acme WHEN read_iops > 5MB DO SET cache", ErrBadValue,
			`line 1, col 34: metric read_iops (iops): "5MB": unknown unit "MB" for iops (use K, M or G, optionally with /s)`},
		{`FOR TENANT acme WHEN read_bw > "fast" DO SET cache`, ErrBadValue,
			`line 1, col 32: read_bw wants a number, not a string`},
		{"FOR GROUP silver DO SET noop", ErrUnknownGroup,
			`line 1, col 5: group "silver" is not registered (groups: gold)`},
		{"FOR TENANT acme WHERE file_type = SPREADSHEETS DO SET noop", ErrUnknownFileType,
			`line 1, col 35: file type "SPREADSHEETS" is not registered (file types: archives, docs, images, logs, media; or give a quoted glob)`},
		{`FOR TENANT acme WHERE file_type = "[" DO SET noop`, ErrBadValue,
			`line 1, col 35: file_type glob "[" is malformed`},
		{"FOR TENANT acme WHERE file_type < docs DO SET noop", ErrBadValue,
			`line 1, col 23: file_type takes = or !=, not <`},
		{"FOR TENANT acme WHERE file_size < big DO SET noop", ErrBadValue,
			`line 1, col 35: file_size: "big" is not a number`},
		{`FOR TENANT acme WHERE file_size < "1" DO SET noop`, ErrBadValue,
			`line 1, col 35: file_size wants a size like 1MiB, not a string`},
		{"FOR TENANT acme WHERE owner = bob DO SET noop", ErrUnknownField,
			`line 1, col 23: "owner" is not a file attribute (file_type, file_size)`},
		{"FOR TENANT acme DO SET cache TRANSIENT", ErrBadPolicy,
			`line 1, col 1: TRANSIENT needs a WHEN condition (it means: only while the condition holds)`},
	} {
		_, err := Compile(tc.text, reg)
		var ce *CompileError
		if !errors.As(err, &ce) || !errors.Is(err, tc.sentinel) || !IsCompileError(err) {
			t.Errorf("%q: %v, want a CompileError matching %v", tc.text, err, tc.sentinel)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.text, err, tc.want)
		}
		if tc.sentinel == ErrBadParam && !errors.Is(err, filter.ErrParam) && !strings.Contains(tc.want, "twice") {
			t.Errorf("%q: does not wrap filter.ErrParam", tc.text)
		}
	}
	if _, err := Compile("FOR TENNANT x DO SET noop", reg); IsCompileError(err) || !errors.Is(err, ErrSyntax) {
		t.Errorf("syntax error reported as %v", err)
	}
}

func TestCompileTooManyTransforms(t *testing.T) {
	reg := NewRegistry()
	var sets []string
	for _, n := range []string{"a1", "a2", "a3", "a4", "a5"} {
		if err := reg.AddFilter(n, FilterDef{Kind: filter.Transform}); err != nil {
			t.Fatal(err)
		}
		sets = append(sets, "SET "+n)
	}
	text := "FOR TENANT acme DO SET compression, SET encryption, SET checksum, SET noop, " + strings.Join(sets, ", ")
	if _, err := Compile(text, reg); !errors.Is(err, ErrBadPolicy) || !strings.Contains(err.Error(), "more than 8 data filters") {
		t.Fatalf("%v", err)
	}
}

func TestCompileAll(t *testing.T) {
	reg := testRegistry(t)
	rules, err := CompileAll("FOR TENANT acme DO SET compression\nFOR VOLUME acme/db DO SET encryption", reg)
	if err != nil || len(rules) != 2 || rules[1].Target.Volume != "db" || rules[1].Text != "FOR VOLUME acme/db DO SET encryption" {
		t.Fatalf("%+v %v", rules, err)
	}
	if _, err := CompileAll("FOR TENANT acme DO SET compression\nFOR VOLUME acme/db DO SET encrypt", reg); err == nil || !strings.HasPrefix(err.Error(), "line 2, col 27:") {
		t.Fatalf("error in second policy: %v", err)
	}
}

func TestRegistry(t *testing.T) {
	r := testRegistry(t)
	if err := r.AddFilter("dedup", FilterDef{Kind: filter.Transform, Description: "wasm dedup",
		Params: []filter.ParamSpec{{Name: "window", Type: filter.TypeSize, Default: "4096", Min: 512, Max: 1 << 20}, {Name: "mode", Type: filter.TypeEnum, Allowed: []string{"fast", "slow"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := r.AddMetric("latency_us", MetricDef{Type: filter.TypeInt, Description: "p99 latency"}); err != nil {
		t.Fatal(err)
	}
	if err := r.SetFileType("Sheets", []string{"*.XLS", "/data/*.csv"}); err != nil {
		t.Fatal(err)
	}
	rule := mustCompile(t, r, "FOR VOLUME acme/db WHERE file_type = sheets WHEN latency_us > 800 DO SET dedup WITH window=8KiB, mode=FAST")
	if !reflect.DeepEqual(rule.Actions[0].Params, map[string]string{"window": "8192", "mode": "fast"}) ||
		!reflect.DeepEqual(rule.Where[0].Globs, []string{"*.xls", "data/*.csv"}) {
		t.Fatalf("%+v", rule)
	}
	if _, err := Compile("FOR VOLUME acme/db DO SET dedup WITH window=1", r); !errors.Is(err, ErrBadParam) {
		t.Fatalf("custom filter range: %v", err)
	}

	// JSON round trip, and a loaded registry compiles the same.
	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := LoadRegistry(j)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, back) {
		t.Fatalf("registry JSON round trip:\n%+v\n%+v", r, back)
	}
	if rule2 := mustCompile(t, back, rule.Text); !sameRule(rule, rule2) {
		t.Fatal("loaded registry compiles differently")
	}
	// A persisted built-in that changed is refreshed from this binary.
	var doc map[string]map[string]json.RawMessage
	json.Unmarshal(j, &doc)
	doc["filters"]["compression"] = json.RawMessage(`{"kind":"transform","params":[],"builtin":true}`)
	delete(doc["metrics"], "read_iops")
	j2, _ := json.Marshal(doc)
	back2, err := LoadRegistry(j2)
	if err != nil || len(back2.Filters["compression"].Params) != 2 || !back2.Metrics["read_iops"].Builtin {
		t.Fatalf("builtins not refreshed: %v", err)
	}
	if _, err := LoadRegistry([]byte(`{"groups":{"g":["bad name"]}}`)); !errors.Is(err, ErrRegistry) {
		t.Fatalf("bad persisted group: %v", err)
	}
	if _, err := LoadRegistry([]byte(`{`)); !errors.Is(err, ErrRegistry) {
		t.Fatalf("bad JSON: %v", err)
	}

	// Clone is deep.
	c := r.Clone()
	c.Groups["gold"][0] = "mutated"
	c.Filters["dedup"].Params[1].Allowed[0] = "mutated"
	if r.Groups["gold"][0] != "acme" || r.Filters["dedup"].Params[1].Allowed[0] != "fast" {
		t.Fatal("Clone shares slices")
	}

	for _, bad := range []error{
		r.AddFilter("compression", FilterDef{Kind: filter.Transform}),
		r.AddFilter("with", FilterDef{Kind: filter.Transform}),
		r.AddFilter("9lives", FilterDef{Kind: filter.Transform}),
		r.AddFilter("x", FilterDef{Kind: 9}),
		r.AddFilter("x", FilterDef{Kind: filter.Control, Params: []filter.ParamSpec{{Name: "a", Type: filter.TypeEnum}}}),
		r.AddFilter("x", FilterDef{Kind: filter.Control, Params: []filter.ParamSpec{{Name: "a", Type: filter.TypeInt}, {Name: "A", Type: filter.TypeInt}}}),
		r.AddFilter("x", FilterDef{Kind: filter.Control, Params: []filter.ParamSpec{{Name: "a", Type: filter.TypeInt, Default: "z"}}}),
		r.AddMetric("read_iops", MetricDef{Type: filter.TypeIOPS}),
		r.AddMetric("m", MetricDef{Type: filter.TypeEnum}),
		r.SetGroup("g", []string{"acme/db/x"}),
		r.SetGroup("bad group", nil),
		r.SetFileType("t", nil),
		r.SetFileType("t", []string{"["}),
		r.Remove("filter", "compression"),
		r.Remove("metric", "read_bw"),
		r.Remove("group", "silver"),
		r.Remove("widget", "x"),
	} {
		if !errors.Is(bad, ErrRegistry) {
			t.Errorf("accepted: %v", bad)
		}
	}
	for _, kind := range []string{"filter", "metric", "group", "file_type"} {
		name := map[string]string{"filter": "dedup", "metric": "latency_us", "group": "gold", "file_type": "sheets"}[kind]
		if err := r.Remove(kind, name); err != nil {
			t.Errorf("remove %s %s: %v", kind, name, err)
		}
	}
	if _, err := Compile("FOR GROUP gold DO SET noop", r); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("removed group still compiles: %v", err)
	}
}

// FuzzParse: the parser never panics; whatever parses prints to a canonical
// form that parses to the same canonical form; whatever compiles prints to
// a policy that compiles to the same rule.
func FuzzParse(f *testing.F) {
	for _, tc := range grammarForms {
		f.Add(tc.text)
	}
	f.Add("FOR TENANT acme WHEN ((read_iops > 1)) DO SET cache TRANSIENT; FOR GROUP gold DO SET iops WITH max=5K")
	f.Add(`FOR FILE a/b:"x y\n"/* WHERE file_type = "*.PDF" DO SET noop`)
	f.Add("FOR TENANT acme DO SET compression WITH algo=\"lz4\", level=1, SET checksum")
	reg := testRegistry(f)
	f.Fuzz(func(t *testing.T, text string) {
		ps, err := ParseAll(text)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line < 1 || pe.Col < 1 {
				t.Fatalf("%q: error %v is not a positioned ParseError", text, err)
			}
			return
		}
		for _, p := range ps {
			canon := p.String()
			again, err := Parse(canon)
			if err != nil {
				t.Fatalf("%q: canonical %q does not parse: %v", text, canon, err)
			}
			if again.String() != canon {
				t.Fatalf("%q: canonical form not stable:\n%s\n%s", text, canon, again.String())
			}
			r, err := CompilePolicy(p, reg)
			if err != nil {
				if !IsCompileError(err) {
					t.Fatalf("%q: %v is not a CompileError", text, err)
				}
				continue
			}
			back, err := Compile(r.String(), reg)
			if err != nil || !sameRule(r, back) {
				t.Fatalf("%q: rule %q does not recompile to itself: %v", text, r.String(), err)
			}
			_ = Resolve([]Rule{r}, "acme", "db", "x/y.pdf", FileInfo{Size: 10})
		}
	})
}
