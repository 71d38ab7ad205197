package integration

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The durable-rename pattern (PostgreSQL's checkpoint files, SQLite's
// and RocksDB's manifests): write a temporary file, fsync it, rename it
// over the real name, fsync that. Several processes at once on a 2-core
// machine once lost the renamed file's length (issue 16): a close's
// asynchronous RELEASE raced the reopen for the fsync.

// durableMagic starts every checkpoint file the workers write.
const durableMagic = 0x534c4345 // "SLCE"

const durableWorkerEnv = "SLUICE_TEST_DURABLE_RENAME"

// durableRenameWorker runs in a child process (TestMain): it loops the
// pattern in dir for n iterations (0: until killed), checks each renamed
// file, and prints each iteration number once the final fsync returned.
func durableRenameWorker(dir string, n int) int {
	tmp, ck := filepath.Join(dir, "ck.tmp"), filepath.Join(dir, "ck")
	for i := 1; n == 0 || i <= n; i++ {
		if err := durableRenameOnce(tmp, ck, uint32(i)); err != nil {
			fmt.Fprintf(os.Stderr, "iteration %d: %v\n", i, err)
			return 1
		}
		fmt.Println(i)
	}
	return 0
}

func durableRenameOnce(tmp, ck string, i uint32) error {
	fd, err := syscall.Open(tmp, syscall.O_CREAT|syscall.O_EXCL|syscall.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	var word [4]byte
	binary.BigEndian.PutUint32(word[:], durableMagic)
	_, err1 := syscall.Write(fd, word[:])
	binary.BigEndian.PutUint32(word[:], i)
	_, err2 := syscall.Write(fd, word[:])
	if err := firstErr(err1, err2, syscall.Close(fd)); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := fsyncPath(tmp, syscall.O_RDWR); err != nil {
		return err
	}
	if err := syscall.Rename(tmp, ck); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	if err := fsyncPath(ck, syscall.O_RDWR); err != nil {
		return err
	}
	got, err := readCheckpoint(ck)
	if err != nil {
		return err
	}
	if got != i {
		return fmt.Errorf("%s holds iteration %d, want %d", ck, got, i)
	}
	return nil
}

func fsyncPath(path string, mode int) error {
	fd, err := syscall.Open(path, mode, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if err := firstErr(syscall.Fsync(fd), syscall.Close(fd)); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// readCheckpoint stats and reads a checkpoint file and returns its
// iteration number; a length other than 8 or a wrong magic is an error.
func readCheckpoint(path string) (uint32, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	if st.Size != 8 || len(b) != 8 {
		return 0, fmt.Errorf("%s: stat size %d, read %d bytes, want 8", path, st.Size, len(b))
	}
	if binary.BigEndian.Uint32(b) != durableMagic {
		return 0, fmt.Errorf("%s: bad magic %x", path, b[:4])
	}
	return binary.BigEndian.Uint32(b[4:]), nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// durableWorkers starts one worker process per directory and returns
// them with a function that reports each one's last printed iteration.
type durableWorker struct {
	cmd    *exec.Cmd
	dir    string
	stderr *os.File
	mu     sync.Mutex
	last   int
	lines  chan struct{} // a value per printed iteration (dropped when full)
	done   chan struct{} // closed when stdout reaches EOF
}

func startDurableWorker(t *testing.T, dir string, n int) *durableWorker {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o755))
	w := &durableWorker{dir: dir, lines: make(chan struct{}, 1), done: make(chan struct{})}
	w.cmd = exec.Command(os.Args[0], "-test.run=^$")
	w.cmd.Env = append(os.Environ(), durableWorkerEnv+"="+dir+":"+strconv.Itoa(n))
	var err error
	w.stderr, err = os.CreateTemp(t.TempDir(), "worker-stderr")
	must(t, err)
	w.cmd.Stderr = w.stderr
	out, err := w.cmd.StdoutPipe()
	must(t, err)
	must(t, w.cmd.Start())
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if i, err := strconv.Atoi(sc.Text()); err == nil {
				w.mu.Lock()
				w.last = i
				w.mu.Unlock()
				select {
				case w.lines <- struct{}{}:
				default:
				}
			}
		}
		io.Copy(io.Discard, out)
	}()
	return w
}

func (w *durableWorker) lastDone() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// wait waits for the worker to exit and returns its stderr and error.
func (w *durableWorker) wait() (string, error) {
	<-w.done
	err := w.cmd.Wait()
	b, _ := os.ReadFile(w.stderr.Name())
	return string(b), err
}

func dropCaches(t *testing.T) {
	t.Helper()
	syscall.Sync()
	must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200))
}

