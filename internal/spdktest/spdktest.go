// Package spdktest runs a real SPDK target for tests: it finds SPDK (the
// build `make deps` unpacks into SPDK_DIR), reserves 2 MiB huge pages and
// gives them back, starts SPDK's vhost target (or spdk_tgt) as a child
// process on one core, waits for its RPC socket, and kills it when the test
// ends, passed or failed.
//
// Like testtool, it skips a test on a developer's machine that lacks SPDK,
// root or free huge pages, and fails it under CI=true, where `make deps` has
// installed SPDK and the tests run as root: CI never passes by skipping.
//
// SPDK's reactor busy-polls its core, so a target should live only as long
// as the test that needs it.
package spdktest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
	"golang.org/x/sys/unix"
)

// DefaultDir is where `make deps` unpacks SPDK when SPDK_DIR is not set.
const DefaultDir = "/opt/sluice-spdk/v23.01.1"

// Dir returns the SPDK build to use: $SPDK_DIR, or DefaultDir. When it holds
// no SPDK (bin/vhost, bin/spdk_tgt, lib/) it skips t, or fails it under
// CI=true.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("SPDK_DIR")
	if dir == "" {
		dir = DefaultDir
	}
	for _, p := range []string{"bin/vhost", "bin/spdk_tgt", "lib", "scripts/rpc.py"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			unavailable(t, "SPDK is not installed in %s (make deps unpacks it; SPDK_DIR overrides): %v", dir, err)
		}
	}
	return dir
}

// unavailable skips t, or fails it under CI=true.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format+"; CI=true requires it", args...)
	}
	t.Skipf(format, args...)
}

const (
	hugePageCount = "/proc/sys/vm/nr_hugepages"
	hugeMount     = "/dev/hugepages"
)

// ReserveHugePages adds n 2 MiB pages to the kernel's pool (mounting
// hugetlbfs at /dev/hugepages, where DPDK looks, if nothing is mounted
// there) and, when the test ends, takes n away again. It adds and removes
// rather than setting and restoring a count so that two tests reserving at
// once do not undo each other. It skips or fails t (CI=true) when it cannot.
func ReserveHugePages(t testing.TB, n int) {
	t.Helper()
	before, err := readInt(hugePageCount)
	if err != nil {
		unavailable(t, "huge pages: %v", err)
	}
	if err := os.WriteFile(hugePageCount, []byte(strconv.Itoa(before+n)), 0); err != nil {
		unavailable(t, "huge pages: reserve %d (needs root): %v", n, err)
	}
	got, err := readInt(hugePageCount)
	if err == nil && got < before+n {
		// Short of free 2 MiB runs (a machine whose memory the page
		// cache has filled and fragmented): drop the clean cache,
		// compact, and ask once more.
		_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
		_ = os.WriteFile("/proc/sys/vm/compact_memory", []byte("1"), 0)
		if err = os.WriteFile(hugePageCount, []byte(strconv.Itoa(before+n)), 0); err == nil {
			got, err = readInt(hugePageCount)
		}
		t.Logf("huge pages: the kernel had too few free 2 MiB runs; after dropping caches and compacting it has %d of %d", got, before+n)
	}
	if err != nil || got < before+n {
		setHugePages(t, before)
		unavailable(t, "huge pages: asked for %d, the kernel has %d (memory fragmented or short?): %v", before+n, got, err)
	}
	t.Cleanup(func() {
		now, err := readInt(hugePageCount)
		if err != nil {
			t.Errorf("huge pages: give back %d: %v", n, err)
			return
		}
		setHugePages(t, max(now-n, 0))
	})
	if err := mountHugetlbfs(); err != nil {
		unavailable(t, "huge pages: %v", err)
	}
}

func setHugePages(t testing.TB, n int) {
	t.Helper()
	if err := os.WriteFile(hugePageCount, []byte(strconv.Itoa(n)), 0); err != nil {
		t.Errorf("huge pages: set %s to %d: %v", hugePageCount, n, err)
	}
}

// mountHugetlbfs mounts hugetlbfs at /dev/hugepages unless something is
// mounted there. It stays mounted: that is the system's usual mount, and
// other tests may be using it.
func mountHugetlbfs() error {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(mounts)) {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == hugeMount {
			if f[2] != "hugetlbfs" {
				return fmt.Errorf("%s is a %s mount, not hugetlbfs", hugeMount, f[2])
			}
			return nil
		}
	}
	if err := os.MkdirAll(hugeMount, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("nodev", hugeMount, "hugetlbfs", 0, ""); err != nil {
		return fmt.Errorf("mount hugetlbfs at %s: %w", hugeMount, err)
	}
	return nil
}

