package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// fileClient keeps one file open on a mount and writes random 4 KiB
// blocks, each read back and checked at once; it keeps what it wrote
// (want) to check the whole file at the end. Every error is a failure:
// across a handover the client must see a pause, nothing else.
type fileClient struct {
	f        *os.File
	blocks   int
	want     []byte
	ops      atomic.Int64
	ioRecord // longest: a write+read
}

func newFileClient(t *testing.T, path string, blocks int) *fileClient {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c := &fileClient{f: f, blocks: blocks, want: make([]byte, blocks*4096)}
	// The file starts as zeros of its full length: the check at the end
	// then covers every block, written or not.
	if _, err := f.WriteAt(c.want, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return c
}

func (c *fileClient) run(stop <-chan struct{}) {
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
		if _, err := c.f.WriteAt(buf, off); err != nil {
			c.fail(fmt.Errorf("write %s at %d: %w", c.f.Name(), off, err))
			return
		}
		copy(c.want[off:], buf)
		if _, err := c.f.ReadAt(got, off); err != nil {
			c.fail(fmt.Errorf("read %s at %d: %w", c.f.Name(), off, err))
			return
		}
		if !bytes.Equal(got, buf) {
			c.fail(fmt.Errorf("read %s at %d: not what was written", c.f.Name(), off))
			return
		}
		c.observe(time.Since(start))
		c.ops.Add(1)
	}
}

// verify reads the whole file through the still open descriptor.
func (c *fileClient) verify() error {
	got := make([]byte, len(c.want))
	if _, err := c.f.ReadAt(got, 0); err != nil {
		return fmt.Errorf("read all of %s: %w", c.f.Name(), err)
	}
	if !bytes.Equal(got, c.want) {
		return fmt.Errorf("%s does not hold what was written", c.f.Name())
	}
	return nil
}

// lister stats a file and lists its directory until stop.
type lister struct {
	dir, name string
	ops       atomic.Int64
	err       atomic.Pointer[error]
}

func (l *lister) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if _, err := os.Stat(filepath.Join(l.dir, l.name)); err != nil {
			l.err.CompareAndSwap(nil, &err)
			return
		}
		es, err := os.ReadDir(l.dir)
		if err == nil && len(es) == 0 {
			err = fmt.Errorf("%s lists empty", l.dir)
		}
		if err != nil {
			l.err.CompareAndSwap(nil, &err)
			return
		}
		l.ops.Add(1)
	}
}

var adoptedRE = regexp.MustCompile(`msg="takeover complete" .*fuse_mounts_adopted=(\d+) fuse_mounts_handed=(\d+)`)

// TestHandoverFUSE: a gateway with two FUSE mounts, an fs volume and a
// block volume's image, is taken over 10 times in a row while this
// process (not the gateway) keeps files open on them: one file in a
// directory of the fs volume, one unlinked while open, and the image,
// each written with random
// blocks read back and checked at once, and a loop that stats the file
// and lists its directory. The mounts are handed over: no operation may
// fail, each new process must say it adopted both mounts, the mount
// points stay the same mounts, and at the end every byte of both files
// is what was written (read through the descriptors opened before the
// first handover). A file written and closed before the handovers reads
// back, and the last gateway unmounts both (it knows the mounts it
// adopted). The longest IO of each client per handover is logged.
func TestHandoverFUSE(t *testing.T) {
	testtool.Path(t, "fusermount3")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/fs", "fs", "64M")
	img := g.mountVolume("t/blk", "block", "16M")
	if err := os.MkdirAll(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	early := []byte("written and closed before the handovers\n")
	if err := os.WriteFile(filepath.Join(mnt, "d", "early"), early, 0o644); err != nil {
		t.Fatal(err)
	}
	devBefore := []uint64{deviceOfPath(t, mnt), deviceOfPath(t, img)}
	cs := []*fileClient{newFileClient(t, filepath.Join(mnt, "d", "data"), 256), newFileClient(t, filepath.Join(img, "image"), 1024),
		newFileClient(t, filepath.Join(mnt, "d", "tmp"), 64)}
	// The third file is unlinked while open (a temporary file): the new
	// processes must keep it (its orphan record) for the open descriptor.
	if err := os.Remove(filepath.Join(mnt, "d", "tmp")); err != nil {
		t.Fatal(err)
	}
	cl := &fuseClients{cs: cs, ls: &lister{dir: filepath.Join(mnt, "d"), name: "data"}, stop: make(chan struct{})}
	cl.start()
	defer cl.halt()
	progress := func() { t.Helper(); cl.progress(t, g) }
	const rounds = 10
	var longest [3][]time.Duration
	for i := 0; i < rounds; i++ {
		progress()
		for _, c := range cs {
			c.takeLongest()
		}
		g.takeover()
		progress()
		for j, c := range cs {
			longest[j] = append(longest[j], c.takeLongest())
		}
	}
	cl.halt()
	cl.check(t)
	for _, c := range cs {
		if err := c.verify(); err != nil {
			t.Fatal(err)
		}
	}
	checkFUSEHandoverLog(t, g, rounds)
	for i, dir := range []string{mnt, img} {
		if d := deviceOfPath(t, dir); d != devBefore[i] {
			t.Fatalf("%s is device %d after the handovers, was %d: not the same mount", dir, d, devBefore[i])
		}
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "d", "early")); err != nil || !bytes.Equal(got, early) {
		t.Fatalf("the file written before the handovers: %q, %v", got, err)
	}
	// The last gateway knows the mounts it adopted: they unmount
	// through it once the files are closed.
	for _, c := range cs {
		c.f.Close()
	}
	for _, dir := range []string{mnt, img} {
		g.mustSluice("umount", dir)
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), " "+dir+" ") {
			t.Fatalf("%s is still mounted after sluice umount", dir)
		}
	}
	// The unlinked file is purged once its last handle is released (by
	// the last process), and the volume checks clean.
	testwait.For(t, "the unlinked file is purged after its release", func() bool {
		out, code := g.sluice("fsck", "t/fs", "--json")
		return code == 0 && strings.Contains(out, `"orphans": 0`)
	})
	t.Logf("pauses (ms): %v", g.pauses())
	t.Logf("longest write+read per handover, fs file: %v", longest[0])
	t.Logf("longest write+read per handover, image: %v", longest[1])
	t.Logf("longest write+read per handover, unlinked file: %v", longest[2])
	t.Logf("%d, %d and %d checked writes+reads, %d stat+list rounds", cs[0].ops.Load(), cs[1].ops.Load(), cs[2].ops.Load(), cl.ls.ops.Load())
}

