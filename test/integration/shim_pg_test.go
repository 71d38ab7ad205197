package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// PostgreSQL 15 from Debian (make deps installs postgresql-15, whose
// postgresql-common creates the postgres user) under the shim: a
// non-root server whose data directory is on a Sluice fs mount.

// pgBin is where Debian puts PostgreSQL 15's programs (not on PATH).
const pgBin = "/usr/lib/postgresql/15/bin"

// pgReady is the postmaster's line once it accepts connections
// (after crash recovery, when there was one).
const pgReady = "database system is ready to accept connections"

// pgWait is how long a server start, a recovery or a stop may take on a
// busy machine before the test gives up.
const pgWait = 3 * time.Minute

// pgCluster is one PostgreSQL data directory on a mount of g, run as the
// postgres user under the shim (`sluice run --mount MNT -- runuser -u
// postgres -- PROGRAM`: runuser is not setuid, so LD_PRELOAD,
// SLUICE_SHIM_SOCKET and SLUICE_SHIM_STATS reach the program).
type pgCluster struct {
	t       *testing.T
	g       *gw
	mnt     string
	data    string // PGDATA, on the mount
	sock    string // the server's unix socket directory, outside the mount
	logs    string // server logs, outside the mount
	runuser string
}

// pgServer is one run of the postmaster: its stderr (the server log and
// the shim's stats lines of every process that exits) goes to log.
type pgServer struct {
	cmd  *exec.Cmd // sluice run, exec'ing runuser, whose child is the postmaster
	log  string
	done chan struct{}
	err  error
}

// asPostgres is PROGRAM ARGS as the postgres user under the shim.
func (c *pgCluster) asPostgres(program string, args ...string) *exec.Cmd {
	return c.g.shimCmd(c.mnt, append([]string{c.runuser, "-u", "postgres", "--", filepath.Join(pgBin, program)}, args...)...)
}

// start runs the postmaster on the cluster and waits until it accepts
// connections. Its log, the shim's stats included, goes to logs/NAME.
func (c *pgCluster) start(name string) *pgServer {
	c.t.Helper()
	s := &pgServer{log: filepath.Join(c.logs, name), done: make(chan struct{})}
	// O_APPEND: the postmaster and its children share this file.
	f, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
	must(c.t, err)
	defer f.Close()
	// The settings the test relies on, explicit: every commit durable when
	// acknowledged; the server log on stderr; no TCP; checkpoints every
	// 32 MB of WAL or 30 s (the least PostgreSQL allows), so that one
	// starts during the run (runAndKill); no huge pages (PostgreSQL's
	// default, try, takes free ones: the SPDK tests reserve theirs).
	s.cmd = c.asPostgres("postgres", "-D", c.data, "-k", c.sock, "-c", "listen_addresses=",
		"-c", "logging_collector=off", "-c", "fsync=on", "-c", "synchronous_commit=on",
		"-c", "full_page_writes=on", "-c", "max_wal_size=32MB",
		"-c", "checkpoint_timeout=30s", "-c", "log_checkpoints=on",
		"-c", "huge_pages=off")
	s.cmd.Stdout, s.cmd.Stderr = f, f
	must(c.t, s.cmd.Start())
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	c.t.Cleanup(func() { c.killAll() }) // before the mount's clean-up (LIFO)
	c.waitLog(s, "the server ready", func(log string) bool { return strings.Contains(log, pgReady) })
	return s
}

// waitLog polls s's log until cond holds; it fails the test if the server
// exits first or after pgWait.
func (c *pgCluster) waitLog(s *pgServer, what string, cond func(log string) bool) {
	c.t.Helper()
	var b []byte
	ok := testwait.Poll(pgWait, func() bool {
		var err error
		b, err = os.ReadFile(s.log)
		must(c.t, err)
		if cond(string(b)) {
			return true
		}
		select {
		case <-s.done:
			c.t.Fatalf("waiting for %s: the server exited: %v\n%s\ngateway log:\n%s", what, s.err, pgTail(b), c.g.logTail())
		default:
		}
		return false
	})
	if !ok {
		c.t.Fatalf("waiting for %s: not after %v\n%s", what, pgWait, pgTail(b))
	}
}

func pgTail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// serverPids is every process whose working directory is PGDATA: the
// postmaster and each of its children (they chdir there), and nothing
// else on this machine (PGDATA is in this test's temporary directory).
// Only processes named postgres are looked at: reading another process's
// cwd link can block for as long as that process is stuck (one exec'ing
// from a FUSE mount whose gateway another test killed held this test for
// ten minutes).
func (c *pgCluster) serverPids() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err != nil || string(comm) != "postgres\n" {
			continue
		}
		if cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd")); err == nil && cwd == c.data {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killAll SIGKILLs the postmaster (its pid from postmaster.pid, so it
