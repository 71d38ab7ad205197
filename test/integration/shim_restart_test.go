package integration

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// shimIOWorker is a long-running program under the shim: for each "io
// PATH" line on stdin it writes 16 pieces of 4 KiB to PATH with pwrite,
// fsyncs, reads them back with pread, closes, and prints "ok" or the
// error; "quit" exits (printing the shim's stats).
const shimIOWorker = `
import os, sys
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "quit":
        break
    try:
        fd = os.open(cmd[1], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            data = [bytes([i + 1]) * 4096 for i in range(16)]
            for i, d in enumerate(data):
                os.pwrite(fd, d, i * 4096)
            os.fsync(fd)
            for i, d in enumerate(data):
                if os.pread(fd, 4096, i * 4096) != d:
                    raise Exception("piece %d read back wrong" % i)
        finally:
            os.close(fd)
        print("ok", flush=True)
    except Exception as e:
        print("err", e, flush=True)
`

// TestShimGatewayRestarts: a process under the shim outlives two gateway
// restarts (SIGKILL, start on the same data dir, mount again). After each
// restart its next files go through the new gateway's shim door (every
// write of the round counted by the new process), their data is right,
// and no data call fell back for anything but the gateway being gone.
func TestShimGatewayRestarts(t *testing.T) {
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/restart", "fs", "1G")
	w := startShimWorker(t, g, mnt, shimIOWorker)
	round := func(r int) {
		t.Helper()
		if l := w.ask(fmt.Sprintf("io %s", filepath.Join(mnt, fmt.Sprintf("f%d", r)))); l != "ok" {
			t.Fatalf("round %d: %q\n%s", r, l, w.stderr.String())
		}
		// Every write of the round reaches the new gateway: the
		// library notices the old channel is dead at the file's
		// registration and opens a new one at once.
		n := shimWrites(t, g)
		if n != 16 {
			t.Fatalf("round %d: the gateway served %d shim writes, want 16\n%s", r, n, g.metrics())
		}
		t.Logf("round %d: the gateway (pid %d) served %d shim writes", r, g.cmd.Process.Pid, n)
	}
	round(0)
	for r := 1; r <= 2; r++ {
		g.kill()
		g.restart()
		g.mustSluice("umount", mnt) // the dead mount of the killed gateway
		g.mustSluice("mount", "t/restart", mnt)
		round(r)
	}
	st := w.quit()
	stderr := w.stderr.String()
	t.Logf("pwrite: bypassed %d, fell back %d", st.sum("pwrite", "bypassed")+st.sum("pwrite64", "bypassed"), st.sum("pwrite", "fallback")+st.sum("pwrite64", "fallback"))
	if n := st.sum("pwrite", "bypassed") + st.sum("pwrite64", "bypassed"); n != 3*16 {
		t.Errorf("%d pwrites bypassed over three gateways, want 48\n%s", n, stderr)
	}
	for k, f := range st {
		for reason, n := range f {
			if reason != "bypassed" && reason != "fallback" && reason != "gateway_gone" && n > 0 &&
				(strings.HasSuffix(k, " pwrite") || strings.HasSuffix(k, " pwrite64") || strings.HasSuffix(k, " pread") || strings.HasSuffix(k, " pread64") || strings.HasSuffix(k, " fsync")) {
				t.Errorf("%s fell back for %s %d times\n%s", k, reason, n, stderr)
			}
		}
	}
}

// shimFsyncWorker keeps one file open under the shim; for each line on
// stdin it writes 4 KiB at offset 0 with pwrite ("w"), and fsyncs after
// ("s"), and prints "ok", "eio" (fsync failed with EIO) or the error;
// "quit" exits.
const shimFsyncWorker = `
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        if line.strip() == "s":
            os.fsync(fd)
        print("ok", flush=True)
    except OSError as e:
        print("eio" if e.errno == errno.EIO else "err %s" % e, flush=True)
`