// HugePagesFree reads HugePages_Free from /proc/meminfo.
func HugePagesFree() (int, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "HugePages_Free:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("no HugePages_Free in /proc/meminfo")
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// Options configure Start. The zero value starts bin/vhost, initialised.
type Options struct {
	// Program is "vhost" (default: the vhost-only target, lighter on
	// memory) or "spdk_tgt".
	Program string
	// MemMiB is SPDK's huge-page memory (-s; default 256).
	MemMiB int
	// HugePages is how many 2 MiB pages to reserve for the target and the
	// test's own initiator (default 300: DPDK maps more than -s at start).
	HugePages int
	// WaitForRPC starts the target with --wait-for-rpc: only start-up
	// methods work until framework_start_init.
	WaitForRPC bool
}

// Target is a running SPDK target.
type Target struct {
	Dir       string // the SPDK build
	RPCSocket string // its JSON-RPC socket (-r)
	VhostDir  string // where its vhost controllers' sockets appear (-S)
	LogPath   string // its stdout and stderr

	program string
	args    []string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has been waited for
	err     error         // its exit status, once exited is closed
}

// Start reserves huge pages and starts an SPDK target on core 0, and
// returns once its RPC socket accepts connections. The target is killed,
// and the pages given back, when t ends.
func Start(t testing.TB, opt Options) *Target {
	t.Helper()
	dir := Dir(t)
	if opt.Program == "" {
		opt.Program = "vhost"
	}
	if opt.MemMiB == 0 {
		opt.MemMiB = 256
	}
	if opt.HugePages == 0 {
		opt.HugePages = 300
	}
	ReserveHugePages(t, opt.HugePages)

	// Short paths: a unix socket's path must fit in 108 bytes.
	run, err := os.MkdirTemp("", "spdk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	tg := &Target{
		Dir: dir, RPCSocket: filepath.Join(run, "rpc.sock"), VhostDir: run,
		LogPath: filepath.Join(run, "spdk.log"), program: opt.Program,
	}
	args := []string{
		"-m", "0x1", "-s", strconv.Itoa(opt.MemMiB), "--huge-unlink",
		// Another SPDK (another test, another checkout's tests) may run
		// on core 0 at the same time; the per-core lock files would
		// refuse it.
		"--disable-cpumask-locks",
		"-r", tg.RPCSocket, "-S", tg.VhostDir,
	}
	if opt.WaitForRPC {
		args = append(args, "--wait-for-rpc")
	}
	tg.args = args
	t.Cleanup(func() {
		tg.Stop(t)
		if t.Failed() {
			t.Logf("SPDK log (%s):\n%s", opt.Program, tg.Log())
		}
	})
	tg.run(t)
	return tg
}

// Restart starts the target again on the same sockets after it was
// killed (or stops it first with SIGKILL if it still runs), and returns
// once its RPC socket accepts connections. What was created at run time
// (bdevs, controllers) is gone; the test re-creates what it needs.
func (tg *Target) Restart(t testing.TB) {
	t.Helper()
	select {
	case <-tg.exited:
	default:
		tg.Kill()
	}
	tg.run(t)
}

// run starts the process (its output appended to LogPath) and waits for
// its RPC socket.
func (tg *Target) run(t testing.TB) {
	t.Helper()
	tg.exited = make(chan struct{})
	logf, err := os.OpenFile(tg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// A killed target leaves its RPC socket file behind; connecting to
	// it fails until the new one binds, which the wait below relies on.
	os.Remove(tg.RPCSocket)
	tg.cmd = exec.Command(filepath.Join(tg.Dir, "bin", tg.program), tg.args...)
	tg.cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+filepath.Join(tg.Dir, "lib"))
	tg.cmd.Stdout, tg.cmd.Stderr = logf, logf
	// Should the test binary die without running its cleanups, the target
	// dies with it rather than spinning on a core.
	tg.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := tg.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", tg.program, err)
	}
	cmd, exited := tg.cmd, tg.exited
	go func() {
		tg.err = cmd.Wait()
		// DPDK leaves its run-time directory (named by the file prefix
		// SPDK gives it, spdk_pid<PID>) behind, however SPDK ends.
		os.RemoveAll(fmt.Sprintf("/var/run/dpdk/spdk_pid%d", cmd.Process.Pid))
		close(exited)
	}()

	testwait.For(t, "SPDK RPC socket "+tg.RPCSocket, func() bool {
		select {
		case <-exited:
			t.Fatalf("%s exited before serving RPC (%v); log:\n%s", tg.program, tg.err, tg.Log())
		default:
		}
		c, err := net.Dial("unix", tg.RPCSocket)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// Pid is the target's process id.
func (tg *Target) Pid() int { return tg.cmd.Process.Pid }

// Exited is closed when the target's process has ended.
func (tg *Target) Exited() <-chan struct{} { return tg.exited }

// Signal sends sig to the target.
func (tg *Target) Signal(sig os.Signal) error { return tg.cmd.Process.Signal(sig) }

// Stop ends the target: SIGTERM (SPDK shuts its subsystems down and removes
// its sockets), then SIGKILL if it has not exited within 10 s. It is safe to
// call more than once, and after the target died.
func (tg *Target) Stop(t testing.TB) {
	t.Helper()
	select {
	case <-tg.exited:
		return
	default:
	}
	tg.cmd.Process.Signal(syscall.SIGCONT) // in case a test stopped it
	tg.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-tg.exited:
		return
	case <-time.After(10 * time.Second):
	}
	t.Logf("SPDK did not exit 10 s after SIGTERM; killing it")
	tg.Kill()
}

// Kill ends the target with SIGKILL and waits for it.
func (tg *Target) Kill() {
	tg.cmd.Process.Kill()
	<-tg.exited
}

// Log returns the target's output so far (its last 8 KiB).
func (tg *Target) Log() string {
	b, _ := os.ReadFile(tg.LogPath)
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// RPCPy runs SPDK's own client, scripts/rpc.py, against socket with args,
// and returns its output. Tests use it as the reference for what a request
// must look like.
func RPCPy(ctx context.Context, dir, socket string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "python3", append([]string{filepath.Join(dir, "scripts", "rpc.py"), "-s", socket}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("rpc.py %s: %w: %s", strings.Join(args, " "), err, firstLine(out.String()))
	}
	return out.String(), nil
}

func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}
