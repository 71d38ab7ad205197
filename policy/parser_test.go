package policy

import (
	"errors"
	"strings"
	"testing"
)

// grammarForms is one policy per grammar form, with the canonical text of
// its AST.
var grammarForms = []struct {
	text, canon string
}{
	{"FOR TENANT acme DO SET noop", "FOR TENANT acme DO SET noop"},
	{"FOR VOLUME acme/db DO SET compression WITH algo=zstd, level=3",
		"FOR VOLUME acme/db DO SET compression WITH algo=zstd, level=3"},
	{"FOR FILE acme/home:*.log DO SET compression WITH algo=lz4",
		"FOR FILE acme/home:*.log DO SET compression WITH algo=lz4"},
	{`FOR FILE acme/home:"My Docs/*.pdf" DO SET encryption`,
		`FOR FILE acme/home:"My Docs/*.pdf" DO SET encryption`},
	{"FOR FILE acme/home:/db/*.sst DO SET checksum", "FOR FILE acme/home:db/*.sst DO SET checksum"},
	{"FOR GROUP gold DO SET bandwidth WITH read_min=30MB/s", "FOR GROUP gold DO SET bandwidth WITH read_min=30MB/s"},
	{"FOR TENANT acme WHERE file_type = DOCS DO SET compression",
		"FOR TENANT acme WHERE file_type == DOCS DO SET compression"},
	{`FOR VOLUME acme/home WHERE file_type != "*.tmp" AND file_size < 1MiB DO SET checksum`,
		`FOR VOLUME acme/home WHERE file_type != "*.tmp" AND file_size < 1MiB DO SET checksum`},
	{"FOR VOLUME acme/db WHEN read_iops > 5000 AND write_iops <= 5K DO SET cache",
		"FOR VOLUME acme/db WHEN read_iops > 5000 AND write_iops <= 5K DO SET cache"},
	{"FOR VOLUME acme/db WHEN read_iops > 5000 OR (read_bw >= 100MB/s AND write_bw != 1GiB/s) DO SET cache",
		"FOR VOLUME acme/db WHEN read_iops > 5000 OR read_bw >= 100MB/s AND write_bw != 1GiB/s DO SET cache"},
	{"FOR VOLUME acme/db WHEN (read_iops > 1 OR read_iops < 0) AND write_iops == 3 DO SET cache",
		"FOR VOLUME acme/db WHEN (read_iops > 1 OR read_iops < 0) AND write_iops == 3 DO SET cache"},
	{"FOR TENANT acme DO SET compression WITH algo=lz4, SET encryption, SET checksum",
		"FOR TENANT acme DO SET compression WITH algo=lz4, SET encryption, SET checksum"},
	{"FOR VOLUME acme/db WHEN read_iops > 5000 DO SET cache WITH size=64MiB TRANSIENT",
		"FOR VOLUME acme/db WHEN read_iops > 5000 DO SET cache WITH size=64MiB TRANSIENT"},
	{"for volume acme/db where FILE_SIZE >= 4KiB when READ_IOPS > 1 do set Compression with ALGO=zstd transient",
		"FOR VOLUME acme/db WHERE file_size >= 4KiB WHEN read_iops > 1 DO SET compression WITH algo=zstd TRANSIENT"},
	{"# a comment\nFOR TENANT acme   # trailing\n  DO\tSET compression\n  WITH algo = \"lz4\" ,level=1\n",
		`FOR TENANT acme DO SET compression WITH algo="lz4", level=1`},
	{"FOR VOLUME acme/db DO SET iops WITH max=5K, read_min=1.5K/s", "FOR VOLUME acme/db DO SET iops WITH max=5K, read_min=1.5K/s"},
	{"FOR TENANT 3m DO SET noop", "FOR TENANT 3m DO SET noop"},
}

func TestParseGrammarForms(t *testing.T) {
	for _, tc := range grammarForms {
		p, err := Parse(tc.text)
		if err != nil {
			t.Errorf("%q: %v", tc.text, err)
			continue
		}
		if got := p.String(); got != tc.canon {
			t.Errorf("%q:\n got %s\nwant %s", tc.text, got, tc.canon)
		}
		again, err := Parse(p.String())
		if err != nil || again.String() != p.String() {
			t.Errorf("%q: canonical form does not reparse: %v", tc.text, err)
		}
		if p.Text != strings.TrimSpace(p.Text) || !strings.HasPrefix(strings.ToUpper(p.Text), "FOR") {
			t.Errorf("%q: Text %q", tc.text, p.Text)
		}
	}
}