// forks no more) and then every process of the server, and waits until
// none is left: a crash of the whole server, each process stopped wherever
// it was (in a commit, a WAL write, a checkpoint's writes). It returns how
// many processes it killed.
func (c *pgCluster) killAll() int {
	if b, err := os.ReadFile(filepath.Join(c.data, "postmaster.pid")); err == nil {
		if pm, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil && pm > 0 && c.isServer(pm) {
			syscall.Kill(pm, syscall.SIGKILL)
		}
	}
	killed := map[int]bool{}
	gone := testwait.Poll(pgWait, func() bool {
		pids := c.serverPids()
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
			killed[pid] = true
		}
		return len(pids) == 0
	})
	if !gone {
		c.t.Errorf("server processes %v still there %v after SIGKILL", c.serverPids(), pgWait)
	}
	return len(killed)
}

// isServer says whether pid is one of the server's processes (a stale
// postmaster.pid may name a pid reused by another program).
func (c *pgCluster) isServer(pid int) bool {
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	return err == nil && cwd == c.data
}

// stop is a clean shutdown (pg_ctl stop -m fast, as postgres, without the
// shim); the server's processes exit normally and print their stats.
func (c *pgCluster) stop(s *pgServer) {
	c.t.Helper()
	out, err := exec.Command(c.runuser, "-u", "postgres", "--", filepath.Join(pgBin, "pg_ctl"), "-D", c.data,
		"stop", "-m", "fast", "-t", strconv.Itoa(int(pgWait.Seconds()))).CombinedOutput()
	if err != nil {
		c.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
	select {
	case <-s.done:
	case <-time.After(pgWait):
		c.t.Fatalf("the server's runuser has not exited %v after pg_ctl stop", pgWait)
	}
	if s.err != nil {
		c.t.Errorf("the server exited with %v after pg_ctl stop", s.err)
	}
}

// psql runs one query as the client (root, no shim: it touches no file
// on the mount) and returns its unaligned, tuples-only output.
func (c *pgCluster) psql(query string) string {
	c.t.Helper()
	out, err := exec.Command(filepath.Join(pgBin, "psql"), "-h", c.sock, "-U", "postgres", "-X", "-A", "-t", "-q",
		"-v", "ON_ERROR_STOP=1", "-c", query, "postgres").CombinedOutput()
	if err != nil {
		c.t.Fatalf("psql %q: %v\n%s", query, err, out)
	}
	return strings.TrimSpace(string(out))
}

// checkBalances checks pgbench's invariant: every committed transaction
// added its delta to one account, one teller, one branch and one history
// row, so the four sums are equal unless a transaction was torn. It
// returns the number of history rows (committed transactions).
func (c *pgCluster) checkBalances(when string) int {
	c.t.Helper()
	got := c.psql(`SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers),
		(SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
		(SELECT count(*) FROM pgbench_history)`)
	f := strings.Split(got, "|")
	if len(f) != 5 {
		c.t.Fatalf("%s: balances query answered %q", when, got)
	}
	c.t.Logf("%s: sum(abalance)=%s sum(tbalance)=%s sum(bbalance)=%s sum(delta)=%s over %s history rows", when, f[0], f[1], f[2], f[3], f[4])
	if f[0] != f[1] || f[1] != f[2] || f[2] != f[3] {
		c.t.Errorf("%s: the balances disagree (a torn or lost transaction): accounts %s, tellers %s, branches %s, history %s", when, f[0], f[1], f[2], f[3])
	}
	n, err := strconv.Atoi(f[4])
	must(c.t, err)
	return n
}

// pgbenchResult is what pgbench printed at its end.
type pgbenchResult struct {
	out               string
	processed, failed int
	tps               float64
}

var (
	pgbenchProcessed = regexp.MustCompile(`number of transactions actually processed: (\d+)`)
	pgbenchFailed    = regexp.MustCompile(`number of failed transactions: (\d+)`)
	pgbenchTPS       = regexp.MustCompile(`tps = ([0-9.]+)`)
	pgbenchProgress  = regexp.MustCompile(`^progress: ([0-9.]+) s, ([0-9.]+) tps, .* (\d+) failed`)
)

func parsePgbench(t *testing.T, out string) pgbenchResult {
	t.Helper()
	r := pgbenchResult{out: out}
	p, f, s := pgbenchProcessed.FindStringSubmatch(out), pgbenchFailed.FindStringSubmatch(out), pgbenchTPS.FindStringSubmatch(out)
	if p == nil || f == nil || s == nil {
		t.Fatalf("pgbench printed no summary:\n%s", out)
	}
	r.processed, _ = strconv.Atoi(p[1])
	r.failed, _ = strconv.Atoi(f[1])
	r.tps, _ = strconv.ParseFloat(s[1], 64)
	return r
}

// pgbench runs pgbench (the client: root, no shim) to its end.
func (c *pgCluster) pgbench(args ...string) string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(pgBin, "pgbench"), append([]string{"-h", c.sock, "-U", "postgres"}, append(args, "postgres")...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("pgbench %s: %v\n%s\ngateway log:\n%s", strings.Join(args, " "), err, out, c.g.logTail())
	}
	return string(out)
}

