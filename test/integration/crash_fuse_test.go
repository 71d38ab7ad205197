package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// syncClient keeps one file open and writes random 4 KiB blocks, each
// followed by an fsync and a read that is checked; only what an fsync
// covered counts as durable (durable), to check the file at the end.
// An fsync that reports EIO (the first through a handle opened before a
// gateway crash: the write may be lost) is counted in eio, and the block
// is written and fsynced again, as a careful program does.
type syncClient struct {
	f        *os.File
	blocks   int
	durable  []byte
	ops      atomic.Int64
	eio      atomic.Int64
	mu       sync.Mutex // durable
	ioRecord            // longest: a write+fsync+read
}

func newSyncClient(t *testing.T, path string, blocks int) *syncClient {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c := &syncClient{f: f, blocks: blocks, durable: make([]byte, blocks*4096)}
	if _, err := f.WriteAt(c.durable, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *syncClient) run(stop <-chan struct{}) {
	buf, got := make([]byte, 4096), make([]byte, 4096)
	for {
		select {
		case <-stop:
			return
		default:
		}
		for i := range buf {
			buf[i] = byte(rand.Uint32())
		}
		off := int64(rand.IntN(c.blocks)) * 4096
		start := time.Now()
		if err := c.writeSynced(buf, off); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		copy(c.durable[off:], buf)
		c.mu.Unlock()
		if _, err := c.f.ReadAt(got, off); err != nil {
			c.fail(fmt.Errorf("read at %d: %w", off, err))
			return
		}
		if !bytes.Equal(got, buf) {
			c.fail(fmt.Errorf("read at %d: not what was written and fsynced", off))
			return
		}
		c.observe(time.Since(start))
		c.ops.Add(1)
	}
}

// writeSynced writes buf at off and fsyncs, again after each EIO.
func (c *syncClient) writeSynced(buf []byte, off int64) error {
	for {
		if _, err := c.f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write at %d: %w", off, err)
		}
		err := c.f.Sync()
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EIO) {
			return fmt.Errorf("fsync after the write at %d: %w", off, err)
		}
		c.eio.Add(1)
	}
}

// TestCrashResumeWorker is the client of TestCrashResumeFUSE, run in a
// process of its own (the test re-executes its binary): a process whose
// threads wait on a mount nobody serves cannot fork the next gateway
// (the fork waits too), and a real program on the mount is not the
// gateway's supervisor either. It prints "ops W L" as it goes,
// MS" with the longest write+fsync+read of each 20 ms tick, "error: ..." on the first
// failure, and "done" once the file held every fsynced byte when the
// stop file appeared.
func TestCrashResumeWorker(t *testing.T) {
	dir, stopFile := os.Getenv("SLUICE_CRASH_WORKER_DIR"), os.Getenv("SLUICE_CRASH_WORKER_STOP")
	if dir == "" {
		t.Skip("run by TestCrashResumeFUSE")
	}
	c := newSyncClient(t, filepath.Join(dir, "f"), 64)
	ls := &lister{dir: dir, name: "f"}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.run(stop) }()
	go func() { defer wg.Done(); ls.run(stop) }()
	for {
		if err := c.failed(); err != nil {
			fmt.Printf("error: writer: %v\n", err)
			os.Exit(1)
		}
		if p := ls.err.Load(); p != nil {
			fmt.Printf("error: lister: %v\n", *p)
			os.Exit(1)
		}
		if d := c.takeLongest(); d > 0 {
			fmt.Printf("pause %d\n", d.Milliseconds())
		}
		fmt.Printf("ops %d %d %d\n", c.ops.Load(), ls.ops.Load(), c.eio.Load())
		if _, err := os.Stat(stopFile); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // the client process's report cadence, not a wait for a condition
	}
	close(stop)
	wg.Wait()
	got := make([]byte, len(c.durable))
	if _, err := c.f.ReadAt(got, 0); err != nil || !bytes.Equal(got, c.durable) {
		fmt.Printf("error: the file does not hold every fsynced block (%v)\n", err)
		os.Exit(1)
	}
	c.f.Close()
	if b, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || !bytes.Equal(b, c.durable) {
		fmt.Printf("error: through a new open the file does not hold every fsynced block (%v)\n", err)
		os.Exit(1)
	}
	fmt.Println("done")
}

