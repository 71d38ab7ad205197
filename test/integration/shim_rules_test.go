package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// ddSeconds is dd's own "..., 4.01 s, ..." from its final line.
var ddSeconds = regexp.MustCompile(`copied, ([0-9.]+) s`)

// shimDD runs `dd if=src of=dst bs=1M` under the shim and returns the
// seconds dd measured and its shim stats.
func shimDD(t *testing.T, g *gw, mnt, src, dst string) (float64, shimStats) {
	t.Helper()
	cmd := g.shimCmd(mnt, testtool.Path(t, "dd"), "if="+src, "of="+dst, "bs=1M")
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dd to %s under the shim: %v\n%s\ngateway log:\n%s", dst, err, out, g.logTail())
	}
	m := ddSeconds.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("dd printed no time:\n%s", out)
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	return secs, parseShimStats(string(out))
}

// TestShimQoSAndPolicy: shim IO goes through the same data plane as the
// FUSE door. A QoS file rule limits *.log to 2 MiB/s, and a FILE policy
// compresses *.db with lz4; dd under the shim writes 8 MiB of random bytes
// to a .log file and 4 MiB of text to a .db file. The .log write runs at
// no more than 1.5x the rule's rate and the rule admitted its bytes; every
// chunk of the .db file (and none of the .log file) carries a filter
// record (scrub), and the volume holds the .db file in less than 70% of
// its size; both files read back through the mount; every dd write was
// bypassed.
func TestShimQoSAndPolicy(t *testing.T) {
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/rules", "fs", "1G")
	g.mustSluice("qos", "set", "--volume", "t/rules", "--file", "*.log", "--bw", "2MiB")
	g.mustSluice("policy", "add", "FOR FILE t/rules:*.db DO SET compression WITH algo=lz4")

	tmp := t.TempDir()
	const logN, dbN = 8 * MiB, 4 * MiB
	random := make([]byte, logN)
	rand.Read(random)
	randomSrc := filepath.Join(tmp, "random")
	must(t, os.WriteFile(randomSrc, random, 0o600))
	textSrc := compressibleFile(t, tmp, dbN)
	text, err := os.ReadFile(textSrc)
	must(t, err)

	// The throttled .log file.
	logRuleBefore := g.fileRuleBytes("*.log")
	secs, st := shimDD(t, g, mnt, randomSrc, filepath.Join(mnt, "app.log"))
	rate := float64(logN) / MiB / secs
	t.Logf("dd under the shim wrote 8 MiB to app.log in %.2f s (%.2f MiB/s; rule 2 MiB/s)", secs, rate)
	if rate > 1.5*2 {
		t.Errorf("the .log file was written at %.2f MiB/s: faster than 1.5x the 2 MiB/s rule", rate)
	}
	if got := g.fileRuleBytes("*.log") - logRuleBefore; got < logN {
		t.Errorf("the *.log rule admitted %d bytes, want at least the %d dd wrote", got, logN)
	}
	assertDDBypassed(t, st, logN/MiB)

	// The compressed .db file (not throttled: the rule names *.log).
	allocBefore := g.allocated("t/rules")
	secs, st = shimDD(t, g, mnt, textSrc, filepath.Join(mnt, "app.db"))
	used := g.allocated("t/rules") - allocBefore
	t.Logf("dd under the shim wrote 4 MiB to app.db in %.2f s; the volume grew by %d bytes (%.0f%%)", secs, used, 100*float64(used)/dbN)
	if used > dbN*70/100 {
		t.Errorf("the .db file takes %d bytes of the volume for %d written: not compressed", used, dbN)
	}
	assertDDBypassed(t, st, dbN/MiB)

	var rep struct {
		Chunks      int               `json:"chunks"`
		Transformed int               `json:"transformed"`
		Bad         []json.RawMessage `json:"bad"`
	}
	out, code := g.sluice("scrub", "t/rules", "--json")
	if code != 0 {
		t.Fatalf("scrub: exit %d\n%s", code, out)
	}
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &rep); err != nil {
		t.Fatalf("scrub --json: %v\n%s", err, out)
	}
	const chunk = 64 << 10
	t.Logf("scrub: %d chunks, %d transformed", rep.Chunks, rep.Transformed)
	if rep.Transformed != dbN/chunk || rep.Chunks != (dbN+logN)/chunk || len(rep.Bad) != 0 {
		t.Errorf("scrub: %d chunks, %d transformed, %d bad; want %d chunks, the .db file's %d transformed",
			rep.Chunks, rep.Transformed, len(rep.Bad), (dbN+logN)/chunk, dbN/chunk)
	}

	// Both read back through the mount, without the shim.
	for name, want := range map[string][]byte{"app.log": random, "app.db": text} {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s through the mount: %d bytes (%v), want the %d dd wrote", name, len(got), err, len(want))
		}
	}
	fsckClean(t, g, "t/rules")
}

// assertDDBypassed checks that dd's n 1 MiB writes (and its truncate of
// the output) took the shim's path and none fell back.
func assertDDBypassed(t *testing.T, st shimStats, n int) {
	t.Helper()
	if got := st.sum("write", "bypassed"); got != n {
		t.Errorf("dd's writes: %d bypassed, want %d\n%v", got, n, st)
	}
	if got := st.sum("write", "fallback"); got != 0 {
		t.Errorf("dd's writes: %d fell back\n%v", got, st)
	}
}