// lockedBuffer is a bytes.Buffer two goroutines may use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runAndKill runs `pgbench -c 8 -j 2 -T 60 -P 1` and kills the whole
// server during it: once pgbench's progress reports show at least
// minCommits transactions committed and minRun gone by, a CHECKPOINT, and then as the next
// checkpoint starts (log_checkpoints): the kill lands among commits and a
// checkpoint's writes, and recovery starts from a checkpoint written
// under the shim during the run. It returns pgbench's summary of the transactions it saw
// committed before the kill.
func (c *pgCluster) runAndKill(s *pgServer, minCommits float64, minRun time.Duration) pgbenchResult {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(pgBin, "pgbench"), "-h", c.sock, "-U", "postgres", "-c", "8", "-j", "2", "-T", "60", "-P", "1", "postgres")
	var out lockedBuffer
	cmd.Stdout = &out
	progress, err := cmd.StderrPipe()
	must(c.t, err)
	must(c.t, cmd.Start())
	began := time.Now()
	c.t.Cleanup(func() { cmd.Process.Kill() }) // no-op once it has exited
	var mu sync.Mutex
	committed, failed, elapsed := 0.0, 0, 0.0
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		lines := bufio.NewScanner(io.TeeReader(progress, &out))
		for lines.Scan() {
			if m := pgbenchProgress.FindStringSubmatch(lines.Text()); m != nil {
				tps, _ := strconv.ParseFloat(m[2], 64)
				n, _ := strconv.Atoi(m[3])
				at, _ := strconv.ParseFloat(m[1], 64)
				mu.Lock()
				elapsed = at
				committed += tps // -P 1: one report a second
				failed += n
				mu.Unlock()
			}
		}
	}()
	// pgbenchRunning fails the test if pgbench has ended (its 60 s, or
	// errors) before the kill.
	pgbenchRunning := func() {
		select {
		case <-scanned:
			cmd.Wait()
			c.t.Fatalf("pgbench ended before the kill:\n%s", out.String())
		default:
		}
	}
	c.waitLog(s, fmt.Sprintf("%.0f commits and %v in pgbench's progress reports", minCommits, minRun), func(string) bool {
		pgbenchRunning()
		mu.Lock()
		defer mu.Unlock()
		return committed >= minCommits && elapsed >= minRun.Seconds()
	})
	// A checkpoint now (its writes and fsyncs through the shim, while
	// pgbench commits): recovery will start from it. The next one starts
	// after 32 MB of WAL or checkpoint_timeout's 30 s, inside the run.
	c.psql("CHECKPOINT")
	b, err := os.ReadFile(s.log)
	must(c.t, err)
	started := strings.Count(string(b), "checkpoint starting:")
	c.waitLog(s, "the next checkpoint starting", func(log string) bool {
		pgbenchRunning()
		return strings.Count(log, "checkpoint starting:") > started
	})
	mu.Lock()
	c.t.Logf("pgbench's progress reports: about %.0f transactions committed (%d failed) before the kill", committed, failed)
	mu.Unlock()
	killed := time.Now()
	n := c.killAll()
	c.t.Logf("SIGKILLed the postmaster and its %d other processes %v into pgbench's 60 s", n-1, killed.Sub(began).Round(time.Millisecond))
	<-scanned
	err = cmd.Wait()
	c.t.Logf("pgbench ended %v after the kill: %v", time.Since(killed).Round(time.Millisecond), err)
	<-s.done
	return parsePgbench(c.t, out.String())
}