// crashWorker follows a TestCrashResumeWorker process's output.
type crashWorker struct {
	cmd      *exec.Cmd
	writes   atomic.Int64
	lists    atomic.Int64
	eio      atomic.Int64 // fsyncs that reported EIO
	longest  atomic.Int64 // ms, since the last take
	err      atomic.Pointer[string]
	finished chan struct{}
	done     atomic.Bool
	stopFile string // its existence tells the worker to stop
}

// progress waits until the worker has made 3 more writes and 3 more
// listings; an error it reports fails the test, with g's log.
func (w *crashWorker) progress(t *testing.T, g *gw, what string) {
	t.Helper()
	w0, l0 := w.writes.Load(), w.lists.Load()
	testwait.For(t, what, func() bool {
		if p := w.err.Load(); p != nil {
			t.Fatalf("%s: client: %s\n%s", what, *p, g.logTail())
		}
		return w.writes.Load() >= w0+3 && w.lists.Load() >= l0+3
	})
}

// stop tells the worker to stop and fails the test unless it finishes
// within 2 minutes having reported no error.
func (w *crashWorker) stop(t *testing.T, g *gw) {
	t.Helper()
	if err := os.WriteFile(w.stopFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.finished:
	case <-time.After(2 * time.Minute):
		t.Fatal("the client did not finish within 2 minutes of being told to stop")
	}
	if p := w.err.Load(); p != nil || !w.done.Load() {
		t.Fatalf("client: %v (done %v)\n%s", p, w.done.Load(), g.logTail())
	}
}

// startCrashWorker starts a TestCrashResumeWorker process on a new
// directory d of mount mnt; it is killed when the test ends.
func startCrashWorker(t *testing.T, mnt string) *crashWorker {
	t.Helper()
	dir := filepath.Join(mnt, "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stopFile := filepath.Join(t.TempDir(), "stop")
	w := &crashWorker{finished: make(chan struct{}), stopFile: stopFile}
	w.cmd = exec.Command(os.Args[0], "-test.run=^TestCrashResumeWorker$", "-test.count=1")
	w.cmd.Env = append(os.Environ(), "SLUICE_CRASH_WORKER_DIR="+dir, "SLUICE_CRASH_WORKER_STOP="+stopFile)
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w.cmd.Stderr = os.Stderr
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.finished)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			var a, b, e int64
			switch {
			case strings.HasPrefix(line, "error: "):
				w.err.CompareAndSwap(nil, &line)
			case line == "done":
				w.done.Store(true)
			default:
				if n, _ := fmt.Sscanf(line, "ops %d %d %d", &a, &b, &e); n == 3 {
					w.eio.Store(e) // before writes: progress seen means this line's count is
					w.writes.Store(a)
					w.lists.Store(b)
				} else if n, _ := fmt.Sscanf(line, "pause %d", &a); n == 1 && a > w.longest.Load() {
					w.longest.Store(a)
				}
			}
		}
		w.cmd.Wait()
	}()
	t.Cleanup(func() {
		w.cmd.Process.Kill()
		<-w.finished
	})
	return w
}