// TestDurableRenameConcurrent: four processes loop the pattern at once;
// every renamed file has its 8 bytes, also read back after the kernel's
// caches are dropped and after a restart of the gateway.
func TestDurableRenameConcurrent(t *testing.T) {
	const workers, iterations = 4, 300
	dir := t.TempDir()
	g := startGateway(t, dir)
	mnt := g.mountVolume("t/ck", "fs", "1G")
	var ws []*durableWorker
	for i := range workers {
		ws = append(ws, startDurableWorker(t, filepath.Join(mnt, fmt.Sprintf("d%d", i)), iterations))
	}
	for i, w := range ws {
		if stderr, err := w.wait(); err != nil {
			t.Errorf("worker %d after %d iterations: %v\n%s", i, w.lastDone(), err, stderr)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	check := func(when string) {
		for i, w := range ws {
			got, err := readCheckpoint(filepath.Join(w.dir, "ck"))
			if err != nil || got != iterations {
				t.Fatalf("%s: worker %d's checkpoint: iteration %d, %v; want %d", when, i, got, err, iterations)
			}
		}
	}
	dropCaches(t)
	check("after drop_caches")
	fsckClean(t, g, "t/ck")
	g.stop()
	g.restart()
	g.mustSluice("mount", "t/ck", mnt)
	check("after a restart")
}

// TestDurableRenameCrash: the gateway is killed while four processes
// loop the pattern. After a restart every worker's checkpoint is whole
// (8 bytes, the right magic) and at least as new as the last iteration
// whose final fsync returned before the kill.
func TestDurableRenameCrash(t *testing.T) {
	const workers = 4
	dir := t.TempDir()
	g := startGateway(t, dir)
	mnt := g.mountVolume("t/ck", "fs", "1G")
	var ws []*durableWorker
	for i := range workers {
		ws = append(ws, startDurableWorker(t, filepath.Join(mnt, fmt.Sprintf("d%d", i)), 0))
	}
	// Evidence, not a timer: every worker has completed 25 iterations.
	deadline := time.Now().Add(2 * time.Minute)
	for i, w := range ws {
		for w.lastDone() < 25 {
			select {
			case <-w.lines:
			case <-w.done:
				stderr, err := w.wait()
				t.Fatalf("worker %d stopped after %d iterations: %v\n%s", i, w.lastDone(), err, stderr)
			case <-time.After(time.Until(deadline)):
				t.Fatalf("worker %d completed %d iterations in 2 minutes", i, w.lastDone())
			}
		}
	}
	g.kill()
	durable := make([]int, workers)
	for i, w := range ws {
		w.cmd.Process.Kill()
		w.wait()                  // every line it printed is read
		durable[i] = w.lastDone() // printed only after the final fsync returned
	}
	g.restart()
	g.mustSluice("umount", mnt) // the dead mount of the killed gateway
	g.mustSluice("mount", "t/ck", mnt)
	fsckClean(t, g, "t/ck")
	for i, w := range ws {
		got, err := readCheckpoint(filepath.Join(w.dir, "ck"))
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
		if int(got) < durable[i] {
			t.Fatalf("worker %d: checkpoint of iteration %d, but iteration %d was fsynced before the kill", i, got, durable[i])
		}
		t.Logf("worker %d: checkpoint %d, %d fsynced before the kill", i, got, durable[i])
	}
}