// newPGCluster makes the directories the postgres user needs and checks
// that it can reach the shim library, the shim socket and the mount.
func newPGCluster(t *testing.T, g *gw, mnt, shimDir string) *pgCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("TestShimPostgres runs the server as the postgres user (runuser): it needs root")
		}
		t.Skip("TestShimPostgres runs the server as the postgres user (runuser): it needs root")
	}
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no postgres user (%v): make deps installs postgresql-15, whose postgresql-common creates it", err)
		}
		t.Skipf("no postgres user (%v): make deps installs postgresql-15, whose postgresql-common creates it", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)
	for _, p := range []string{"initdb", "postgres", "pg_ctl", "pgbench", "psql", "pg_amcheck"} {
		testtool.Path(t, filepath.Join(pgBin, p))
	}
	c := &pgCluster{t: t, g: g, mnt: mnt, runuser: testtool.Path(t, "runuser")}
	openToAll(t, mnt)
	openToAll(t, shimDir)
	// PGDATA's parent on the mount belongs to postgres (chown through the
	// mount; initdb makes PGDATA itself, mode 0700).
	must(t, os.Mkdir(filepath.Join(mnt, "pg"), 0o755))
	must(t, os.Chown(filepath.Join(mnt, "pg"), uid, gid))
	c.data = filepath.Join(mnt, "pg", "data")
	c.sock = t.TempDir()
	openToAll(t, c.sock)
	must(t, os.Chown(c.sock, uid, gid))
	c.logs = t.TempDir()
	// ld.so ignores an LD_PRELOAD library it cannot open (a warning, then
	// the program runs without the shim): say so plainly instead.
	if out, err := exec.Command(c.runuser, "-u", "postgres", "--", "test", "-r", shimLib(t)).CombinedOutput(); err != nil {
		t.Fatalf("the postgres user cannot read %s (%v %s): every directory above it must be traversable", shimLib(t), err, out)
	}
	return c
}

// TestShimPostgres: PostgreSQL 15 as the postgres user under the shim,
// PGDATA on a Sluice fs mount. initdb (with data checksums), pgbench -i
// -s 10, then pgbench -c 8 -j 2 -T 60, during which the whole server is
// SIGKILLed (after commits and at a checkpoint's start). The server is
// started again under the shim and recovers; every transaction pgbench saw
// committed is there, no more than one per client besides, and the
// balances agree (none torn); pg_amcheck finds nothing. A 10 s pgbench run
// then completes without errors, a clean stop lets every server process
// print its shim stats, and those show PostgreSQL's reads, writes and
// syncs of relation and WAL files bypassed, no pread, pwrite or fdatasync
// fallen back.
func TestShimPostgres(t *testing.T) {
	began := time.Now()
	shimDir := t.TempDir() // 0755 below: the postgres user connects to the socket
	shimSock := filepath.Join(shimDir, "shim.sock")
	g := startGateway(t, t.TempDir(), "--shim-socket", shimSock)
	mnt := g.mountVolume("t/pg", "fs", "4G")
	c := newPGCluster(t, g, mnt, shimDir)

	if out, err := c.asPostgres("initdb", "-D", c.data, "-A", "trust", "-U", "postgres", "-k",
		"--locale=C", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb under the shim: %v\n%s\ngateway log:\n%s", err, out, g.logTail())
	} else if st := parseShimStats(string(out)); st.sum("pwrite", "bypassed") == 0 || st.sum("fsync", "bypassed") == 0 {
		t.Errorf("initdb's writes and syncs were not bypassed\n%s", out)
	}
	t.Logf("initdb done at %v", time.Since(began).Round(time.Millisecond))

	s := c.start("server-1.log")
	c.pgbench("-i", "-q", "-s", "10")
	t.Logf("pgbench -i -s 10 done at %v", time.Since(began).Round(time.Millisecond))

	// The killed server prints no stats: the gateway's counters show its
	// writes came through the shim door. 15 s: the CHECKPOINT and the
	// next one's start (30 s at most) fit in pgbench's 60 s even on a slow
	// machine.
	shimBefore := g.shimWritten("t/pg")
	killed := c.runAndKill(s, 2000, 15*time.Second)
	shimWrote := g.shimWritten("t/pg") - shimBefore
	t.Logf("the killed run: %d transactions acknowledged, %d failed, %.1f tps; the shim door wrote %d MiB",
		killed.processed, killed.failed, killed.tps, shimWrote>>20)
	if shimWrote == 0 {
		t.Errorf("the shim door wrote nothing during the killed run")
	}
	if killed.processed == 0 {
		t.Fatalf("pgbench saw no transaction committed before the kill:\n%s", killed.out)
	}

	recoverStart := time.Now()
	s = c.start("server-2.log")
	t.Logf("recovery under the shim: the server was ready after %v", time.Since(recoverStart).Round(time.Millisecond))
	b, err := os.ReadFile(s.log)
	must(t, err)
	if !strings.Contains(string(b), "automatic recovery in progress") {
		t.Errorf("the restarted server did not recover from a crash:\n%s", b)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "redo ") {
			t.Logf("recovery: %s", line[strings.Index(line, "redo "):])
		}
	}
	rows := c.checkBalances("after recovery")
	// Every acknowledged commit survived; at most one transaction per
	// client committed without pgbench seeing the answer.
	if rows < killed.processed || rows > killed.processed+8 {
		t.Errorf("%d history rows after recovery; pgbench saw %d commits acknowledged (want between that and 8 more)", rows, killed.processed)
	}
	if out, err := exec.Command(filepath.Join(pgBin, "pg_amcheck"), "-h", c.sock, "-U", "postgres", "--install-missing",
		"--heapallindexed", "postgres").CombinedOutput(); err != nil {
		t.Errorf("pg_amcheck after recovery: %v\n%s", err, out)
	}

	// -n: no vacuum and, above all, no truncation of pgbench_history, so
	// the balances still account for every transaction.
	final := parsePgbench(t, c.pgbench("-n", "-c", "8", "-j", "2", "-T", "10"))
	t.Logf("the run after recovery: %d transactions, %d failed, %.1f tps", final.processed, final.failed, final.tps)
	if final.failed != 0 || final.processed == 0 {
		t.Errorf("the run after recovery: %d transactions, %d failed\n%s", final.processed, final.failed, final.out)
	}
	if got := c.checkBalances("after the last run"); got != rows+final.processed {
		t.Errorf("%d history rows after the last run, want %d + %d", got, rows, final.processed)
	}
	c.stop(s)
	checkPGStats(t, s.log)
	fsckClean(t, g, "t/pg")
	t.Logf("TestShimPostgres took %v", time.Since(began).Round(time.Millisecond))
}

