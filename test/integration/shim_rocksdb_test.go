package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// RocksDB 7.8 (Debian's rocksdb-tools: db_bench, ldb, sst_dump) under
// the shim on a Sluice fs mount. What RocksDB's files see through the
// shim, from strace and SLUICE_SHIM_STATS: the WAL, SST and MANIFEST
// appends are write(2) (bypassed), every sync=1 write one fdatasync
// (bypassed), the files preallocated with fallocate(KEEP_SIZE) and cut
// back with ftruncate at close, SST range syncs with sync_file_range,
// SST reads are pread on fds opened with O_DIRECT when use_direct_reads
// is set (RocksDB fails the open rather than falling back, so a run that
// reads proves the mount took O_DIRECT), and with
// use_direct_io_for_flush_and_compaction the SSTs are pwrites of
// aligned buffers on O_DIRECT fds. What stays the kernel's:
// directory fsyncs (not_regular), the WAL reopened with O_APPEND at
// recovery to cut its preallocated tail (o_append), and the stdio
// reads of CURRENT, MANIFEST and the WAL at open (glibc's internal
// calls, docs/SHIM.md) — so a crash's WAL replay reads through FUSE
// what the shim wrote.

// rocksCommon are the db_bench flags every run shares: no compression
// (the tool's build decides which codecs exist), 400-byte values, and a
// 1 MiB memtable so that a few thousand writes flush SSTs and L0
// compactions run during the test, not only WAL appends.
var rocksCommon = []string{"--compression_type=none", "--key_size=16", "--value_size=400", "--write_buffer_size=1048576"}

// rocksKernelReasons are the fallbacks that are the kernel's by design
// for RocksDB: files off the mount (/proc, /sys), directory fsyncs, the
// WAL reopened with O_APPEND, and reads of files opened read-only
// without O_DIRECT (the page cache serves them: docs/SHIM.md). Any other
// reason (error, gateway_gone, stale_handle, too_many, flags, mmap) is a
// failure.
var rocksKernelReasons = map[string]bool{"bypassed": true, "fallback": true, "not_sluice": true, "not_regular": true, "o_append": true, "page_cache": true}

// gatewayReads sends every read of cmd over the channel, read-only
// buffered fds' too (SLUICE_SHIM_CACHED_READS=0): the checks after a
// crash read what the gateway's shim path returns.
func gatewayReads(cmd *exec.Cmd) *exec.Cmd {
	cmd.Env = append(cmd.Env, "SLUICE_SHIM_CACHED_READS=0")
	return cmd
}

// benchLine is db_bench's result line, e.g. "readrandom : 5.180
// micros/op 192999 ops/sec 0.104 seconds 20000 operations; 48.7 MB/s
// (12715 of 20000 found)".
var benchLine = regexp.MustCompile(`(?m)^(\w+)\s+:\s+[0-9.]+ micros/op (\d+) ops/sec ([0-9.]+) seconds (\d+) operations;[^(\n]*(?:\((\d+) of (\d+) found\))?`)

// benchRun is one db_bench run's result.
type benchRun struct {
	opsPerSec, ops int
	secs           float64
	found, reads   int // readrandom's "(found of reads found)"
	st             shimStats
	stderr         string
}

