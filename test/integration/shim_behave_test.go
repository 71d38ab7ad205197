package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestShimBehaviour runs issue 19's behaviour matrix (test/shim/behave.c)
// under the shim on one Sluice mount: each case checks its data itself and
// here from its SLUICE_SHIM_STATS counters which path the calls took.
func TestShimBehaviour(t *testing.T) {
	behave := buildC(t, "behave")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/behave", "fs", "1G")
	// run runs `behave mnt args...` under the shim and returns its stats.
	run := func(t *testing.T, args ...string) shimStats {
		t.Helper()
		out, err := g.shimCmd(mnt, append([]string{behave, mnt}, args...)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok\n") {
			t.Fatalf("behave %v: %v\n%s", args, err, out)
		}
		return parseShimStats(string(out))
	}

	t.Run("append", func(t *testing.T) { shimAppend(t, g, mnt, behave) })

	t.Run("exec-spawn-vfork", func(t *testing.T) {
		st := run(t, "spawn")
		// The parent and its three exec'd children (fork+exec,
		// posix_spawn, vfork+exec), each on the inherited fd.
		if n := st.pids("pwrite", "bypassed"); n != 4 {
			t.Errorf("%d processes bypassed pwrite on the inherited fd, want 4", n)
		}
		if n := st.pids("pread", "bypassed"); n != 4 {
			t.Errorf("%d processes bypassed pread, want 4", n)
		}
		b, err := os.ReadFile(filepath.Join(mnt, "inherit"))
		if err != nil || len(b) != 3*64+7 || string(b[64:70]) != "b-exec" || string(b[192:199]) != "d-vfork" {
			t.Errorf("the inherited file through the mount: %q (%v)", b, err)
		}
	})

	t.Run("threads", func(t *testing.T) {
		st := run(t, "threads")
		// 16 threads × 64 chunks, each written and read back through the
		// channel; the final whole-file read too.
		if n := st.sum("pwrite", "bypassed"); n != 16*64 {
			t.Errorf("pwrite bypassed %d times, want %d", n, 16*64)
		}
		if n := st.sum("pread", "bypassed"); n != 16*64+1 {
			t.Errorf("pread bypassed %d times, want %d", n, 16*64+1)
		}
		fi, err := os.Stat(filepath.Join(mnt, "threads"))
		if err != nil || fi.Size() != 16*256*1024 {
			t.Errorf("threads through the mount: %v %v", fi, err)
		}
	})

	t.Run("direct", func(t *testing.T) {
		// The kernel's answers through the mount, without the shim ...
		kernel, err := exec.Command(behave, mnt, "direct").CombinedOutput()
		if err != nil {
			t.Fatalf("behave direct without the shim: %v\n%s", err, kernel)
		}
		out, err := g.shimCmd(mnt, behave, mnt, "direct").CombinedOutput()
		if err != nil {
			t.Fatalf("behave direct under the shim: %v\n%s", err, out)
		}
		// ... are the shim's, case by case.
		if got, want := directLines(string(out)), directLines(string(kernel)); got != want || got == "" {
			t.Errorf("O_DIRECT under the shim:\n%s\nthe kernel through the mount:\n%s", got, want)
		}
		t.Logf("O_DIRECT on the mount:\n%s", kernel)
		st := parseShimStats(string(out))
		if st.sum("pwrite", "bypassed") == 0 || st.sum("pread", "bypassed") == 0 {
			t.Errorf("the O_DIRECT calls were not bypassed\n%s", out)
		}
	})

	t.Run("mmap", func(t *testing.T) {
		// The mount's page cache holds the old bytes ...
		path := filepath.Join(mnt, "mapped")
		if err := os.WriteFile(path, bytes.Repeat([]byte{'.'}, 3*4096), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(path); err != nil {
			t.Fatal(err)
		}
		// ... the shim overwrites and extends the file, and a child it
		// runs maps it; then a process without the shim maps it.
		st := run(t, "mmap-write")
		if st.sum("pwrite", "bypassed") != 2 {
			t.Errorf("the shim's writes were not bypassed")
		}
		if out, err := exec.Command(behave, mnt, "mmap-check").CombinedOutput(); err != nil {
			t.Errorf("a process without the shim maps the file: %v\n%s", err, out)
		}
	})

	t.Run("locks", func(t *testing.T) {
		st := run(t, "locks")
		if st.sum("pwrite", "bypassed") < 2 || st.sum("pread", "bypassed") < 1 {
			t.Errorf("the IO under the lock was not bypassed")
		}
	})

	t.Run("cached", func(t *testing.T) {
		// Reads of a read-only buffered fd go to the page cache; shim
		// writes through another fd (and a fork child's) are seen at once.
		st := run(t, "cached")
		if n := st.sum("pread", "page_cache"); n < 200 {
			t.Errorf("%d preads went to the page cache, want at least 200", n)
		}
		if n := st.sum("pwrite", "bypassed"); n < 201 {
			t.Errorf("%d pwrites bypassed, want at least 201", n)
		}
		// With SLUICE_SHIM_CACHED_READS=0 the same reads are the shim's.
		cmd := g.shimCmd(mnt, behave, mnt, "cached")
		cmd.Env = append(cmd.Env, "SLUICE_SHIM_CACHED_READS=0")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok\n") {
			t.Fatalf("behave cached, cached reads off: %v\n%s", err, out)
		}
		if st := parseShimStats(string(out)); st.sum("pread", "page_cache") != 0 || st.sum("pread", "bypassed") < 200 {
			t.Errorf("cached reads off: preads went to the page cache\n%s", out)
		}
	})

	t.Run("stdio", func(t *testing.T) {
		st := run(t, "stdio")
		// glibc's stdio calls read and write inside libc: the kernel serves
		// them, correctly; only the program's own pread is the shim's.
		if st.sum("pread", "bypassed") != 1 {
			t.Errorf("the final pread was not bypassed")
		}
		b, err := os.ReadFile(filepath.Join(mnt, "stdio"))
		if err != nil || len(b) != 110000+100000+5 || !bytes.HasPrefix(b, []byte("line 00000\n")) || !bytes.HasSuffix(b, []byte("sstail\n")) {
			t.Errorf("stdio's file through the mount: %d bytes (%v)", len(b), err)
		}
	})
	t.Run("doorbell", func(t *testing.T) {
		// The program dup2s a file over the library's eventfd 100 times
		// while 4 threads do IO: each time the channel retires and the
		// next call opens another; no doorbell write lands in the file
		// (behave checks its length), and the IO stays correct.
		shimDoorbell(t, g, mnt, behave, 1, "")
	})
	t.Run("doorbell-close-range", func(t *testing.T) {
		// The same, every fourth replacement after a close_range(100, ~0U)
		// over the library's socket, doorbell, witnesses and stats fd,
		// five runs: a channel or witness the library opened while the
		// range was being closed used to be closed behind its back (a
		// thread's pread read the previous round's bytes, or the next
		// channel took 10 s) in about one run in eight.
		shimDoorbell(t, g, mnt, behave, 5, "ranges")
	})
	t.Run("signal", func(t *testing.T) {
		// A handler doing IO while its thread registers files with the
		// gateway (the library's control mutex held): the library must
		// not wait for itself (behave ends itself with SIGALRM after 120 s
		// if it does). Reentered, it lets the kernel serve what needs the
		// mutex (in_signal); registered files stay on the channel.
		st := run(t, "signal")
		if n := st.sum("pwrite", "bypassed"); n < 400 {
			t.Errorf("pwrite bypassed %d times, want at least 400", n)
		}
		if n := st.sum("write", "not_regular"); n < 200 {
			t.Errorf("the handler's pipe writes: %d went to the kernel as not_regular, want at least 200", n)
		}
		// The handlers did reenter the library inside its mutex (else this
		// ran nothing it is about): about 150 per run here.
		if n := st.sum("pread", "in_signal"); n == 0 {
			t.Errorf("no handler's pread found its thread inside the library's mutex: the case was not exercised")
		}
		t.Logf("preads: %d bypassed, %d in_signal", st.sum("pread", "bypassed"), st.sum("pread", "in_signal"))
	})
	t.Run("fork-in-handler", func(t *testing.T) {
		// A timer's handler forks while the program's thread is inside
		// fork() (between the library's atfork handlers): the outer fork
		// must still let go of the library's mutex; behave then needs it
		// from another thread and fails after 20 s if it is still held.
		out, err := g.shimCmd(mnt, behave, mnt, "fork-in-handler").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok\n") {
			t.Fatalf("behave fork-in-handler: %v\n%s", err, out)
		}
		var n int
		if at := bytes.Index(out, []byte("fork-in-handler:")); at < 0 {
			t.Fatalf("no count in\n%s", out)
		} else if _, err := fmt.Sscanf(string(out[at:]), "fork-in-handler: %d", &n); err != nil || n == 0 {
			t.Errorf("no handler forked (%v): the case was not exercised\n%s", err, out)
		}
	})
	fsckClean(t, g, "t/behave")
}