// shimWritten is the bytes the gateway has written to a volume through
// the shim door since it started.
func (g *gw) shimWritten(ref string) int64 {
	g.t.Helper()
	var n int64
	for _, v := range g.stats().Volumes {
		for _, o := range v.Ops {
			if v.Ref == ref && o.Door == "shim" && o.Op == "write" {
				n += o.Bytes
			}
		}
	}
	return n
}

// checkPGStats asserts from the stats lines the server's processes printed
// at their clean exit that PostgreSQL's file IO took the shim's path:
// pread and pwrite of relation and WAL pages, fdatasync of WAL segments,
// fsync of relation files at checkpoints; none of those fell back.
func checkPGStats(t *testing.T, log string) {
	t.Helper()
	b, err := os.ReadFile(log)
	must(t, err)
	st := parseShimStats(string(b))
	var report []string
	for _, call := range []string{"pread", "pwrite", "fdatasync", "fsync", "sync_file_range", "read", "write", "lseek"} {
		report = append(report, fmt.Sprintf("%s %d/%d", call, st.sum(call, "bypassed"), st.sum(call, "fallback")))
	}
	pids := map[string]bool{}
	reasons := map[string]int{} // fallbacks by reason, every call
	for k, f := range st {
		pids[strings.Fields(k)[0]] = true
		for r, n := range f {
			if r != "bypassed" && r != "fallback" {
				reasons[r] += n
			}
		}
	}
	t.Logf("stats of %d processes of the server, bypassed/fallback: %s; fallbacks by reason: %v", len(pids), strings.Join(report, ", "), reasons)
	for _, call := range []string{"pread", "pwrite", "fdatasync", "fsync"} {
		if st.sum(call, "bypassed") == 0 {
			t.Errorf("the server's %s calls were never bypassed\n%s", call, pgTail(b))
		}
	}
	// PostgreSQL reads a few files read-only (WAL segments in recovery
	// and by the checkpointer, pg_control): those reads go to the page
	// cache by design (regCached, docs/SHIM.md). Every other fallback of
	// a data call is a failure.
	for _, call := range []string{"pread", "pwrite", "fdatasync"} {
		if n := st.sum(call, "fallback") - st.sum(call, "page_cache"); n != 0 {
			t.Errorf("%d of the server's %s calls fell back to the kernel\n%s", n, call, pgTail(b))
		}
	}
	for k, f := range st {
		for _, bad := range []string{"gateway_gone", "error", "stale_handle", "too_many"} {
			if f[bad] != 0 {
				t.Errorf("%s: %d fallbacks for %s", k, f[bad], bad)
			}
		}
	}
}