// dbBench runs one db_bench benchmark under the shim on db and logs its
// ops/s. Progress lines end in \r on stderr; they are made lines so the
// shim's stats lines at exit start one.
func dbBench(t *testing.T, g *gw, mnt, db, bench string, args ...string) benchRun {
	t.Helper()
	argv := append([]string{testtool.Path(t, "db_bench"), "--db=" + db, "--benchmarks=" + bench}, rocksCommon...)
	cmd := g.shimCmd(mnt, append(argv, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("db_bench %s %v: %v\n%s\n%s\ngateway log:\n%s", bench, args, err, stdout.String(), tail(strings.ReplaceAll(stderr.String(), "\r", "\n"), 40), g.logTail())
	}
	m := benchLine.FindStringSubmatch(stdout.String())
	if m == nil || m[1] != bench {
		t.Fatalf("db_bench %s printed no result line:\n%s", bench, stdout.String())
	}
	r := benchRun{found: -1, reads: -1, stderr: strings.ReplaceAll(stderr.String(), "\r", "\n")}
	r.opsPerSec, _ = strconv.Atoi(m[2])
	r.secs, _ = strconv.ParseFloat(m[3], 64)
	r.ops, _ = strconv.Atoi(m[4])
	if m[5] != "" {
		r.found, _ = strconv.Atoi(m[5])
		r.reads, _ = strconv.Atoi(m[6])
	}
	r.st = parseShimStats(r.stderr)
	t.Logf("db_bench %s %s: %d ops in %.2f s, %d ops/s", bench, strings.Join(args, " "), r.ops, r.secs, r.opsPerSec)
	return r
}

// ldb runs `ldb --db=db args...` under the shim; it returns stdout and
// the shim's stats (ldb exits normally, so they are printed).
func ldb(t *testing.T, g *gw, mnt, db string, args ...string) (string, shimStats) {
	t.Helper()
	cmd := gatewayReads(g.shimCmd(mnt, append([]string{testtool.Path(t, "ldb"), "--db=" + db}, args...)...))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ldb %v: %v\n%s\n%s\ngateway log:\n%s", args, err, tail(stdout.String(), 40), stderr.String(), g.logTail())
	}
	return stdout.String(), parseShimStats(stderr.String())
}

// assertRocksShim checks one RocksDB process's stats: each call in want
// was bypassed at least that often, and no call fell back for a reason
// other than the kernel's by design (rocksKernelReasons).
func assertRocksShim(t *testing.T, what string, st shimStats, want map[string]int) {
	t.Helper()
	if len(st) == 0 {
		t.Errorf("%s: no SLUICE_SHIM_STATS lines: the shim was not loaded", what)
		return
	}
	calls := make([]string, 0, len(want))
	for call := range want {
		calls = append(calls, call)
	}
	sort.Strings(calls)
	var got []string
	for _, call := range calls {
		n := st.sum(call, "bypassed")
		got = append(got, fmt.Sprintf("%s=%d", call, n))
		if n < want[call] {
			t.Errorf("%s: %s bypassed %d times, want at least %d\n%v", what, call, n, want[call], st)
		}
	}
	for key, fields := range st {
		for reason, n := range fields {
			if n > 0 && !rocksKernelReasons[reason] {
				t.Errorf("%s: %s fell back %d times for %s", what, key, n, reason)
			}
		}
	}
	t.Logf("%s: bypassed %s", what, strings.Join(got, " "))
}

