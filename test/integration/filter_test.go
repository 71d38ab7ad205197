package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// marker is a plaintext that must never reach the pool file of an
// encrypted volume.
const marker = "SLUICE-PLAINTEXT-MARKER-7f3a9c\n"

// writeKeyring writes a keyring with keys for tenants, mode 0600.
func writeKeyring(t *testing.T, dir string, tenants ...string) string {
	t.Helper()
	var b strings.Builder
	for _, tenant := range tenants {
		k := make([]byte, 32)
		rand.Read(k)
		fmt.Fprintf(&b, "%s %s\n", tenant, base64.StdEncoding.EncodeToString(k))
	}
	path := filepath.Join(dir, "keyring")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// markerFile is n bytes of the marker repeated, for qemu-io write -s.
func markerFile(t *testing.T, dir string, n int) string {
	t.Helper()
	path := filepath.Join(dir, "marker")
	if err := os.WriteFile(path, bytes.Repeat([]byte(marker), n/len(marker)+1)[:n], 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// compressibleFile writes n bytes of text-like data (random words from a
// small vocabulary: zstd takes it to about a fifth) and returns its path.
func compressibleFile(t *testing.T, dir string, n int64) string {
	t.Helper()
	path := filepath.Join(dir, "data")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := mrand.New(mrand.NewPCG(3, 4))
	vocab := make([]string, 512)
	for i := range vocab {
		w := make([]byte, 3+r.IntN(8))
		for j := range w {
			w[j] = byte('a' + r.IntN(26))
		}
		vocab[i] = string(w)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	var written int64
	for written < n {
		w := vocab[r.IntN(len(vocab))]
		sep := " "
		if r.IntN(12) == 0 {
			sep = "\n"
		}
		s := w + sep
		if written+int64(len(s)) > n {
			s = s[:n-written]
		}
		bw.WriteString(s)
		written += int64(len(s))
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	return path
}

// poolFind returns the pool file offsets where needle occurs, reading only
// the file's data regions (the pool is sparse).
func (g *gw) poolFind(needle []byte) []int64 {
	g.t.Helper()
	f, err := os.Open(filepath.Join(g.dir, "pool"))
	if err != nil {
		g.t.Fatal(err)
	}
	defer f.Close()
	const seekData, seekHole = 3, 4
	var found []int64
	buf := make([]byte, 4<<20)
	for off := int64(0); ; {
		data, err := syscall.Seek(int(f.Fd()), off, seekData)
		if err != nil {
			break // ENXIO: no data past off
		}
		hole, err := syscall.Seek(int(f.Fd()), data, seekHole)
		if err != nil {
			g.t.Fatal(err)
		}
		for pos := data; pos < hole; {
			n, _ := f.ReadAt(buf[:min(int64(len(buf)), hole-pos+int64(len(needle)))], pos)
			for i := 0; ; {
				j := bytes.Index(buf[i:n], needle)
				if j < 0 {
					break
				}
				found = append(found, pos+int64(i+j))
				i += j + 1
			}
			pos += int64(len(buf))
		}
		off = hole
	}
	return found
}

// metrics fetches the gateway's Prometheus text from the API socket.
func (g *gw) metrics() string {
	g.t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", g.api)
	}}}
	resp, err := c.Get("http://sluice/metrics")
	if err != nil {
		g.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

type policyJSON struct {
	ID      uint64             `json:"id"`
	Active  bool               `json:"active"`
	Metrics map[string]float64 `json:"metrics"`
}

func (g *gw) policies() []policyJSON {
	g.t.Helper()
	var ps []policyJSON
	if err := json.Unmarshal([]byte(g.mustSluice("policy", "list", "--json")), &ps); err != nil {
		g.t.Fatal(err)
	}
	return ps
}

func (g *gw) allocated(ref string) int64 {
	g.t.Helper()
	for _, v := range g.stats().Volumes {
		if v.Ref == ref {
			return v.Allocated
		}
	}
	g.t.Fatalf("no volume %s in stats", ref)
	return 0
}

func fileSHA(t *testing.T, path string, n int64) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// TestCompressionThenEncryptionNBD: 256 MiB of compressible data through a
// zstd policy takes at most 40% of that in the pool and reads back; after
// switching the policy to encryption the old chunks still read back and new
// writes never put their plaintext in the pool file.
func TestCompressionThenEncryptionNBD(t *testing.T) {
	testtool.Need(t, "nbdcopy", "qemu-io")
	dir := t.TempDir()
	g := startGateway(t, dir, "--keyring", writeKeyring(t, t.TempDir(), "t"))
	g.createVolume("t/v", "512M")
	g.createVolume("t/plain", "64M")
	out := g.mustSluice("policy", "add", "FOR VOLUME t/v DO SET compression WITH algo=zstd")
	if !strings.Contains(out, "FOR VOLUME t/v DO SET compression WITH algo=zstd, level=3") {
		t.Fatalf("policy add printed:\n%s", out)
	}
	tmp := t.TempDir()
	const n = 256 * MiB
	src := compressibleFile(t, tmp, n)
	before := g.poolAllocated()
	start := time.Now()
	run(t, 5*time.Minute, "nbdcopy", "--flush", src, g.uri("t/v"))
	took := time.Since(start)
	used := g.poolAllocated() - before
	t.Logf("256 MiB through zstd in %v: pool file grew by %d bytes (%.1f%%), volume holds %d", took, used, 100*float64(used)/n, g.allocated("t/v"))
	if used > n*40/100 || g.allocated("t/v") > n*40/100 {
		t.Fatalf("compressed volume takes %d bytes of pool (volume says %d) for %d written: more than 40%%", used, g.allocated("t/v"), n)
	}
	dst := filepath.Join(tmp, "out")
	run(t, 5*time.Minute, "nbdcopy", g.uri("t/v"), dst)
	if fileSHA(t, dst, n) != fileSHA(t, src, n) {
		t.Fatal("data read back through NBD differs from what was written")
	}
	os.Remove(dst)

	// The marker detector works: plain chunks hold it verbatim.
	mk := markerFile(t, tmp, 64<<10)
	qemuIO(t, g.uri("t/plain"), fmt.Sprintf("write -s %s 0 64k", mk), "flush")
	if len(g.poolFind([]byte(marker))) == 0 {
		t.Fatal("marker written to a plain volume not found in the pool file: the check below would prove nothing")
	}
	g.mustSluice("volume", "delete", "t/plain")

	// Switch t/v to encryption only.
	g.mustSluice("policy", "delete", "1")
	g.mustSluice("policy", "add", "FOR VOLUME t/v DO SET encryption")
	const at = 300 * MiB
	qemuIO(t, g.uri("t/v"),
		fmt.Sprintf("write -s %s %d 64k", mk, at),
		fmt.Sprintf("write -s %s %d 64k", mk, 10*MiB+100), // rewrites compressed chunks, encrypted
		"flush")
	if offs := g.poolFind([]byte(marker)); len(offs) > 0 {
		t.Fatalf("plaintext marker found in the pool file at %v", offs)
	}
	// What t/v should hold now: src with the marker at 10 MiB + 100.
	mkb, _ := os.ReadFile(mk)
	sf, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	sf.WriteAt(mkb, 10*MiB+100)
	sf.Close()
	check := func(when string) {
		t.Helper()
		run(t, 5*time.Minute, "nbdcopy", g.uri("t/v"), dst)
		if fileSHA(t, dst, n) != fileSHA(t, src, n) {
			t.Fatalf("%s: old (compressed) chunks read back wrong", when)
		}
		f, err := os.Open(dst)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 64<<10)
		f.ReadAt(got, at)
		f.Close()
		if !bytes.Equal(got, mkb) {
			t.Fatalf("%s: the encrypted marker reads back wrong", when)
		}
		os.Remove(dst)
	}
	check("after the switch to encryption")
	if out, code := g.sluice("scrub", "t/v"); code != 0 {
		t.Fatalf("scrub: exit %d\n%s", code, out)
	}
	// After a restart everything still reads.
	g.stop()
	g.restart()
	qemuIO(t, g.uri("t/v"), fmt.Sprintf("read -P 0 %d 1M", at+MiB))
	check("after a restart")
}

// qemuIOFails runs qemu-io commands that are expected to fail with EIO.
func qemuIOFails(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "qemu-io", append(args, uri)...).CombinedOutput()
	return string(out)
}

// TestChecksumCorruption: a byte flipped in the pool file under a checksummed
// chunk makes its reads fail with EIO, scrub names the chunk, and the
// other chunks stay readable.
func TestChecksumCorruption(t *testing.T) {
	testtool.Need(t, "qemu-io")
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.createVolume("t/c", "64M")
	g.mustSluice("policy", "add", "FOR VOLUME t/c DO SET checksum")
	mk := markerFile(t, t.TempDir(), 64<<10)
	uri := g.uri("t/c")
	qemuIO(t, uri, "write -P 0x5a 0 1M", fmt.Sprintf("write -s %s 128k 64k", mk), "flush")
	offs := g.poolFind([]byte(marker))
	if len(offs) == 0 {
		t.Fatal("checksummed chunk (stored plain) not found in the pool file")
	}
	f, err := os.OpenFile(filepath.Join(dir, "pool"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, offs[0]+5)
	b[0] ^= 0x01
	f.WriteAt(b, offs[0]+5)
	f.Close()

	out := qemuIOFails(t, uri, "read 130k 4k")
	if !strings.Contains(out, "Input/output error") {
		t.Fatalf("read of the corrupt chunk did not fail with EIO:\n%s", out)
	}
	qemuIO(t, uri, "read -P 0x5a 0 128k", "read -P 0x5a 192k 832k")
	out, code := g.sluice("scrub", "t/c")
	if code != 1 || !strings.Contains(out, "1 bad") || !strings.Contains(out, "inode 0 chunk 2 (offset 131072") {
		t.Fatalf("scrub: exit %d\n%s", code, out)
	}
	var rep struct {
		Checksummed int `json:"checksummed"`
		Bad         []struct {
			Chunk uint64 `json:"chunk"`
		} `json:"bad"`
	}
	out, _ = g.sluice("scrub", "t/c", "--json")
	if err := json.Unmarshal([]byte(out[:strings.LastIndex(out, "}")+1]), &rep); err != nil || rep.Checksummed != 16 || len(rep.Bad) != 1 || rep.Bad[0].Chunk != 2 {
		t.Fatalf("scrub --json: %v\n%s", err, out)
	}
	log := g.logTail()
	if !strings.Contains(log, "chunk failed verification") || !strings.Contains(log, "volume=t/c") || !strings.Contains(log, "offset=131072") {
		t.Fatalf("the gateway did not log the mismatch with volume and offset:\n%s", log)
	}
}

// TestDynamicCache: a WHEN ... TRANSIENT cache policy turns on under a fio
// read load above its threshold and off within seconds after it stops.
func TestDynamicCache(t *testing.T) {
	testtool.Need(t, "qemu-io", "fio")
	g := startGateway(t, t.TempDir())
	g.createVolume("t/d", "256M")
	uri := g.uri("t/d")
	qemuIO(t, uri, "write -P 7 0 32M", "flush")
	g.mustSluice("policy", "add", "FOR VOLUME t/d WHEN read_iops > 200 DO SET cache WITH size=64MiB TRANSIENT")
	if ps := g.policies(); len(ps) != 1 || ps[0].Active {
		t.Fatalf("policy active before any load: %+v", ps)
	}
	waitFor := func(what string, limit time.Duration, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		for !cond() {
			if time.Since(start) > limit {
				t.Fatalf("%s: not within %v; policies %+v\n%s", what, limit, g.policies(), g.logTail())
			}
			time.Sleep(100 * time.Millisecond)
		}
		return time.Since(start)
	}
	fio := exec.Command("fio", "--name=hot", "--ioengine=nbd", "--uri="+uri, "--thread", "--rw=randread", "--bs=4k",
		"--iodepth=8", "--size=32m", "--time_based", "--runtime=8")
	var fout bytes.Buffer
	fio.Stdout, fio.Stderr = &fout, &fout
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	defer fio.Process.Kill()
	on := waitFor("cache on under load", 6*time.Second, func() bool { ps := g.policies(); return ps[0].Active })
	m := g.metrics()
	if !strings.Contains(m, `sluice_policy_active{kind="automation",policy="1",target="volume t/d"} 1`) ||
		!strings.Contains(m, `sluice_cache_bytes{tenant="t",volume="t/d"}`) {
		t.Fatalf("metrics while active:\n%s", grepLines(m, "sluice_policy_active", "sluice_cache"))
	}
	if err := fio.Wait(); err != nil {
		t.Fatalf("fio: %v\n%s", err, fout.String())
	}
	ps := g.policies()
	t.Logf("cache on %v after load began; read_iops at the last tick %.0f", on, ps[0].Metrics["read_iops"])
	off := waitFor("cache off after the load", 5*time.Second, func() bool { ps := g.policies(); return !ps[0].Active })
	t.Logf("cache off %v after the load stopped", off)
	m = g.metrics()
	if !strings.Contains(m, `sluice_policy_active{kind="automation",policy="1",target="volume t/d"} 0`) ||
		strings.Contains(m, "sluice_cache_bytes{") {
		t.Fatalf("metrics after the load:\n%s", grepLines(m, "sluice_policy_active", "sluice_cache"))
	}
	if !strings.Contains(g.mustSluice("policy", "list"), "inactive") {
		t.Fatal("policy list does not show the policy inactive")
	}
	qemuIO(t, uri, "read -P 7 0 32M")
}

func grepLines(text string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

// TestSpecialisationAndPipeline: with a tenant policy (compression) and a
// volume policy (encryption) the volume gets only encryption; a volume
// whose own policy compresses then encrypts gets both, undone in reverse.
func TestSpecialisationAndPipeline(t *testing.T) {
	testtool.Need(t, "nbdcopy", "qemu-io")
	g := startGateway(t, t.TempDir(), "--keyring", writeKeyring(t, t.TempDir(), "t"))
	for _, v := range []string{"t/tenantwide", "t/own", "t/pipe"} {
		g.createVolume(v, "64M")
	}
	g.mustSluice("policy", "add", "FOR TENANT t DO SET compression WITH algo=lz4")
	g.mustSluice("policy", "add", "FOR VOLUME t/own DO SET encryption")
	g.mustSluice("policy", "add", "FOR VOLUME t/pipe DO SET compression WITH algo=zstd, SET encryption")
	tmp := t.TempDir()
	const n = 16 * MiB
	src := compressibleFile(t, tmp, n)
	mk := markerFile(t, tmp, 64<<10)
	for _, v := range []string{"t/own", "t/pipe", "t/tenantwide"} {
		run(t, 2*time.Minute, "nbdcopy", "--flush", src, g.uri(v))
		qemuIO(t, g.uri(v), fmt.Sprintf("write -s %s 32M 64k", mk), "flush")
		// Encrypted volumes never hold the marker; lz4 (tenant-wide) keeps
		// a literal copy of it.
		if found := len(g.poolFind([]byte(marker))) > 0; found != (v == "t/tenantwide") {
			t.Fatalf("after writing the marker to %s: found in the pool: %v", v, found)
		}
	}
	alloc := map[string]int64{}
	for _, v := range []string{"t/tenantwide", "t/own", "t/pipe"} {
		alloc[v] = g.allocated(v)
	}
	t.Logf("allocated for %d bytes: %v", n+64<<10, alloc)
	if alloc["t/tenantwide"] > n*7/10 || alloc["t/pipe"] > n*45/100 { // lz4 takes this data to about half, zstd to a third
		t.Fatalf("compressing volumes hold too much: %v", alloc)
	}
	if alloc["t/own"] < n {
		t.Fatalf("t/own was compressed (it must get only its own policy, encryption): %v", alloc)
	}
	for _, v := range []string{"t/tenantwide", "t/own", "t/pipe"} {
		dst := filepath.Join(tmp, "out")
		run(t, 2*time.Minute, "nbdcopy", g.uri(v), dst)
		got, _ := os.ReadFile(dst)
		want, _ := os.ReadFile(src)
		mkb, _ := os.ReadFile(mk)
		if !bytes.Equal(got[:n], want) || !bytes.Equal(got[32*MiB:32*MiB+64<<10], mkb) {
			t.Fatalf("%s reads back wrong", v)
		}
		if out, code := g.sluice("scrub", v); code != 0 {
			t.Fatalf("scrub %s: %s", v, out)
		}
	}
}

// TestKeyring: a keyring with a bad mode or a malformed line stops the
// gateway at start (exit 4, one line naming the problem, no key material);
// a tenant without a key cannot get encryption.
func TestKeyring(t *testing.T) {
	dir := t.TempDir()
	kdir := t.TempDir()
	path := writeKeyring(t, kdir, "t")
	good, _ := os.ReadFile(path)
	start := func() (string, int) {
		cmd := exec.Command(sluiceBin, "gateway", "--data-dir", dir, "--nbd-listen", "", "--pool-size", "1G", "--keyring", path)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("gateway with a bad keyring did not fail: %v\n%s", err, out)
		return "", 0
	}
	os.Chmod(path, 0o644)
	out, code := start()
	if code != 4 || !strings.Contains(out, "mode 0644") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("keyring mode 0644: exit %d\n%s", code, out)
	}
	os.Chmod(path, 0o600)
	key := strings.Fields(string(good))[1]
	os.WriteFile(path, append(append([]byte{}, good...), []byte("u "+key[:20]+"\n")...), 0o600)
	out, code = start()
	if code != 4 || !strings.Contains(out, "line 2") || strings.Contains(out, key[:20]) || strings.Contains(out, key) {
		t.Fatalf("malformed keyring: exit %d\n%s", code, out)
	}
	os.WriteFile(path, good, 0o400)
	g := startGateway(t, dir, "--keyring", path)
	if strings.Contains(g.logTail(), key) {
		t.Fatal("the gateway logged key material")
	}
	g.createVolume("t/a", "16M")
	g.createVolume("u/a", "16M")
	g.mustSluice("policy", "add", "FOR VOLUME t/a DO SET encryption")
	out, code = g.sluice("policy", "add", "FOR TENANT u DO SET encryption")
	if code != 1 || !strings.Contains(out, `tenant "u"`) || !strings.Contains(out, "key") {
		t.Fatalf("encryption for a tenant without a key: exit %d\n%s", code, out)
	}
	out, code = g.sluice("policy", "add", "FOR VOLUME t/a DO SET encryption WITH algo")
	if code != 2 || !strings.Contains(out, "line 1, col") {
		t.Fatalf("syntax error: exit %d\n%s", code, out)
	}
	out, code = g.sluice("policy", "add", "FOR VOLUME t/a DO SET gzip")
	if code != 1 || !strings.Contains(out, "line 1, col 23") || !strings.Contains(out, "gzip") {
		t.Fatalf("unknown filter: exit %d\n%s", code, out)
	}
	if ps := g.policies(); len(ps) != 1 {
		t.Fatalf("refused policies were stored: %+v", ps)
	}
	for _, args := range [][]string{{"policy", "list", "--json"}, {"filter", "list", "--json"}, {"registry", "list", "--json"}} {
		if out := g.mustSluice(args...); strings.Contains(out, key) {
			t.Fatalf("%v returned key material", args)
		}
	}
	if strings.Contains(g.logTail(), key) {
		t.Fatal("the gateway logged key material")
	}
}
