package integration

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// The LD_PRELOAD shim (docs/SHIM.md) under the built gateway: programs
// run with `sluice run`, and every test asserts from SLUICE_SHIM_STATS that
// the calls took the shim's path.

// shimLib is the library `make build` puts beside the binary.
func shimLib(t *testing.T) string {
	t.Helper()
	lib := filepath.Join(filepath.Dir(sluiceBin), "libsluice-shim.so")
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("%s: %v (make build builds it beside the sluice binary)", lib, err)
	}
	return lib
}

// buildC compiles test/shim/NAME.c into a temporary directory.
func buildC(t *testing.T, name string) string {
	t.Helper()
	gcc := testtool.Path(t, "gcc")
	out := filepath.Join(t.TempDir(), name)
	if b, err := exec.Command(gcc, "-O2", "-Wall", "-Werror", "-o", out, filepath.Join("..", "shim", name+".c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s.c: %v\n%s", name, err, b)
	}
	return out
}

// shimCmd is `sluice run --mount mnt -- args...` with the stats on.
func (g *gw) shimCmd(mnt string, args ...string) *exec.Cmd {
	cmd := exec.Command(sluiceBin, append([]string{"--api-socket", g.api, "run", "--mount", mnt, "--shim-lib", shimLib(g.t), "--"}, args...)...)
	cmd.Env = append(os.Environ(), "SLUICE_SHIM_STATS=1")
	return cmd
}

// shimStats is one SLUICE_SHIM_STATS line: per pid and call, bypassed,
// fallback and the fallbacks by reason.
type shimStats map[string]map[string]int // "pid call" -> field -> count

var statsLine = regexp.MustCompile(`^sluice-shim: pid=(\d+) call=(\S+) (.*)$`)

func parseShimStats(out string) shimStats {
	st := shimStats{}
	for _, line := range strings.Split(out, "\n") {
		m := statsLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		fields := map[string]int{}
		for _, kv := range strings.Fields(m[3]) {
			k, v, _ := strings.Cut(kv, "=")
			fields[k], _ = strconv.Atoi(v)
		}
		st[m[1]+" "+m[2]] = fields
	}
	return st
}

// sum adds field over every pid's line for call.
func (s shimStats) sum(call, field string) int {
	n := 0
	for k, f := range s {
		if strings.HasSuffix(k, " "+call) {
			n += f[field]
		}
	}
	return n
}

// pids counts the processes whose line for call has field > 0.
func (s shimStats) pids(call, field string) int {
	n := 0
	for k, f := range s {
		if strings.HasSuffix(k, " "+call) && f[field] > 0 {
			n++
		}
	}
	return n
}

