package integration

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"testing"
	"time"
)

// TestCrashKeepsFlushedData writes and flushes a known pattern, SIGKILLs
// the gateway while fio writes elsewhere on the same volume, restarts it and
// checks every flushed byte — 20 times, each round adding a region, so the
// last round checks all 20.
func TestCrashKeepsFlushedData(t *testing.T) {
	needTool(t, "qemu-io", "fio")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/crash", "1G")
	uri := g.uri("acme/crash")
	type region struct {
		off, length int64
		pat         int
	}
	var flushed []region
	r := rand.New(rand.NewPCG(1, 2))
	const rounds = 20
	for i := 0; i < rounds; i++ {
		// A flushed region in the first 512 MiB: unaligned offset and length,
		// so chunk edges and partial first writes are covered.
		reg := region{off: int64(i)*24*MiB + r.Int64N(MiB), length: 1 + r.Int64N(3*MiB), pat: 1 + i}
		qemuIO(t, uri, fmt.Sprintf("write -P %d %d %d", reg.pat, reg.off, reg.length), "flush")
		flushed = append(flushed, reg)

		// Unflushed writes in the second half while the gateway dies.
		fio := exec.Command("fio", "--name=churn", "--ioengine=nbd", "--uri="+uri, "--thread",
			"--rw=randwrite", "--bsrange=4k-256k", "--iodepth=16", "--offset=512m", "--size=512m",
			"--time_based", "--runtime=30")
		if err := fio.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(150+r.IntN(400)) * time.Millisecond)
		g.kill()
		fio.Process.Kill()
		fio.Wait()
		g.restart()

		var cmds []string
		for _, f := range flushed {
			cmds = append(cmds, fmt.Sprintf("read -P %d %d %d", f.pat, f.off, f.length))
		}
		qemuIO(t, uri, cmds...)
	}
	// The churn must really have been writing when the gateway died: the
	// second half of the volume holds data that nobody flushed.
	var flushedBytes int64
	for _, f := range flushed {
		flushedBytes += f.length
	}
	st := g.stats()
	if st.Volumes[0].Allocated < flushedBytes+64*MiB {
		t.Fatalf("volume holds %d bytes, barely more than the %d flushed: fio's writes never landed, so nothing was killed mid-write",
			st.Volumes[0].Allocated, flushedBytes)
	}
}