// TestShimRocksDB: db_bench, ldb and sst_dump under the shim on a Sluice
// mount. fillrandom with sync=1, readrandom with O_DIRECT reads on the
// reopened database (its hit rate matching the distinct keys ldb
// counts), overwrite with sync=1 and O_DIRECT flushes, checkconsistency
// and every SST's checksums; then a crash (rocksdbCrash).
func TestShimRocksDB(t *testing.T) {
	testtool.Need(t, "db_bench", "ldb", "sst_dump")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/rocks", "fs", "2G")
	db := filepath.Join(mnt, "bench")
	const num = 10000

	fill := dbBench(t, g, mnt, db, "fillrandom", "--sync=1", fmt.Sprintf("--num=%d", num))
	// Each sync=1 put is a WAL append and its fdatasync; SST flushes add
	// fallocate, ftruncate and sync_file_range.
	assertRocksShim(t, "fillrandom", fill.st, map[string]int{"write": num, "fdatasync": num,
		"fallocate": 1, "ftruncate": 1, "sync_file_range": 1})
	// RocksDB's own log of that run: the SST writes were flushes and a
	// compaction, not only WAL appends.
	info, err := os.ReadFile(filepath.Join(db, "LOG"))
	must(t, err)
	flushes := strings.Count(string(info), `"event": "flush_finished"`)
	compactions := strings.Count(string(info), `"event": "compaction_finished"`)
	t.Logf("fillrandom: %d flushes, %d compactions", flushes, compactions)
	if flushes == 0 || compactions == 0 {
		t.Errorf("fillrandom: %d flushes and %d compactions in RocksDB's LOG, want some of each", flushes, compactions)
	}

	out, st := ldb(t, g, mnt, db, "dump", "--count_only")
	distinct := keysInRange(t, out)
	assertRocksShim(t, "ldb dump", st, map[string]int{"pread": 1})

	// 1 MiB of block cache: most reads go to the SSTs.
	read := dbBench(t, g, mnt, db, "readrandom", "--use_existing_db=1", "--use_direct_reads=1",
		"--cache_size=1048576", fmt.Sprintf("--num=%d", num), fmt.Sprintf("--reads=%d", num))
	assertRocksShim(t, "readrandom", read.st, map[string]int{"pread": num / 10})
	if n := read.st.sum("pread", "fallback"); n != 0 {
		t.Errorf("readrandom: %d preads through the kernel", n)
	}
	// fillrandom and readrandom both draw keys uniformly from [0, num):
	// the share of reads that find their key is the share of keys the
	// database holds (binomial, sd about 0.5%; 5% is ten of them).
	hit, held := float64(read.found)/float64(read.reads), float64(distinct)/num
	t.Logf("readrandom found %d of %d (%.1f%%); the database holds %d of %d keys (%.1f%%)",
		read.found, read.reads, 100*hit, distinct, num, 100*held)
	if read.reads != num || math.Abs(hit-held) > 0.05 {
		t.Errorf("readrandom found %d of %d keys; the database holds %d of the %d it draws from", read.found, read.reads, distinct, num)
	}

	// Buffered reads: RocksDB opens its SSTs read-only, so the kernel's
	// page cache serves them (the FUSE door's READ fills it) and finds
	// the same keys.
	cached := dbBench(t, g, mnt, db, "readrandom", "--use_existing_db=1",
		"--cache_size=1048576", fmt.Sprintf("--num=%d", num), fmt.Sprintf("--reads=%d", num))
	assertRocksShim(t, "readrandom (buffered)", cached.st, nil)
	if n := cached.st.sum("pread", "page_cache"); n < num/10 {
		t.Errorf("readrandom (buffered): %d preads went to the page cache, want at least %d\n%v", n, num/10, cached.st)
	}
	if hit := float64(cached.found) / float64(cached.reads); cached.reads != num || math.Abs(hit-held) > 0.05 {
		t.Errorf("readrandom (buffered) found %d of %d keys; the database holds %d of the %d it draws from", cached.found, cached.reads, distinct, num)
	}

	// Flushes and compactions with O_DIRECT too: their SSTs are pwrites
	// of aligned buffers on O_DIRECT fds.
	over := dbBench(t, g, mnt, db, "overwrite", "--use_existing_db=1", "--sync=1",
		"--use_direct_reads=1", "--use_direct_io_for_flush_and_compaction=1",
		fmt.Sprintf("--num=%d", num), fmt.Sprintf("--writes=%d", num/2))
	assertRocksShim(t, "overwrite", over.st, map[string]int{"write": num / 2, "fdatasync": num / 2, "pwrite": 1})
	if out, _ := ldb(t, g, mnt, db, "checkconsistency"); out != "OK\n" {
		t.Errorf("checkconsistency after the benchmarks: %q", out)
	}
	sstVerify(t, g, mnt, db)

	rocksdbCrash(t, g, mnt)
	fsckClean(t, g, "t/rocks")
}

// progressWords is db_bench's progress report, "... finished N ops",
// each ended by \r on stderr.
var progressWords = regexp.MustCompile(`\.\.\. finished (\d+) ops`)