func TestParseDetails(t *testing.T) {
	p, err := Parse(`FOR FILE acme/home:"My Docs/*.pdf" WHERE file_size < 1MiB WHEN read_iops > 5K DO SET cache WITH size=64MiB TRANSIENT`)
	if err != nil {
		t.Fatal(err)
	}
	if p.Target.Kind != TargetFile || p.Target.Tenant != "acme" || p.Target.Volume != "home" || p.Target.Glob != "My Docs/*.pdf" {
		t.Fatalf("target %+v", p.Target)
	}
	if len(p.Where) != 1 || p.Where[0].Field != "file_size" || p.Where[0].Op != OpLT || p.Where[0].Value.Text != "1MiB" {
		t.Fatalf("where %+v", p.Where)
	}
	c, ok := p.When.(*Compare)
	if !ok || c.Metric != "read_iops" || c.Op != OpGT || c.Value.Text != "5K" || c.Pos != (Pos{1, 64}) {
		t.Fatalf("when %+v", p.When)
	}
	if !p.Transient || len(p.Actions) != 1 || p.Actions[0].Params[0].Name != "size" || p.Actions[0].Params[0].Pos != (Pos{1, 97}) {
		t.Fatalf("actions %+v", p.Actions)
	}
	if p.Text != strings.TrimSpace(p.Text) || !strings.HasSuffix(p.Text, "TRANSIENT") {
		t.Fatalf("text %q", p.Text)
	}
}

