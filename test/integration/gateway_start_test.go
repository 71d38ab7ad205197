package integration

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
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

// startFails runs `sluice gateway` with args, expects exit 4 and returns
// its output.
func startFails(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(sluiceBin, append([]string{"gateway"}, args...)...)
	done := make(chan struct{})
	time.AfterFunc(time.Minute, func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
		}
	})
	out, err := cmd.CombinedOutput()
	close(done)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 {
		t.Fatalf("gateway %v: %v, want exit 4:\n%s", args, err, out)
	}
	return string(out)
}

// TestGatewayChecksBeforeCreating: a start that cannot succeed (the NBD
// port taken, the metrics port taken, another gateway on the data
// directory) says why and leaves nothing behind: no pool file created,
// a running gateway's pool not grown (issue 16).
func TestGatewayChecksBeforeCreating(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer busy.Close()
	dir := t.TempDir()
	out := startFails(t, "--data-dir", dir, "--nbd-listen", busy.Addr().String())
	if !strings.Contains(out, "NBD listen on "+busy.Addr().String()) {
		t.Errorf("start with the NBD port taken: %q", out)
	}
	out = startFails(t, "--data-dir", dir, "--nbd-listen", "", "--metrics-listen", busy.Addr().String())
	if !strings.Contains(out, "metrics listen") {
		t.Errorf("start with the metrics port taken: %q", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "pool")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed start left a pool file: %v", err)
	}

	g := startGateway(t, dir)
	var before syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(dir, "pool"), &before))
	out = startFails(t, "--data-dir", dir, "--nbd-listen", "", "--api-socket", filepath.Join(t.TempDir(), "other.sock"), "--pool-size", "128G")
	if !strings.Contains(out, "already using data directory") || strings.Contains(out, "badger") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("second gateway with another API socket: want one line naming the data directory, got %q", out)
	}
	var after syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(dir, "pool"), &after))
	if after.Size != before.Size {
		t.Errorf("the refused gateway changed the running gateway's pool from %d to %d bytes", before.Size, after.Size)
	}
	g.mustSluice("volume", "list") // the first one still serves
}

// TestNBDListsBlockVolumesOnly: fs volumes are not NBD exports; a client
// that names one is told what it is.
func TestNBDListsBlockVolumesOnly(t *testing.T) {
	testtool.Need(t, "nbdinfo", "qemu-io")
	g := startGateway(t, t.TempDir())
	g.mustSluice("volume", "create", "t/blk", "--size", "64M")
	g.mustSluice("volume", "create", "t/files", "--size", "64M", "--kind", "fs")
	var info nbdinfoJSON
	out := run(t, time.Minute, "nbdinfo", "--list", "--json", "nbd+unix://?socket="+g.nbdSock)
	must(t, json.Unmarshal([]byte(out), &info))
	if len(info.Exports) != 1 || info.Exports[0].Name != "t/blk" {
		t.Fatalf("export list %+v, want t/blk alone", info.Exports)
	}
	// qemu shows the server's message ("server reported: ...").
	b, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4k", g.uri("t/files")).CombinedOutput()
	if err == nil || !strings.Contains(string(b), "fs volume") {
		t.Fatalf("qemu-io of an fs volume: %v %q; want a refusal saying it is an fs volume", err, b)
	}
}

// TestGatewayHelp: flag help shows placeholders, not command names.
func TestGatewayHelp(t *testing.T) {
	out, err := exec.Command(sluiceBin, "gateway", "--help").CombinedOutput()
	must(t, err)
	if strings.Contains(string(out), "--attach-method sluice attach") {
		t.Errorf("gateway --help shows the attach method's placeholder as a command:\n%s", out)
	}
}