// fuseClients are TestHandoverFUSE's file clients and lister.
type fuseClients struct {
	cs      []*fileClient
	ls      *lister
	stop    chan struct{}
	stopped bool
	wg      sync.WaitGroup
}

func (cl *fuseClients) start() {
	for _, c := range cl.cs {
		cl.wg.Add(1)
		go func() { defer cl.wg.Done(); c.run(cl.stop) }()
	}
	cl.wg.Add(1)
	go func() { defer cl.wg.Done(); cl.ls.run(cl.stop) }()
}

// halt stops the clients and waits for them (once or more).
func (cl *fuseClients) halt() {
	if !cl.stopped {
		close(cl.stop)
		cl.stopped = true
	}
	cl.wg.Wait()
}

// check fails the test on any client's error.
func (cl *fuseClients) check(t *testing.T) {
	t.Helper()
	for _, c := range cl.cs {
		if err := c.failed(); err != nil {
			t.Fatalf("a client failed: %v", err)
		}
	}
	if p := cl.ls.err.Load(); p != nil {
		t.Fatalf("stat/list failed: %v", *p)
	}
}

// progress waits until every client has done more (50 IOs, 20 listings).
func (cl *fuseClients) progress(t *testing.T, g *gw) {
	t.Helper()
	want := make([]int64, len(cl.cs))
	for i, c := range cl.cs {
		want[i] = c.ops.Load() + 50
	}
	wantLs := cl.ls.ops.Load() + 20
	done := testwait.Poll(2*time.Minute, func() bool {
		cl.check(t)
		done := cl.ls.ops.Load() >= wantLs
		for i, c := range cl.cs {
			done = done && c.ops.Load() >= want[i]
		}
		return done
	})
	if !done {
		t.Fatalf("the clients make no progress after a handover\n%s", g.logTail())
	}
}

// checkFUSEHandoverLog: the gateways logged no warning, error or go-fuse
// complaint; each new process kept the unlinked open file and adopted
// both mounts.
func checkFUSEHandoverLog(t *testing.T, g *gw, rounds int) {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
	for _, l := range strings.Split(string(b), "\n") {
		for _, bad := range []string{"level=ERROR", "level=WARN", "Failed to read from fuse conn", "writer: Write", "unknown node", "panic"} {
			if strings.Contains(l, bad) {
				t.Errorf("the gateways logged: %s", l)
			}
		}
	}
	if n := strings.Count(string(b), "kept inodes unlinked while open"); n != rounds {
		t.Errorf("%d new processes kept the unlinked open file, want %d", n, rounds)
	}
	adopted := adoptedRE.FindAllStringSubmatch(string(b), -1)
	if len(adopted) != rounds {
		t.Fatalf("%d takeovers logged adopted mounts, want %d\n%s", len(adopted), rounds, g.logTail())
	}
	for i, m := range adopted {
		if m[1] != "2" || m[2] != "2" {
			t.Fatalf("handover %d: %s of %s mounts adopted, want 2 of 2", i+1, m[1], m[2])
		}
	}
}

// deviceOfPath is the st_dev of path.
func deviceOfPath(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint64(st.Dev)
}
