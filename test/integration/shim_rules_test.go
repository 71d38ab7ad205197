package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
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

// sqliteWriter is one writer of TestShimSQLiteKills, run by Debian's
// python3 (its sqlite3 module uses the system libsqlite3):
//
//	writer DB ID SIDE STOP: inserts (ID, seq) rows with a 64 KiB blob (so
//	  a commit writes some 17 pages and kills land inside commits and
//	  checkpoints too), one transaction each,
//	  continuing from ID's largest seq in DB, and appends each seq to SIDE
//	  after its COMMIT returned; exits when the file STOP exists. It rests
//	  2 ms between transactions: back to back, the other writers starve
//	  one whose busy handler sleeps (a restarted writer waited seconds).
//	check DB: prints integrity_check, then every row as "ID SEQ".
const sqliteWriter = `
import os, sqlite3, sys, time
con = sqlite3.connect(sys.argv[2], timeout=60, isolation_level=None)
if sys.argv[1] == "check":
    print(con.execute("PRAGMA integrity_check").fetchone()[0])
    for w, seq in con.execute("SELECT w, seq FROM t ORDER BY w, seq"):
        print(w, seq)
    sys.exit(0)
wid, side, stop = int(sys.argv[3]), sys.argv[4], sys.argv[5]
seq = con.execute("SELECT coalesce(max(seq), 0) FROM t WHERE w = ?", (wid,)).fetchone()[0]
out = open(side, "a")
while not os.path.exists(stop):
    seq += 1
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO t VALUES (?, ?, randomblob(65536))", (wid, seq))
    con.execute("COMMIT")
    out.write("%d\n" % seq)
    out.flush()
    time.sleep(0.002)
con.close()
`