// crashWriter is a db_bench run read as it goes: the last progress
// report seen and everything it printed.
type crashWriter struct {
	cmd      *exec.Cmd
	progress atomic.Int64
	mu       sync.Mutex
	stderr   strings.Builder
	eof      chan struct{} // closed when stderr is read to its end
}

func (w *crashWriter) read(r io.Reader) {
	defer close(w.eof)
	sc := bufio.NewScanner(r)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		line := sc.Text()
		w.mu.Lock()
		w.stderr.WriteString(line + "\n")
		w.mu.Unlock()
		if m := progressWords.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			w.progress.Store(n)
		}
	}
}

func (w *crashWriter) output() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return tail(w.stderr.String(), 40)
}

// rocksdbCrash: db_bench fillseq with sync=1 writes keys 0, 1, 2, ... in
// order and reports "finished N ops" only after the Nth put returned, so
// keys 0..N-1 were acknowledged durable. Its memtable flushes every
// ~2300 puts and two L0 files are compacted; once it reported 5000 puts
// and an SST exists (the WAL, SSTs and MANIFEST are all in play) the
// gateway is SIGKILLed under it, then db_bench: what sync=1 promised must
// be in the volume, the WAL's length included. After a restart,
// under the shim: checkconsistency passes, ldb scan holds exactly keys
// 0..K-1 with K >= N (WAL recovery keeps a prefix; no hole), a
// readrandom over [0, K) with O_DIRECT reads finds every key (and
// recovers the WAL read-write), ldb dump then counts K keys, and
// checkconsistency and every SST's checksums pass again.
func rocksdbCrash(t *testing.T, g *gw, mnt string) {
	db := filepath.Join(mnt, "crash")
	argv := append([]string{testtool.Path(t, "db_bench"), "--db=" + db, "--benchmarks=fillseq", "--sync=1", "--num=100000000",
		"--level0_file_num_compaction_trigger=2"}, rocksCommon...)
	w := &crashWriter{cmd: g.shimCmd(mnt, argv...), eof: make(chan struct{})}
	pipe, err := w.cmd.StderrPipe()
	must(t, err)
	must(t, w.cmd.Start())
	go w.read(pipe)
	const enough = 5000 // two flushes and an L0 compaction
	began := time.Now()
	// Evidence, polled: about 3 s on an idle machine; a loaded one gets
	// two minutes (testwait's 30 s is a few hundred synced puts a second).
	landed := testwait.Poll(2*time.Minute, func() bool {
		ssts, _ := filepath.Glob(filepath.Join(db, "*.sst"))
		if w.progress.Load() >= enough && len(ssts) > 0 {
			return true
		}
		select {
		case <-w.eof:
			t.Fatalf("db_bench fillseq exited before the kill: %v\n%s", w.cmd.Wait(), w.output())
		default:
		}
		return false
	})
	if !landed {
		w.cmd.Process.Kill()
		<-w.eof
		t.Fatalf("db_bench fillseq reported %d synced puts in 2 minutes, want %d and an SST\n%s", w.progress.Load(), enough, w.output())
	}
	files, _ := os.ReadDir(db)
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	// The gateway first. While it lives db_bench's files stay open, so
	// the volume holds the WAL's length as its last fdatasync persisted
	// it (docs/FUSE.md: a length is durable at fsync or last close);
	// killing db_bench first would close them, persisting the length
	// anyway, and a no-op fdatasync would pass. Then db_bench, unless
	// its next call already failed (ENOTCONN) and it exited.
	g.kill()
	w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.eof // every report it printed is read
	exit := w.cmd.Wait()
	// A report comes after its put's fdatasync returned 0, which only
	// the live gateway answers: every reported put must be there.
	acked := int(w.progress.Load())
	t.Logf("SIGKILLed the gateway, then db_bench fillseq --sync=1 (%v), after %v with %d puts reported; %s",
		exit, time.Since(began).Round(time.Millisecond), acked, strings.Join(names, " "))
	g.restart()
	g.mustSluice("umount", mnt) // the dead mount of the killed gateway
	g.mustSluice("mount", "t/rocks", mnt)

	out, st := ldb(t, g, mnt, db, "checkconsistency")
	if out != "OK\n" {
		t.Fatalf("checkconsistency after the kills: %q", out)
	}
	assertRocksShim(t, "ldb checkconsistency", st, map[string]int{"pread": 1})

	out, st = ldb(t, g, mnt, db, "scan", "--key_hex", "--no_value")
	kept := seqKeys(t, out)
	assertRocksShim(t, "ldb scan", st, map[string]int{"pread": 1})
	t.Logf("after the kills the database holds keys 0..%d; %d were acknowledged", kept-1, acked)
	if kept < acked {
		t.Fatalf("the database holds keys 0..%d, but %d puts with sync=1 were acknowledged before the kill", kept-1, acked)
	}

	read := dbBench(t, g, mnt, db, "readrandom", "--use_existing_db=1", "--use_direct_reads=1",
		fmt.Sprintf("--num=%d", kept), fmt.Sprintf("--reads=%d", kept))
	if read.found != kept || read.reads != kept {
		t.Errorf("readrandom over the recovered database found %d of %d keys, want all %d", read.found, read.reads, kept)
	}
	// Opening read-write replays the WAL into a new SST: writes, syncs.
	assertRocksShim(t, "readrandom after the crash", read.st, map[string]int{"pread": 1, "write": 1, "fdatasync": 1})
	out, _ = ldb(t, g, mnt, db, "dump", "--count_only")
	if n := keysInRange(t, out); n != kept {
		t.Errorf("ldb dump after the read-write reopen counts %d keys, want %d", n, kept)
	}
	if out, _ := ldb(t, g, mnt, db, "checkconsistency"); out != "OK\n" {
		t.Errorf("checkconsistency after the read-write reopen: %q", out)
	}
	sstVerify(t, g, mnt, db)
}

