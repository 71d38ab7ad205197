package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// SIGKILL while files grow from a few KiB (short chunks: a file's last
// chunk takes only the units its data needs) to many chunks by small
// appends, each of which re-places the file's last chunk by copy-on-write
// into a bigger extent. After a restart, fsck and scrub are clean and
// every file holds at least the bytes of its last fsync.
func TestFSCrashGrowingShortChunks(t *testing.T) {
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/grow", "fs", "1G")
	var mu sync.Mutex
	last := map[string][]byte{} // each file's bytes at its last fsync
	fsyncs := 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			for i := 0; ; i++ {
				name := filepath.Join(mnt, fmt.Sprintf("w%d-%d", w, i))
				f, err := os.Create(name)
				if err != nil {
					return
				}
				var data []byte
				// Grow to about three and a half 64 KiB chunks in appends
				// of 1..12 KiB, fsyncing after most of them.
				for len(data) < 230<<10 {
					select {
					case <-stop:
						f.Close()
						return
					default:
					}
					piece := make([]byte, 1+r.IntN(12<<10))
					for j := range piece {
						piece[j] = byte(r.Uint32())
					}
					if _, err := f.Write(piece); err != nil {
						f.Close()
						return
					}
					data = append(data, piece...)
					if r.IntN(4) == 0 {
						continue // unsynced
					}
					if f.Sync() != nil {
						f.Close()
						return
					}
					mu.Lock()
					last[name] = bytes.Clone(data)
					fsyncs++
					mu.Unlock()
				}
				f.Close()
			}
		}(w)
	}
	// Kill once enough appends were made durable, however fast the
	// machine is.
	const enough = 400
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return fsyncs
	}
	if !testwait.Poll(2*time.Minute, func() bool { return count() >= enough }) {
		t.Fatalf("only %d fsyncs in 2 minutes; the appends did not run", count())
	}
	g.kill()
	close(stop)
	wg.Wait()

	g.restart()
	g.mustSluice("umount", mnt) // the dead mount of the killed gateway
	g.mustSluice("mount", "t/grow", mnt)
	fsckClean(t, g, "t/grow")
	var scrub struct {
		Short int `json:"short"`
		Bad   []any
	}
	out := g.mustSluice("scrub", "t/grow", "--json")
	if err := json.Unmarshal([]byte(out), &scrub); err != nil {
		t.Fatalf("scrub output: %v\n%s", err, out)
	}
	if len(scrub.Bad) != 0 {
		t.Fatalf("scrub after the crash: %s", out)
	}
	if scrub.Short == 0 {
		t.Fatalf("no short chunks after the crash: the files' tails were not stored short\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	multi := 0
	for name, want := range last {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("fsynced file lost: %v", err)
		}
		if len(got) < len(want) || !bytes.Equal(got[:len(want)], want) {
			t.Fatalf("%s: %d bytes after the crash, its last fsync had %d; they differ", name, len(got), len(want))
		}
		if len(want) > 64<<10 {
			multi++
		}
	}
	if multi == 0 {
		t.Fatal("no file grew past one chunk before the kill")
	}
	t.Logf("%d fsyncs; %d files intact after SIGKILL (%d past one chunk); %d short chunks", fsyncs, len(last), multi, scrub.Short)
}