// TestShimSQLiteKills: four python3 processes under the shim write one WAL
// database on a Sluice mount, each committing (writer, seq) rows and
// recording each seq after its COMMIT returned in a side file outside the
// mount. A random writer is SIGKILLed 20 times, each time after it
// committed a few more rows, and restarted (it continues from its largest
// seq in the database). Then integrity_check is ok and every recorded seq
// is in the database; the last generation of writers, which exit cleanly,
// and the checking process show their reads and writes bypassed.
func TestShimSQLiteKills(t *testing.T) {
	python := testtool.Path(t, sysPython)
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/kills", "fs", "1G")
	tmp := t.TempDir()
	script := filepath.Join(tmp, "writer.py")
	must(t, os.WriteFile(script, []byte(sqliteWriter), 0o600))
	db := filepath.Join(mnt, "kills.db")
	stop := filepath.Join(tmp, "stop")
	sqlite := testtool.Path(t, "sqlite3")
	if out, err := g.shimCmd(mnt, sqlite, db, "PRAGMA journal_mode=wal; CREATE TABLE t(w INTEGER, seq INTEGER, pad BLOB, PRIMARY KEY (w, seq));").CombinedOutput(); err != nil || !strings.Contains(string(out), "\nwal\n") {
		t.Fatalf("creating the database: %v\n%s", err, out)
	}

	const writers, kills, more = 4, 20, 5
	type writer struct {
		cmd  *exec.Cmd
		out  *bytes.Buffer
		side string
		done chan struct{} // closed when cmd has exited; err is its Wait's
		err  error
	}
	var ws [writers]writer
	start := func(i int) {
		cmd := g.shimCmd(mnt, python, script, "writer", db, strconv.Itoa(i), ws[i].side, stop)
		ws[i].out = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = ws[i].out, ws[i].out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w := &ws[i]
		w.cmd, w.done = cmd, make(chan struct{})
		go func() { w.err = cmd.Wait(); close(w.done) }()
	}
	t.Cleanup(func() {
		for i := range ws {
			if ws[i].cmd != nil {
				ws[i].cmd.Process.Kill()
				<-ws[i].done
			}
		}
	})
	for i := range ws {
		ws[i].side = filepath.Join(tmp, fmt.Sprintf("side-%d", i))
		start(i)
	}
	// waitMore waits until writer i has recorded n more commits than it had
	// when waitMore was called.
	waitMore := func(i, n int) {
		t.Helper()
		base := len(committed(t, ws[i].side))
		testwait.For(t, fmt.Sprintf("writer %d committing %d more rows", i, n), func() bool {
			select {
			case <-ws[i].done:
				t.Fatalf("writer %d exited: %v\n%s", i, ws[i].err, ws[i].out)
			default:
			}
			return len(committed(t, ws[i].side)) >= base+n
		})
	}
	seed := time.Now().UnixNano()
	t.Logf("kill order seed %d", seed)
	r := mrand.New(mrand.NewPCG(uint64(seed), 0))
	began := time.Now()
	for k := 0; k < kills; k++ {
		i := r.IntN(writers)
		waitMore(i, more)
		must(t, ws[i].cmd.Process.Signal(syscall.SIGKILL))
		<-ws[i].done
		start(i)
	}
	for i := range ws {
		waitMore(i, more)
	}
	must(t, os.WriteFile(stop, nil, 0o600))
	for i := range ws {
		<-ws[i].done
		if ws[i].err != nil {
			t.Fatalf("writer %d: %v\n%s", i, ws[i].err, ws[i].out)
		}
		st := parseShimStats(ws[i].out.String())
		if st.sum("pwrite64", "bypassed") == 0 || st.sum("pread64", "bypassed") == 0 || st.sum("fdatasync", "bypassed") == 0 {
			t.Errorf("writer %d's last process: its writes, reads and syncs were not bypassed\n%s", i, ws[i].out)
		}
		if n := st.sum("pwrite64", "gateway_gone") + st.sum("pwrite64", "error") + st.sum("pwrite64", "stale_handle"); n != 0 {
			t.Errorf("writer %d: %d pwrite64 fallbacks for failures\n%s", i, n, ws[i].out)
		}
	}
	t.Logf("%d kills in %v", kills, time.Since(began).Round(time.Millisecond))

	check := g.shimCmd(mnt, python, script, "check", db)
	var out, errOut bytes.Buffer
	check.Stdout, check.Stderr = &out, &errOut
	if err := check.Run(); err != nil || !strings.HasPrefix(out.String(), "ok\n") {
		t.Fatalf("integrity_check under the shim: %v\n%.200s\n%s", err, out.String(), errOut.String())
	}
	inDB := map[string]bool{}
	for _, line := range strings.Split(out.String(), "\n")[1:] {
		if line != "" {
			inDB[line] = true
		}
	}
	total := 0
	for i := range ws {
		seqs := committed(t, ws[i].side)
		total += len(seqs)
		for _, seq := range seqs {
			if !inDB[fmt.Sprintf("%d %d", i, seq)] {
				t.Errorf("writer %d's committed seq %d is not in the database", i, seq)
			}
		}
	}
	t.Logf("%d committed rows recorded, %d rows in the database (the rest committed by a writer killed before it recorded them)", total, len(inDB))
	if st := parseShimStats(errOut.String()); st.sum("pread64", "bypassed") == 0 {
		t.Errorf("the check's reads were not bypassed\n%s", errOut.String())
	}
	fsckClean(t, g, "t/kills")
}

// committed is the seqs a writer recorded in its side file (whole lines).
func committed(t *testing.T, side string) []int {
	t.Helper()
	b, err := os.ReadFile(side)
	if os.IsNotExist(err) {
		return nil
	}
	must(t, err)
	var seqs []int
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if !strings.HasSuffix(line, "\n") {
			break // a line cut by a kill
		}
		n, err := strconv.Atoi(strings.TrimSuffix(line, "\n"))
		if err != nil {
			t.Fatalf("%s: %q", side, line)
		}
		seqs = append(seqs, n)
	}
	return seqs
}