// TestShimCalls runs the call matrix (test/shim/calls.c): every
// intercepted call in each spelling, dup'd fds sharing an offset, a
// read-only fd's EBADF, a fork child on its own channel; data written
// through the shim is read through the mount by this process (no shim),
// and data this process wrote through the mount is read through the shim.
func TestShimCalls(t *testing.T) {
	calls := buildC(t, "calls")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/shim", "fs", "1G")
	if err := os.WriteFile(filepath.Join(mnt, "from-mount"), []byte("written through the mount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := g.shimCmd(mnt, calls, mnt).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok\n") {
		t.Fatalf("calls: %v\n%s", err, out)
	}
	t.Logf("the call matrix ran in %v", time.Since(start))
	st := parseShimStats(string(out))
	for _, call := range []string{"read", "__read_chk", "write", "pread", "pread64", "__pread_chk", "__pread64_chk",
		"pwrite", "pwrite64", "lseek", "lseek64", "fsync", "fdatasync", "ftruncate", "ftruncate64", "fallocate",
		"fallocate64", "posix_fallocate", "posix_fallocate64", "fstat", "fstat64", "__fxstat", "__fxstat64",
		"readv", "writev", "preadv", "preadv64", "pwritev", "pwritev64", "preadv2", "preadv64v2", "pwritev2", "pwritev64v2",
		"sync_file_range", "statx", "fstatat", "fstatat64", "__fxstatat", "__fxstatat64"} {
		if st.sum(call, "bypassed") == 0 {
			t.Errorf("%s: never bypassed\n%s", call, out)
		}
		for _, bad := range []string{"gateway_gone", "error", "stale_handle", "not_sluice", "too_many"} {
			if n := st.sum(call, bad); n != 0 {
				t.Errorf("%s: %d fallbacks for %s", call, n, bad)
			}
		}
	}
	// The fallbacks the matrix asks for: pwrite after F_SETFL O_APPEND,
	// pwritev2 with RWF_APPEND, preadv2 with RWF_NOWAIT and statx for the
	// mount id.
	for _, fb := range []struct {
		call, reason string
	}{{"pwrite", "o_append"}, {"pwritev2", "o_append"}, {"preadv2", "flags"}, {"statx", "flags"}} {
		if n := st.sum(fb.call, fb.reason); n != 1 {
			t.Errorf("%s fell back %d times for %s, want 1", fb.call, n, fb.reason)
		}
	}
	if n := st.pids("pwrite", "bypassed"); n != 2 {
		t.Errorf("%d processes bypassed pwrite, want the parent and its fork child\n%s", n, out)
	}
	// Read back without the shim.
	for name, want := range map[string]string{"fork": "Parentchild!", "fork-child": "mine", "dup": "0123456789abcdefZ"} {
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !strings.HasPrefix(string(b), want) {
			t.Errorf("%s through the mount: %q (%v), want %q", name, b, err, want)
		}
	}
	fi, err := os.Stat(filepath.Join(mnt, "data"))
	if err != nil || fi.Size() != 40960 {
		t.Errorf("data through the mount: %v, %v; want 40960 bytes", fi, err)
	}
	stats := g.mustSluice("stats", "--json")
	if !strings.Contains(stats, `"door": "shim"`) {
		t.Errorf("sluice stats shows no shim door:\n%s", stats)
	}
	fsckClean(t, g, "t/shim")
}

// TestShimSQLite: Debian's sqlite3 under the shim on a Sluice mount, in
// rollback-journal and WAL mode: a table, 1000 rows in one transaction,
// integrity_check ok, with the writes bypassed; then the database read
// back by sqlite3 without the shim.
func TestShimSQLite(t *testing.T) {
	sqlite := testtool.Path(t, "sqlite3")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/sql", "fs", "1G")
	for _, mode := range []string{"delete", "wal"} {
		t.Run(mode, func(t *testing.T) {
			db := filepath.Join(mnt, mode+".db")
			script := "PRAGMA journal_mode=" + mode + "; CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT); BEGIN; " +
				"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<1000) INSERT INTO t SELECT x, hex(randomblob(64)) FROM c; " +
				"COMMIT; SELECT count(*), sum(a) FROM t; PRAGMA integrity_check;"
			out, err := g.shimCmd(mnt, sqlite, db, script).CombinedOutput()
			if err != nil || !strings.Contains(string(out), mode+"\n1000|500500\nok\n") {
				t.Fatalf("sqlite3 under the shim: %v\n%s", err, out)
			}
			st := parseShimStats(string(out))
			if st.sum("pwrite64", "bypassed") == 0 || st.sum("pread64", "bypassed") == 0 || st.sum("fdatasync", "bypassed") == 0 {
				t.Errorf("sqlite3's writes, reads and syncs were not bypassed\n%s", out)
			}
			if n := st.sum("pwrite64", "gateway_gone") + st.sum("pwrite64", "error") + st.sum("pwrite64", "stale_handle"); n != 0 {
				t.Errorf("%d pwrite64 fallbacks for failures\n%s", n, out)
			}
			plain, err := exec.Command(sqlite, db, "SELECT count(*) FROM t; PRAGMA integrity_check;").CombinedOutput()
			if err != nil || string(plain) != "1000\nok\n" {
				t.Fatalf("sqlite3 without the shim: %v\n%s", err, plain)
			}
		})
	}
	fsckClean(t, g, "t/sql")
}

// TestShimGatewayKilled: the gateway is SIGKILLed while a shim client
// does IO; the client's calls return (an error or the kernel's answer),
// none hangs.
func TestShimGatewayKilled(t *testing.T) {
	calls := buildC(t, "calls")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/kill", "fs", "1G")
	cmd := g.shimCmd(mnt, calls, mnt, "loop")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || lines.Text() != "running" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the client did not start its IO: %q\n%s", lines.Text(), stderr.String())
	}
	g.kill()
	killed := time.Now()
	done := make(chan error, 1)
	go func() {
		var rest []string
		for lines.Scan() {
			rest = append(rest, lines.Text())
		}
		err := cmd.Wait()
		if err == nil && (len(rest) == 0 || !strings.HasPrefix(rest[0], "failed after")) {
			err = &exec.ExitError{}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the client did not see its calls fail: %v\n%s", err, stderr.String())
		}
	case <-time.After(40 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the client's calls hung after the gateway was killed\n%s", stderr.String())
	}
	t.Logf("the client's call returned %v after the kill", time.Since(killed))
	st := parseShimStats(stderr.String())
	if st.sum("pwrite", "bypassed") < 100 {
		t.Errorf("the loop's writes were not bypassed\n%s", stderr.String())
	}
	g.restart()
	g.mustSluice("umount", mnt) // the dead mount of the killed gateway
}