// shimAppend: two processes under the shim append 1000 fixed-size records
// each to one O_APPEND file. O_APPEND is the kernel's (reason o_append):
// every record is whole, present once, and each writer's in its order.
func shimAppend(t *testing.T, g *gw, mnt, behave string) {
	var cmds [2]*exec.Cmd
	var outs [2]bytes.Buffer
	for i, id := range []string{"A", "B"} {
		cmds[i] = g.shimCmd(mnt, behave, mnt, "append", id)
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range cmds {
		if err := cmds[i].Wait(); err != nil {
			t.Fatalf("writer %d: %v\n%s", i, err, outs[i].String())
		}
		st := parseShimStats(outs[i].String())
		if n := st.sum("write", "o_append"); n != 1000 {
			t.Errorf("writer %d: %d writes fell back for o_append, want 1000\n%s", i, n, outs[i].String())
		}
		if n := st.sum("write", "bypassed"); n != 0 {
			t.Errorf("writer %d: %d appends bypassed", i, n)
		}
	}
	b, err := os.ReadFile(filepath.Join(mnt, "append"))
	if err != nil || len(b) != 2*1000*64 {
		t.Fatalf("append: %d bytes (%v), want %d", len(b), err, 2*1000*64)
	}
	next := map[byte]int{'A': 0, 'B': 0}
	for off := 0; off < len(b); off += 64 {
		rec := b[off : off+64]
		id := rec[0]
		want := fmt.Sprintf("%c %04d ", id, next[id])
		if _, ok := next[id]; !ok || !bytes.HasPrefix(rec, []byte(want)) || rec[63] != '\n' ||
			bytes.Count(rec[len(want):63], []byte{id}) != 63-len(want) {
			t.Fatalf("record at %d is torn, lost or out of order: %q (want %q...)", off, rec, want)
		}
		next[id]++
	}
	if next['A'] != 1000 || next['B'] != 1000 {
		t.Errorf("records: %v, want 1000 of each", next)
	}
}

// directLines is behave direct's "CASE=RESULT" lines.
func directLines(out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "=") && !strings.HasPrefix(l, "sluice-shim:") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// shimDoorbell runs `behave doorbell SCRATCH [mode]` runs times: each run
// must open a channel per replacement (the gateway's count of channels
// grows by at least 101), serve IO on them, and never keep a thread's
// write+read waiting 5 s (a channel lost behind the library's back costs
// 10).
func shimDoorbell(t *testing.T, g *gw, mnt, behave string, runs int, mode string) {
	t.Helper()
	for i := 0; i < runs; i++ {
		before := metricValue(t, g.metrics(), "sluice_shim_channels_opened_total")
		args := []string{behave, mnt, "doorbell", filepath.Join(t.TempDir(), "scratch")}
		if mode != "" {
			args = append(args, mode)
		}
		out, err := g.shimCmd(mnt, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ok\n") {
			t.Fatalf("behave doorbell %s, run %d: %v\n%s", mode, i, err, out)
		}
		if n := metricValue(t, g.metrics(), "sluice_shim_channels_opened_total") - before; n < 101 {
			t.Errorf("run %d: %v channels opened, want at least 101 (one per replacement)", i, n)
		}
		if st := parseShimStats(string(out)); st.sum("pwrite", "bypassed") == 0 || st.sum("pread", "bypassed") == 0 {
			t.Errorf("run %d: the channels served no IO\n%s", i, out)
		}
		at := bytes.Index(out, []byte("doorbell: longest"))
		var longest float64
		if at < 0 {
			t.Fatalf("run %d: no longest write+read in\n%s", i, out)
		}
		if _, err := fmt.Sscanf(string(out[at:]), "doorbell: longest write+read %g s", &longest); err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
		if longest > 5 {
			t.Errorf("run %d: a write+read took %.1f s", i, longest)
		}
	}
}
