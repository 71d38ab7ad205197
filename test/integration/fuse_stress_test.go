package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// A bounded stress-ng run of the filesystem class on the mount finishes
// with no failures, and fsck is clean afterwards.
func TestStressNGFilesystem(t *testing.T) {
	testtool.Need(t, "stress-ng")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/stress", "fs", "4G")
	work := filepath.Join(mnt, "sng")
	must(t, os.Mkdir(work, 0o755))
	// Every stressor of the class, one after another, 1 s each (about a
	// minute), verifying data where the stressor can. binderfs stresses
	// the Android binder device, not the filesystem under test (and this
	// kernel has none). stress-ng exits non-zero if any stressor fails.
	//
	// It runs in a mount namespace of its own without the other FUSE
	// mounts: its fanotify stressor marks (statfs) every mount and its
	// getdent stressor walks directories, and a mount of another test
	// paused or killed on purpose (handover, crash tests) would hold them
	// up. The namespace is private: what it unmounts stays mounted for
	// everyone else.
	only := `awk -v keep="$1" '$3 ~ /^fuse/ && $2 != keep {print $2}' /proc/self/mounts |
		while read -r m; do umount -l "$m"; done; shift; exec "$@"`
	out := g.run(10*time.Minute, "unshare", "--mount", "--propagation", "private", "sh", "-c", only, "sh", mnt,
		"stress-ng", "--class", "filesystem", "--sequential", "1", "--exclude", "binderfs",
		"--timeout", "1s", "--verify", "--temp-path", work, "--metrics-brief")
	if !strings.Contains(out, "successful run completed") || strings.Contains(out, "unsuccessful") {
		t.Fatalf("stress-ng did not report success:\n%s\ngateway log:\n%s", out, g.logTail())
	}
	t.Logf("stress-ng summary:\n%s", tail(out, 12))
	fsckClean(t, g, "t/stress")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fio writes and verifies files in the mount, random and sequential.
func TestFioVerifyOnMount(t *testing.T) {
	testtool.Need(t, "fio")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/fio", "fs", "2G")
	for _, job := range [][]string{
		{"--name=rand", "--rw=randwrite", "--bs=4k", "--iodepth=16", "--ioengine=io_uring", "--size=64M", "--numjobs=2"},
		{"--name=seq", "--rw=write", "--bs=1M", "--ioengine=psync", "--size=128M"},
		{"--name=direct", "--rw=randrw", "--bs=64k", "--direct=1", "--ioengine=io_uring", "--iodepth=8", "--size=64M"},
	} {
		args := append([]string{"--directory=" + mnt, "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
			"--fsync_on_close=1", "--output-format=terse"}, job...)
		g.run(5*time.Minute, "fio", args...)
	}
	fsckClean(t, g, "t/fio")
}

// SIGKILL during a create/write/rename/unlink storm: after a restart the
// volume is consistent and every file fsynced before the kill is intact.
func TestFSCrashDuringStorm(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	mnt := g.mountVolume("t/crash", "fs", "1G")
	type file struct {
		name string
		sum  [32]byte
	}
	var mu sync.Mutex
	var synced []file
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			sub := filepath.Join(mnt, fmt.Sprintf("w%d", w))
			if os.Mkdir(sub, 0o755) != nil {
				return
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// A durable file...
				data := make([]byte, 1000+i%7*40000)
				rand.Read(data)
				name := filepath.Join(sub, fmt.Sprintf("keep%d", i))
				f, err := os.Create(name)
				if err != nil {
					return
				}
				if _, err := f.Write(data); err != nil || f.Sync() != nil {
					f.Close()
					return
				}
				f.Close()
				mu.Lock()
				synced = append(synced, file{name, sha256.Sum256(data)})
				mu.Unlock()
				// ...and churn that is never synced.
				tmp := filepath.Join(sub, fmt.Sprintf("tmp%d", i))
				if os.WriteFile(tmp, data[:500], 0o644) != nil {
					return
				}
				os.Rename(tmp, filepath.Join(sub, fmt.Sprintf("moved%d", i%5)))
				os.Remove(filepath.Join(sub, fmt.Sprintf("moved%d", (i+2)%5)))
			}
		}(w)
	}
	// Kill once the storm has synced this many files, however fast the
	// machine is (a quiet one takes a second or two).
	const enough = 1000 // as docs/FUSE.md says
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(synced)
	}
	for deadline := time.Now().Add(2 * time.Minute); count() < enough; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d files synced in 2 minutes; the storm did not run", count())
		}
	}
	g.kill()
	close(stop)
	wg.Wait()

	g.restart()
	g.mustSluice("umount", mnt) // the dead mount of the killed gateway
	g.mustSluice("mount", "t/crash", mnt)
	fsckClean(t, g, "t/crash")
	mu.Lock()
	defer mu.Unlock()
	if len(synced) < 20 {
		t.Fatalf("only %d files synced before the kill; the storm did not run", len(synced))
	}
	for _, f := range synced {
		got, err := os.ReadFile(f.name)
		if err != nil {
			t.Fatalf("fsynced file lost: %v", err)
		}
		if sha256.Sum256(got) != f.sum {
			t.Fatalf("fsynced file %s has different content after the crash", f.name)
		}
	}
	t.Logf("%d fsynced files intact after SIGKILL", len(synced))
}

// A QoS file rule (glob) limits the files it names and not the others.
func TestQoSFileRuleOnMount(t *testing.T) {
	testtool.Need(t, "fio")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/q", "fs", "1G")
	g.mustSluice("qos", "set", "--volume", "t/q", "--file", "*.log", "--iops", "200")
	job := func(name string) fioResult {
		return fioFile(t, filepath.Join(mnt, name))
	}
	res := together(t, func() fioResult { return job("a.log") }, func() fioResult { return job("b.dat") })
	logIOPS, datIOPS := res[0].WriteIOPS, res[1].WriteIOPS
	t.Logf("*.log limited to 200 IOPS: a.log %.0f IOPS, b.dat %.0f IOPS", logIOPS, datIOPS)
	if !within(logIOPS, 200, 0.1) {
		t.Errorf("a.log ran at %.0f IOPS, want 200±10%%", logIOPS)
	}
	if datIOPS < 2*200 {
		t.Errorf("b.dat ran at %.0f IOPS: the *.log rule throttled it", datIOPS)
	}
}

// fioFile runs 4 s of 4 KiB random direct writes on one file.
func fioFile(t *testing.T, file string) fioResult {
	return fioRun(t, "--filename="+file, "--size=32M", "--rw=randwrite", "--bs=4k",
		"--direct=1", "--ioengine=io_uring", "--iodepth=8", "--time_based", "--runtime=4")
}