func TestParseAll(t *testing.T) {
	src := `
# policies for acme
FOR TENANT acme DO SET compression;
FOR VOLUME acme/db
    DO SET encryption   # no ';' needed before the next FOR
FOR GROUP gold DO SET bandwidth WITH read_min=30MB/s ;;
`
	ps, err := ParseAll(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("%d policies", len(ps))
	}
	want := []string{"FOR TENANT acme DO SET compression", "FOR VOLUME acme/db\n    DO SET encryption", "FOR GROUP gold DO SET bandwidth WITH read_min=30MB/s"}
	for i, p := range ps {
		if p.Text != want[i] {
			t.Errorf("policy %d text %q, want %q", i, p.Text, want[i])
		}
	}
	if ps[1].Pos != (Pos{4, 1}) {
		t.Errorf("second policy at %+v", ps[1].Pos)
	}
	if _, err := Parse(src); err == nil || !strings.Contains(err.Error(), "expected one policy, found 3 policies") {
		t.Errorf("Parse of three: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	long := "FOR TENANT acme WHEN " + strings.Repeat("(", 20) + "read_iops > 1" + strings.Repeat(")", 20) + " DO SET cache"
	manyTerms := "FOR TENANT acme WHEN read_iops > 1" + strings.Repeat(" AND read_iops > 1", 64) + " DO SET cache"
	for _, tc := range []struct {
		text string
		want string // the whole message
	}{
		{"", `line 1, col 1: expected FOR, found end of input`},
		{"  # only a comment\n", `line 2, col 1: expected FOR, found end of input`},
		{"TENANT acme", `line 1, col 1: expected FOR, found keyword TENANT`},
		{"FOR TENNANT acme DO SET noop", `line 1, col 5: expected TENANT, VOLUME, FILE or GROUP, found "TENNANT"`},
		{"FOR", `line 1, col 4: expected TENANT, VOLUME, FILE or GROUP, found end of input`},
		{"FOR TENANT", `line 1, col 11: expected a tenant name, found end of input`},
		{"FOR TENANT -x DO SET noop", `line 1, col 12: expected a tenant name, found "-x" (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)`},
		{"FOR TENANT acme/db DO SET noop", `line 1, col 12: expected a tenant name, found "acme/db" (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)`},
		{"FOR VOLUME acme DO SET noop", `line 1, col 12: expected TENANT/VOLUME, found "acme"`},
		{"FOR VOLUME acme/ DO SET noop", `line 1, col 12: expected TENANT/VOLUME, found "acme/" (volume: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)`},
		{"FOR FILE acme/home DO SET noop", `line 1, col 10: expected TENANT/VOLUME:GLOB, found "acme/home"`},
		{"FOR FILE acme/home: DO SET noop", `line 1, col 10: expected TENANT/VOLUME:GLOB, found "acme/home:" (the glob must be 1-1024 bytes)`},
		{"FOR FILE acme/home:[a DO SET noop", `line 1, col 10: expected TENANT/VOLUME:GLOB, found "acme/home:[a" (malformed glob)`},
		{`FOR FILE acme/home:"a DO SET noop`, `line 1, col 10: expected TENANT/VOLUME:GLOB, found "acme/home:\"a DO SET noop" (unterminated or malformed string)`},
		{"FOR GROUP _x DO SET noop", `line 1, col 11: expected a group name, found "_x" (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)`},
		{"FOR TENANT acme SET noop", `line 1, col 17: expected WHERE, WHEN or DO, found keyword SET`},
		{"FOR TENANT acme DO compression", `line 1, col 20: expected SET, found "compression"`},
		{"FOR TENANT acme DO SET", `line 1, col 23: expected a filter name, found end of input`},
		{"FOR TENANT acme DO SET with", `line 1, col 24: expected a filter name, found keyword WITH`},
		{"FOR TENANT acme DO SET compression WITH", `line 1, col 40: expected a parameter name, found end of input`},
		{"FOR TENANT acme DO SET compression WITH algo", `line 1, col 45: expected '=', found end of input`},
		{"FOR TENANT acme DO SET compression WITH algo <", `line 1, col 46: expected '=', found "<"`},
		{"FOR TENANT acme DO SET compression WITH algo=", `line 1, col 46: expected a value (a word, a number or a "string"), found end of input`},
		{`FOR TENANT acme DO SET compression WITH algo="zstd`, `line 1, col 46: expected a value (a word, a number or a "string"), found "\"zstd" (unterminated or malformed string)`},
		{`FOR TENANT acme DO SET compression WITH algo="\q"`, `line 1, col 46: expected a value (a word, a number or a "string"), found "\"\\q\"" (unterminated or malformed string)`},
		{"FOR TENANT acme DO SET compression WITH algo=zstd level=3", `line 1, col 51: expected ',', TRANSIENT, ';' or end of input, found "level"`},
		{"FOR TENANT acme DO SET compression,", `line 1, col 36: expected SET, found end of input`},
		{"FOR TENANT acme DO SET compression TRANSIENT x", `line 1, col 46: expected ';', FOR or end of input, found "x"`},
		{"FOR TENANT acme WHERE file_type DOCS DO SET noop", `line 1, col 33: expected a comparison (<, <=, >, >=, =, !=), found "DOCS"`},
		{"FOR TENANT acme WHERE DO SET noop", `line 1, col 23: expected file_type or file_size, found keyword DO`},
		{"FOR TENANT acme WHERE file_size < 1 SET noop", `line 1, col 37: expected AND, WHEN or DO, found keyword SET`},
		{"FOR TENANT acme WHEN DO SET noop", `line 1, col 22: expected a metric or '(', found keyword DO`},
		{"FOR TENANT acme WHEN read_iops 5000 DO SET noop", `line 1, col 32: expected a comparison (<, <=, >, >=, =, !=), found "5000"`},
		{"FOR TENANT acme WHEN read_iops > DO SET noop", `line 1, col 34: expected a number, found keyword DO`},
		{"FOR TENANT acme WHEN read_iops ! 5 DO SET noop", `line 1, col 32: expected a comparison (<, <=, >, >=, =, !=), found "!" ('!' must be followed by '=')`},
		{"FOR TENANT acme WHEN (read_iops > 5 DO SET noop", `line 1, col 37: expected AND, OR or ')', found keyword DO`},
		{"FOR TENANT acme WHEN read_iops > 5 SET noop", `line 1, col 36: expected AND, OR or DO, found keyword SET`},
		{"FOR TENANT acme DO SET noop @", `line 1, col 29: expected ',', TRANSIENT, ';' or end of input, found "@"`},
		{long, `line 1, col 38: expected a metric, found "(" (at most 16 nested parentheses)`},
		{manyTerms, `line 1, col 1174: expected DO, found "read_iops" (at most 64 comparisons)`},
		{"FOR TENANT acme\nDO SET noop\nFOR", `line 3, col 4: expected TENANT, VOLUME, FILE or GROUP, found end of input`},
		{"FOR TENANT ü DO SET noop", `line 1, col 12: expected a tenant name, found "ü" (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)`},
		{"FOR TENANT ü DO SET noop é", `line 1, col 12: expected a tenant name, found "ü" (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)`},
		{"FOR TENANT a DO SET é", `line 1, col 21: expected a filter name, found "é"`},
	} {
		_, err := ParseAll(tc.text)
		var pe *ParseError
		if !errors.As(err, &pe) || !errors.Is(err, ErrSyntax) {
			t.Errorf("%q: %v, want a ParseError", tc.text, err)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.text, err, tc.want)
		}
	}
	if _, err := ParseAll(strings.Repeat(" ", MaxPolicyText+1)); !errors.Is(err, ErrSyntax) {
		t.Errorf("oversized text: %v", err)
	}
}