// TestShimCrashResumeFsyncEIO: a program under the shim keeps a file
// open on a mount the gateway resumes after a SIGKILL (--fuse-resume).
// Its writes go on through the new gateway's shim door (the first finds
// the channel dead and goes to the kernel, the second registers the file
// on a new channel, the others are served), and its first fsync after
// the crash reports EIO (the dead gateway may have answered writes it had
// not made durable), once: the library sends that fsync through the
// kernel, whose FUSE handle, opened before the crash, reports it
// (docs/SHIM.md); the next fsync goes through the shim and succeeds.
func TestShimCrashResumeFsyncEIO(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir, "--fuse-resume")
	mnt := g.mountVolume("t/fs", "fs", "64M")
	w := startShimWorker(t, g, mnt, shimFsyncWorker, filepath.Join(mnt, "f"))
	for i, step := range []struct{ cmd, want string }{
		{"s", "ok"}, {"crash", ""}, {"w", "ok"}, {"w", "ok"}, {"s", "eio"}, {"s", "ok"}, {"s", "ok"},
	} {
		if step.cmd == "crash" {
			g.kill()
			g.restart()
			testwait.For(t, "the new gateway resumes the mount", func() bool {
				b, _ := os.ReadFile(filepath.Join(dir, "gateway.log"))
				return strings.Contains(string(b), `msg="crash resume" fuse_mounts_resumed=1`)
			})
			continue
		}
		if got := w.ask(step.cmd); got != step.want {
			t.Fatalf("step %d (%s): %q, want %q\n%s\n%s", i, step.cmd, got, step.want, w.stderr.String(), g.logTail())
		}
	}
	st := w.quit()
	if b, k := st.sum("pwrite64", "bypassed")+st.sum("pwrite", "bypassed"), st.sum("pwrite64", "fallback")+st.sum("pwrite", "fallback"); b != 4 || k != 2 {
		t.Errorf("pwrite: %d bypassed and %d through the kernel, want 4 and 2 (the two first after the crash)\n%s", b, k, w.stderr.String())
	}
	if b, k := st.sum("fsync", "bypassed"), st.sum("fsync", "gateway_gone"); b != 3 || k != 1 {
		t.Errorf("fsync: %d bypassed and %d through the kernel for the crash, want 3 and 1\n%s", b, k, w.stderr.String())
	}
}

// shimWorker is a python program under the shim that answers each line
// it is sent with one line.
type shimWorker struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr strings.Builder
}

// startShimWorker runs python3 -c script args... under the shim on mnt;
// it is killed when the test ends.
func startShimWorker(t *testing.T, g *gw, mnt, script string, args ...string) *shimWorker {
	t.Helper()
	python := testtool.Path(t, "python3")
	w := &shimWorker{t: t, cmd: g.shimCmd(mnt, append([]string{python, "-c", script}, args...)...), lines: make(chan string)}
	var err error
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.Stderr = &w.stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.cmd.Process.Kill() })
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	return w
}

// ask sends line and returns the answer; a minute without one (a hang)
// or the worker's end fails the test.
func (w *shimWorker) ask(line string) string {
	w.t.Helper()
	fmt.Fprintln(w.stdin, line)
	select {
	case l, ok := <-w.lines:
		if !ok {
			w.t.Fatalf("the worker ended\n%s", w.stderr.String())
		}
		return l
	case <-time.After(time.Minute):
		w.t.Fatalf("no answer to %q in a minute (a hang)\n%s", line, w.stderr.String())
	}
	return ""
}

// quit ends the worker and returns the shim's stats it printed.
func (w *shimWorker) quit() shimStats {
	w.t.Helper()
	fmt.Fprintln(w.stdin, "quit")
	w.stdin.Close()
	for range w.lines {
	}
	if err := w.cmd.Wait(); err != nil {
		w.t.Fatalf("worker: %v\n%s", err, w.stderr.String())
	}
	return parseShimStats(w.stderr.String())
}

var shimWriteMetric = regexp.MustCompile(`(?m)^sluice_shim_requests_total\{op="write"\} (\d+)`)

// shimWrites is the gateway process's count of shim write requests.
func shimWrites(t *testing.T, g *gw) int {
	m := shimWriteMetric.FindStringSubmatch(g.metrics())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