// TestCrashResumeFUSE: a gateway with --fuse-resume and an fs volume
// mounted is killed with SIGKILL 10 times while another process keeps a
// file open on the mount (random 4 KiB writes, each fsynced and read
// back) and stats the file and lists its directory in a loop; each time
// a gateway is started again on the same data directory, resumes the
// mount from the fd holder, and the client goes on. No operation may
// fail, none may hang (each round must see progress within a bounded
// wait), every fsynced byte must be in the file at the end, and the
// holder must exit once the mount is unmounted and the gateway stopped.
// Each crash must be reported to the client exactly once, as Linux
// reports a writeback error: the first fsync through its handle after
// the crash fails with EIO (it writes the block again). The client's
// longest write+fsync+read per crash is logged.
func TestCrashResumeFUSE(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir, "--fuse-resume")
	mnt := g.mountVolume("t/fs", "fs", "64M")
	dev := deviceOfPath(t, mnt)
	t.Cleanup(func() {
		if t.Failed() {
			// Nobody may serve the mount: end its connection, or the
			// removal of the test's directories waits on it forever.
			os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(dev)), []byte("1"), 0)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	w := startCrashWorker(t, mnt)
	w.progress(t, g, "IO before the first kill")
	var longest []string
	for r := 1; r <= 10; r++ {
		w.longest.Store(0)
		g.kill()
		g.restart()
		testwait.For(t, fmt.Sprintf("round %d: the new gateway resumes the mount", r), func() bool {
			b, _ := os.ReadFile(filepath.Join(dir, "gateway.log"))
			return strings.Count(string(b), `msg="crash resume" fuse_mounts_resumed=1 fuse_sessions_held=1`) == r
		})
		w.progress(t, g, fmt.Sprintf("round %d: IO after the restart", r))
		if n := w.eio.Load(); n != int64(r) {
			t.Fatalf("round %d: %d fsyncs reported EIO so far, want one per crash", r, n)
		}
		longest = append(longest, fmt.Sprintf("%dms", w.longest.Load()))
	}
	w.stop(t, g)
	t.Logf("longest write+fsync+read per crash (kill, start, resume): %s", strings.Join(longest, " "))
	t.Logf("writes %d, stat+readdir loops %d", w.writes.Load(), w.lists.Load())
	g.mustSluice("umount", mnt)
	g.stop()
	holder := filepath.Join(dir, "fdholder.sock")
	testwait.For(t, "the fd holder exits once nothing is held", func() bool {
		_, err := os.Stat(holder)
		return os.IsNotExist(err)
	})
}

// TestCrashResumeResend: a write the gateway has read but not answered
// when it is killed (held by a QoS limit: four 32 KiB O_DSYNC writes at
// 16 KiB/s; the QoS queue's depth shows it is held) is sent again by the
// kernel once the next gateway resumes the mount (FUSE_NOTIFY_RESEND,
// Linux 6.9+): dd, the writing process, does not wait forever (the
// bounded wait turns that into a failure). Its fd was opened before the
// crash, so the fsync its O_DSYNC write makes next reports EIO (the new
// gateway cannot tell whether the dead one lost answered writes): dd
// must end with that error. The file holds whole blocks of what dd
// wrote.
func TestCrashResumeResend(t *testing.T) {
	dd := testtool.Path(t, "dd")
	dir := t.TempDir()
	g := startGateway(t, dir, "--fuse-resume")
	mnt := g.mountVolume("t/fs", "fs", "64M")
	dev := deviceOfPath(t, mnt)
	t.Cleanup(func() {
		if t.Failed() {
			os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(dev)), []byte("1"), 0)
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	src := filepath.Join(t.TempDir(), "src")
	want := make([]byte, 128<<10)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	g.mustSluice("qos", "set", "--volume", "t/fs", "--op", "write", "--bw", "16KiB", "--burst", "10ms")
	cmd := exec.Command(dd, "if="+src, "of="+filepath.Join(mnt, "f"), "bs=32k", "count=4", "oflag=dsync", "conv=fsync", "status=none")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	// Evidence that the gateway has read a write and holds it unanswered:
	// the QoS queue's depth.
	held := regexp.MustCompile(`"depth":\s*[1-9]`)
	testwait.For(t, "dd's write waits in the gateway's QoS queue", func() bool {
		out, code := g.sluice("qos", "list", "--json")
		return code == 0 && held.MatchString(out)
	})
	g.kill()
	select {
	case err := <-exited:
		t.Fatalf("dd ended while nobody served the mount: %v %s", err, out.String())
	default:
	}
	g.restart()
	select {
	case err := <-exited:
		if err == nil || !strings.Contains(out.String(), "Input/output error") {
			t.Fatalf("dd: %v %s\n%s", err, out.String(), g.logTail())
		}
		t.Logf("dd after the resume: %v %s", err, strings.TrimSpace(out.String()))
	case <-time.After(90 * time.Second):
		t.Fatalf("dd still waits 90 s after the resume: the request read by the dead gateway was not resent\n%s", g.logTail())
	}
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	if err != nil || len(got) < 32<<10 || len(got)%(32<<10) != 0 || !bytes.Equal(got, want[:len(got)]) {
		t.Fatalf("the file after the resent write: %v (%d bytes, a whole prefix of what dd wrote: %v)", err, len(got),
			len(got) <= len(want) && bytes.Equal(got, want[:len(got)]))
	}
	if strings.Contains(g.logTail(), "cannot resend") {
		t.Fatalf("the gateway could not resend:\n%s", g.logTail())
	}
}