// sstVerify runs `sst_dump --command=verify` under the shim over every
// SST of db: each block's checksum, data, index and meta blocks alike.
func sstVerify(t *testing.T, g *gw, mnt, db string) {
	t.Helper()
	cmd := gatewayReads(g.shimCmd(mnt, testtool.Path(t, "sst_dump"), "--file="+db, "--command=verify"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := stdout.String()
	files, ok := strings.Count(out, "\nProcess "), strings.Count(out, "\nThe file is ok\n")
	ssts, _ := filepath.Glob(filepath.Join(db, "*.sst"))
	if err != nil || files == 0 || ok != files || files != len(ssts) {
		t.Fatalf("sst_dump verify over %d SSTs: %v; %d files, %d ok\n%s\n%s", len(ssts), err, files, ok, tail(out, 40), stderr.String())
	}
	st := parseShimStats(stderr.String())
	assertRocksShim(t, fmt.Sprintf("sst_dump verify of %d SSTs", files), st, map[string]int{"pread": files})
}

// keysInRange is ldb dump --count_only's "Keys in range: N".
func keysInRange(t *testing.T, out string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^Keys in range: (\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ldb dump --count_only printed no count:\n%s", tail(out, 40))
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// seqKeys checks that ldb scan --key_hex --no_value printed db_bench's
// sequential keys 0, 1, 2, ... in order with none missing (each an 8-byte
// big-endian number padded with eight '0's to --key_size 16) and returns
// how many.
func seqKeys(t *testing.T, out string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		hex, ok := strings.CutPrefix(line, "0x")
		if !ok || len(hex) != 32 || hex[16:] != "3030303030303030" {
			t.Fatalf("ldb scan: key %q is not a db_bench key", line)
		}
		k, err := strconv.ParseUint(hex[:16], 16, 64)
		if err != nil || k != uint64(n) {
			t.Fatalf("ldb scan: key %d is %q: key %d is missing", n, line, n)
		}
		n++
	}
	return n
}
