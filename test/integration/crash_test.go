package integration

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// TestCrashKeepsFlushedData writes and flushes a known pattern, SIGKILLs
// the gateway while fio writes elsewhere on the same volume, restarts it and
// checks every flushed byte — 20 times, each round adding a region, so the
// last round checks all 20.
func TestCrashKeepsFlushedData(t *testing.T) {
	testtool.Need(t, "qemu-io", "fio")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/crash", "1G")
	uri := g.uri("acme/crash")
	var flushed []region
	var churned int64
	r := rand.New(rand.NewPCG(1, 2))
	const rounds = 20
	for i := 0; i < rounds; i++ {
		// A flushed region in the first 512 MiB: unaligned offset and length,
		// so chunk edges and partial first writes are covered.
		reg := region{off: int64(i)*24*MiB + r.Int64N(MiB), length: 1 + r.Int64N(3*MiB), pat: 1 + i}
		qemuIO(t, uri, fmt.Sprintf("write -P %d %d %d", reg.pat, reg.off, reg.length), "flush")
		flushed = append(flushed, reg)

		// Unflushed writes in the second half while the gateway dies.
		churned += killDuringChurn(t, g, "acme/crash", (8+r.Int64N(24))*MiB)
		verifyFlushed(t, uri, flushed)
	}
	// The churn was writing when the gateway died (killDuringChurn kills
	// only once fio's bytes have reached the gateway). Unflushed writes
	// survive a crash only where a background sync made them durable
	// before it, which on a loaded machine may be little: some must have.
	var flushedBytes int64
	for _, f := range flushed {
		flushedBytes += f.length
	}
	st := g.stats()
	t.Logf("the volume holds %d bytes, %d of them flushed; fio wrote %d bytes before the kills", st.Volumes[0].Allocated, flushedBytes, churned)
	if st.Volumes[0].Allocated < flushedBytes+8*MiB {
		t.Fatalf("volume holds %d bytes, barely more than the %d flushed: none of fio's %d bytes written before the kills became durable",
			st.Volumes[0].Allocated, flushedBytes, churned)
	}
}

// TestCrashWithCompressionPolicy: the same check with every write going
// through compression and a checksum (copy-on-write of every chunk): after
// each SIGKILL every flushed byte reads back, no chunk fails verification,
// and the metadata is consistent.
func TestCrashWithCompressionPolicy(t *testing.T) {
	testtool.Need(t, "qemu-io", "fio")
	g := startGateway(t, t.TempDir())
	crashWithPolicy(t, g, "acme/cz", "SET compression WITH algo=zstd, SET checksum", 3, rand.New(rand.NewPCG(3, 4)))
}

// TestCrashWithEachFilter: one round of the same check per filter on its
// own (noop, lz4, aes, crc), each on its own volume of one gateway: the
// copy-on-write rewrites of issue 22 (pending records, noop chunks
// overwritten in place) under a SIGKILL.
func TestCrashWithEachFilter(t *testing.T) {
	testtool.Need(t, "qemu-io", "fio")
	g := startGateway(t, t.TempDir(), "--keyring", writeKeyring(t, t.TempDir(), "acme"))
	r := rand.New(rand.NewPCG(5, 6))
	for _, p := range []struct{ vol, policy string }{
		{"acme/noop", "SET noop"},
		{"acme/lz4", "SET compression WITH algo=lz4"},
		{"acme/aes", "SET encryption"},
		{"acme/crc", "SET checksum"},
	} {
		crashWithPolicy(t, g, p.vol, p.policy, 1, r)
	}
}

// crashWithPolicy creates volume ref under policy (the text after DO) and
// runs rounds of: a flushed write, unflushed churn killed by a SIGKILL, a
// restart, then every flushed byte read back, scrub and fsck clean.
func crashWithPolicy(t *testing.T, g *gw, ref, policy string, rounds int, r *rand.Rand) {
	t.Helper()
	g.createVolume(ref, "1G")
	g.mustSluice("policy", "add", "FOR VOLUME "+ref+" DO "+policy)
	uri := g.uri(ref)
	var flushed []region
	for i := 0; i < rounds; i++ {
		reg := region{off: int64(i)*24*MiB + r.Int64N(MiB), length: 1 + r.Int64N(3*MiB), pat: 1 + i}
		qemuIO(t, uri, fmt.Sprintf("write -P %d %d %d", reg.pat, reg.off, reg.length), "flush")
		flushed = append(flushed, reg)
		// Unflushed, compressible writes in the second half while the
		// gateway dies.
		killDuringChurn(t, g, ref, (16+r.Int64N(32))*MiB,
			"--buffer_compress_percentage=60", "--refill_buffers")
		verifyFlushed(t, uri, flushed)
		if out, code := g.sluice("scrub", ref); code != 0 {
			t.Fatalf("%s round %d: scrub after the crash: %s", ref, i, out)
		}
		if out, code := g.sluice("fsck", ref); code != 0 {
			t.Fatalf("%s round %d: fsck after the crash: %s", ref, i, out)
		}
	}
	for _, v := range g.stats().Volumes {
		if v.Ref == ref {
			t.Logf("%s holds %d bytes", ref, v.Allocated)
			if v.Allocated < 32*MiB/4 {
				t.Fatalf("%s holds %d bytes: fio's writes never landed", ref, v.Allocated)
			}
		}
	}
}

// region is a flushed write: pattern pat over [off, off+length).
type region struct {
	off, length int64
	pat         int
}

// killDuringChurn runs unflushed random writes (fio, QD16, the volume's
// second half, with extra fio arguments), SIGKILLs the gateway once it has
// written churn bytes of them, whatever the machine's speed, then
// restarts it.
func killDuringChurn(t *testing.T, g *gw, ref string, churn int64, extra ...string) int64 {
	t.Helper()
	args := append([]string{"--name=churn", "--ioengine=nbd", "--uri=" + g.uri(ref), "--thread",
		"--rw=randwrite", "--bsrange=4k-256k", "--iodepth=16", "--offset=512m", "--size=512m",
		"--time_based", "--runtime=60"}, extra...)
	fio := exec.Command("fio", args...)
	var out bytes.Buffer
	fio.Stdout, fio.Stderr = &out, &out
	start := g.doorWritten("nbd", ref)
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	if !testwait.Poll(50*time.Second, func() bool { return g.doorWritten("nbd", ref)-start >= churn }) {
		fio.Process.Kill()
		fio.Wait()
		t.Fatalf("fio wrote %d bytes in 50s, want %d before the kill\n%s", g.doorWritten("nbd", ref)-start, churn, out.String())
	}
	written := g.doorWritten("nbd", ref) - start
	g.kill()
	fio.Process.Kill()
	fio.Wait()
	g.restart()
	return written
}

// verifyFlushed reads every flushed region back with qemu-io.
func verifyFlushed(t *testing.T, uri string, flushed []region) {
	t.Helper()
	var cmds []string
	for _, f := range flushed {
		cmds = append(cmds, fmt.Sprintf("read -P %d %d %d", f.pat, f.off, f.length))
	}
	qemuIO(t, uri, cmds...)
}