// TestKeyringReload: the README's encryption example on a gateway whose
// keyring lacks the tenant fails with what to do; after the key line is
// added, `sluice keyring reload` (or SIGHUP) puts it in use without a
// restart. A reload that drops a key is refused.
func TestKeyringReload(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(t.TempDir(), "keyring")
	must(t, os.WriteFile(keyring, nil, 0o600))
	g := startGateway(t, dir, "--keyring", keyring)
	g.mustSluice("volume", "create", "acme/db", "--size", "1G")
	g.mustSluice("volume", "create", "globex/db", "--size", "1G")
	policy := func(ref string) string {
		return "FOR VOLUME " + ref + " DO SET compression WITH algo=zstd, SET encryption"
	}
	out, code := g.sluice("policy", "add", policy("acme/db"))
	if code == 0 || !strings.Contains(out, "keyring") {
		t.Fatalf("encryption without a key: exit %d %q", code, out)
	}
	key := func(tenant string) string {
		k := make([]byte, 32)
		rand.Read(k)
		return tenant + " " + base64.StdEncoding.EncodeToString(k) + "\n"
	}
	acme := key("acme")
	must(t, os.WriteFile(keyring, []byte(acme), 0o600))
	if out := g.mustSluice("keyring", "reload"); !strings.Contains(out, "acme") {
		t.Errorf("keyring reload printed %q", out)
	}
	g.mustSluice("policy", "add", policy("acme/db"))

	// SIGHUP does the same.
	must(t, os.WriteFile(keyring, []byte(acme+key("globex")), 0o600))
	must(t, g.cmd.Process.Signal(syscall.SIGHUP))
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(g.mustSluice("keyring", "list"), "globex") {
		if time.Now().After(deadline) {
			t.Fatalf("SIGHUP did not reload the keyring:\n%s", g.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.mustSluice("policy", "add", policy("globex/db"))

	must(t, os.WriteFile(keyring, []byte(acme), 0o600))
	if out, code := g.sluice("keyring", "reload"); code == 0 || !strings.Contains(out, "globex") {
		t.Errorf("a reload that drops globex's key: exit %d %q; want a refusal naming the tenant", code, out)
	}
	if !strings.Contains(g.mustSluice("keyring", "list"), "globex") {
		t.Error("a refused reload changed the keyring in use")
	}
}

// TestGatewayDeviceChecks: a --device that does not exist is refused, not
// created; --pool-size 0 is a usage error; an existing pool file readable
// by others is made 0600 (issue 17).
func TestGatewayDeviceChecks(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(t.TempDir(), "sdx")
	out := startFails(t, "--data-dir", dir, "--nbd-listen", "", "--device", missing)
	if !strings.Contains(out, "does not exist") {
		t.Errorf("missing --device: %q", out)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing --device was created: %v", err)
	}
	b, err := exec.Command(sluiceBin, "gateway", "--data-dir", dir, "--pool-size", "0").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(b), "--pool-size") {
		t.Errorf("--pool-size 0: %v %q; want exit 2 naming the flag", err, b)
	}

	pool := filepath.Join(dir, "pool")
	must(t, os.WriteFile(pool, nil, 0o644))
	must(t, os.Chmod(pool, 0o644))
	g := startGateway(t, dir)
	fi, err := os.Stat(pool)
	must(t, err)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pool file mode %04o after start, want 0600", fi.Mode().Perm())
	}
	g.stop()

	// A named pool file keeps its size unless --pool-size says otherwise.
	named := filepath.Join(t.TempDir(), "named")
	must(t, os.WriteFile(named, nil, 0o600))
	must(t, os.Truncate(named, 1<<30))
	d2 := t.TempDir()
	g2 := &gw{t: t, dir: d2, api: filepath.Join(d2, "api.sock"), nbdSock: filepath.Join(d2, "nbd.sock"),
		args: []string{"gateway", "--data-dir", d2, "--nbd-listen", "", "--device", named}} // no --pool-size
	g2.start()
	g2.stop()
	if fi, err := os.Stat(named); err != nil || fi.Size() != 1<<30 {
		t.Errorf("a named pool file of 1 GiB has %d bytes after a start without --pool-size (%v)", fi.Size(), err)
	}
}

// TestPprofOptIn: /debug/pprof is served on --metrics-listen only with
// --pprof; /metrics always.
func TestPprofOptIn(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		must(t, err)
		addr := l.Addr().String()
		l.Close()
		args := []string{"--metrics-listen", addr}
		if pprof {
			args = append(args, "--pprof")
		}
		g := startGateway(t, t.TempDir(), args...)
		get := func(path string) int {
			resp, err := http.Get("http://" + addr + path)
			must(t, err)
			resp.Body.Close()
			return resp.StatusCode
		}
		if code := get("/metrics"); code != 200 {
			t.Errorf("/metrics: %d", code)
		}
		want := 404
		if pprof {
			want = 200
		}
		if code := get("/debug/pprof/"); code != want {
			t.Errorf("--pprof=%v: /debug/pprof/ answered %d, want %d", pprof, code, want)
		}
		g.stop()
	}
}

// TestGatewayRefusesDamagedMetadata: 16 random bytes in a metadata table
// stop the next start (exit 4, a message naming the damage), instead of
// serving a volume whose chunk maps silently shrank (issue 17).
func TestGatewayRefusesDamagedMetadata(t *testing.T) {
	testtool.Need(t, "qemu-io")
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.mustSluice("volume", "create", "t/v", "--size", "256M")
	run(t, 2*time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 200M", g.uri("t/v"))
	g.stop() // badger writes its tables
	ssts, _ := filepath.Glob(filepath.Join(dir, "meta", "*.sst"))
	if len(ssts) == 0 {
		t.Fatal("no metadata table after a clean stop")
	}
	f, err := os.OpenFile(ssts[0], os.O_WRONLY, 0)
	must(t, err)
	fi, err := f.Stat()
	must(t, err)
	junk := make([]byte, 16)
	rand.Read(junk)
	_, err = f.WriteAt(junk, fi.Size()/3)
	must(t, err)
	f.Close()
	out := startFails(t, g.args[1:]...)
	if !strings.Contains(out, "metadata is damaged") || strings.Contains(out, "goroutine") {
		t.Fatalf("start on a damaged table: want a clear refusal, got:\n%s", out)
	}
}
