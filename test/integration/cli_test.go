package integration

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/internal/testtool"
)

type volJSON struct {
	Ref       string `json:"ref"`
	Tenant    string `json:"tenant"`
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	Size      int64  `json:"size"`
	ChunkSize int64  `json:"chunk_size"`
	Allocated int64  `json:"allocated"`
}

func listVolumes(t *testing.T, g *gw) []volJSON {
	t.Helper()
	var vs []volJSON
	if err := json.Unmarshal([]byte(g.mustSluice("volume", "list", "--json")), &vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestCLIVolumeLifecycle(t *testing.T) {
	g := startGateway(t, t.TempDir())

	// The API socket is private to the gateway's user.
	if fi, err := os.Stat(g.api); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("API socket mode %v (err %v), want 0600", fi.Mode().Perm(), err)
	}
	out := g.mustSluice("volume", "create", "db", "--tenant", "acme", "--size", "10G")
	if !strings.Contains(out, "acme/db") {
		t.Fatalf("create output %q does not name acme/db", out)
	}
	g.mustSluice("volume", "create", "acme/logs", "--size", "512MiB", "--chunk-size", "1M")

	var v volJSON
	if err := json.Unmarshal([]byte(g.mustSluice("volume", "info", "acme/db", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if v.Ref != "acme/db" || v.Size != 10<<30 || v.Kind != "block" || v.ChunkSize != 64<<10 || v.Allocated != 0 {
		t.Fatalf("volume info: %+v", v)
	}
	table := g.mustSluice("volume", "list")
	for _, want := range []string{"VOLUME", "acme/db", "10GiB", "acme/logs", "512MiB", "1MiB"} {
		if !strings.Contains(table, want) {
			t.Fatalf("volume list table lacks %q:\n%s", want, table)
		}
	}
	g.mustSluice("volume", "resize", "acme/db", "--size", "20G")
	json.Unmarshal([]byte(g.mustSluice("volume", "info", "acme/db", "--json")), &v)
	if v.Size != 20<<30 {
		t.Fatalf("size after resize %d, want 20GiB", v.Size)
	}

	// Bad input: one line on stderr, non-zero exit, nothing changes.
	bad := []struct {
		args []string
		code int
		says string
	}{
		{[]string{"volume", "info", "nobody/db"}, 1, "not found"},
		{[]string{"volume", "info", "acme/nope"}, 1, "not found"},
		{[]string{"volume", "create", "x", "--tenant", "acme", "--size", "0"}, 1, "positive"},
		{[]string{"volume", "create", "x", "--tenant", "acme", "--size", "1000"}, 1, "multiple of 4096"},
		{[]string{"volume", "create", "x", "--tenant", "acme", "--size", "10Q"}, 2, "size"},
		{[]string{"volume", "create", "db", "--tenant", "acme", "--size", "1G"}, 1, "already exists"},
		{[]string{"volume", "create", "x", "--size", "1G"}, 2, "--tenant"},
		{[]string{"volume", "create", "x", "--tenant", "a b", "--size", "1G"}, 1, "tenant"},
		{[]string{"volume", "resize", "acme/db", "--size", "1G"}, 1, "cannot shrink from 20 GiB (21474836480 bytes) to 1 GiB (1073741824 bytes)"},
		{[]string{"volume", "create", "x", "--tenant", "acme", "--size", "100T"}, 1, "size 100 TiB (109951162777600 bytes)"},
		{[]string{"volume", "create", "x", "--tenant", "acme"}, 2, "--size is required"},
		{[]string{"volume", "resize", "acme/db"}, 2, "--size is required"},
		{[]string{"volume", "list", "--bogus"}, 2, "unknown flag --bogus"},
		{[]string{"volume", "resize", "acme/nope", "--size", "30G"}, 1, "not found"},
		{[]string{"volume", "delete", "acme/nope"}, 1, "not found"},
		{[]string{"volume", "delete", "acme"}, 2, "TENANT/NAME"},
		{[]string{"volume", "frobnicate"}, 2, ""},
	}
	for _, b := range bad {
		out, code := g.sluice(b.args...)
		if code != b.code || !strings.Contains(out, b.says) {
			t.Errorf("sluice %s: exit %d, output %q; want exit %d mentioning %q", strings.Join(b.args, " "), code, out, b.code, b.says)
		}
		if strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("sluice %s: error is not one line: %q", strings.Join(b.args, " "), out)
		}
	}
	vs := listVolumes(t, g)
	if len(vs) != 2 || vs[0].Ref != "acme/db" || vs[0].Size != 20<<30 || vs[1].Ref != "acme/logs" {
		t.Fatalf("volumes changed by refused commands: %+v", vs)
	}

	g.mustSluice("volume", "delete", "acme/logs")
	if vs := listVolumes(t, g); len(vs) != 1 {
		t.Fatalf("after delete: %+v", vs)
	}
	// Volumes persist across a restart.
	g.stop()
	g.restart()
	if vs := listVolumes(t, g); len(vs) != 1 || vs[0].Ref != "acme/db" || vs[0].Size != 20<<30 {
		t.Fatalf("after restart: %+v", vs)
	}
	stats := g.mustSluice("stats")
	if !strings.Contains(stats, "acme/db") {
		t.Fatalf("stats lacks the volume:\n%s", stats)
	}
}

func TestCLINoGateway(t *testing.T) {
	g := &gw{t: t, api: t.TempDir() + "/api.sock"}
	out, code := g.sluice("volume", "list")
	if code != 3 || !strings.Contains(out, "no gateway") {
		t.Fatalf("exit %d, %q; want exit 3 saying there is no gateway", code, out)
	}
}

func TestSecondGatewayRefused(t *testing.T) {
	dir := t.TempDir()
	startGateway(t, dir)
	out, err := exec.Command(sluiceBin, "gateway", "--data-dir", dir, "--nbd-listen", "").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(out), "already") {
		t.Fatalf("second gateway on the same data dir: %v: %s", err, out)
	}
}

// sluiceOut runs the CLI with exactly args (no --api-socket added) and
// returns stdout and stderr apart, and the exit code.
func sluiceOut(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr strings.Builder
	cmd := exec.Command(sluiceBin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running sluice %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// Usage errors exit 2 with one line on stderr that says how to get help,
// and print no help of their own.
func TestCLIUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"volume", "list", "--bogus"}, "sluice: unknown flag --bogus (run 'sluice volume list --help')"},
		{[]string{"--bogus", "stats"}, "sluice: unknown flag --bogus (run 'sluice --help')"},
		{[]string{"volume", "create", "db", "--tenant", "acme"}, "sluice: volume create: --size is required (run 'sluice volume create --help')"},
		{[]string{"volume", "resize", "acme/db"}, "sluice: volume resize: --size is required (run 'sluice volume resize --help')"},
		{[]string{"mount", "t/v", "/mnt", "--rw"}, "sluice: unknown flag --rw (run 'sluice mount --help')"},
		{[]string{"qos", "set", "--tenant", "t", "--priority", "high"}, "(run 'sluice qos set --help')"},
	} {
		stdout, stderr, code := sluiceOut(t, nil, c.args...)
		if code != 2 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.says) {
			t.Errorf("sluice %s: exit %d, stdout %q, stderr %q; want exit 2, nothing on stdout, one line saying %q",
				strings.Join(c.args, " "), code, stdout, stderr, c.says)
		}
	}
	if stdout, _, code := sluiceOut(t, nil, "volume", "create", "--help"); code != 0 || !strings.Contains(stdout, "--size") {
		t.Errorf("volume create --help: exit %d:\n%s", code, stdout)
	}
}

// --api-socket and --json work before the command and after it.
func TestCLIGlobalFlagsAfterCommand(t *testing.T) {
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/db", "1G")
	wrongEnv := []string{"SLUICE_API_SOCKET=" + filepath.Join(t.TempDir(), "none.sock")}
	for _, args := range [][]string{
		{"volume", "list", "--json", "--api-socket", g.api},
		{"volume", "list", "--api-socket=" + g.api, "--json"},
		{"--json", "volume", "list", "--api-socket", g.api},
		{"--api-socket", g.api, "volume", "list", "--json"},
		{"--json", "--api-socket", g.api, "volume", "list"},
	} {
		stdout, stderr, code := sluiceOut(t, wrongEnv, args...)
		var vs []volJSON
		if code != 0 || json.Unmarshal([]byte(stdout), &vs) != nil || len(vs) != 1 || vs[0].Ref != "acme/db" {
			t.Errorf("sluice %s: exit %d, %q %q; want the JSON list", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	stdout, _, code := sluiceOut(t, nil, "volume", "info", "acme/db", "--api-socket", g.api)
	if code != 0 || !strings.Contains(stdout, "VOLUME") {
		t.Errorf("volume info with --api-socket last: exit %d, %q", code, stdout)
	}
}

var snakeKey = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// checkJSONStyle fails on a key that is not snake_case or a duration in
// nanoseconds.
func checkJSONStyle(t *testing.T, what string, v any) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if !snakeKey.MatchString(k) || strings.HasSuffix(k, "_ns") {
				t.Errorf("%s: key %q is not snake_case with durations in _seconds", what, k)
			}
			checkJSONStyle(t, what, x)
		}
	case []any:
		for _, x := range v {
			checkJSONStyle(t, what, x)
		}
	}
}

// Every --json output is JSON in one style; commands that change something
// confirm it in one line, or in JSON.
func TestCLIJSONEverywhere(t *testing.T) {
	g := startGateway(t, t.TempDir())
	g.mustSluice("volume", "create", "acme/db", "--size", "1G")
	g.mustSluice("volume", "create", "acme/fs", "--size", "1G", "--kind", "fs")
	for _, args := range [][]string{
		{"volume", "create", "acme/tmp", "--size", "1G", "--json"},
		{"volume", "resize", "acme/tmp", "--size", "2G", "--json"},
		{"volume", "list", "--json"},
		{"volume", "info", "acme/db", "--json"},
		{"qos", "set", "--volume", "acme/db", "--bw", "10M", "--burst", "1500ms", "--reservation-iops", "100", "--json"},
		{"qos", "list", "--json"},
		{"stats", "--json"},
		{"fsck", "acme/fs", "--json"},
		{"policy", "add", "FOR VOLUME acme/db DO SET checksum", "--json"},
		{"policy", "list", "--json"},
		{"filter", "list", "--json"},
		{"registry", "set", "group", "g1", "acme", "--json"},
		{"registry", "list", "--json"},
		{"registry", "delete", "group", "g1", "--json"},
		{"virtio", "list", "--json"},
		{"policy", "delete", "1", "--json"},
		{"qos", "delete", "1", "--json"},
		{"volume", "delete", "acme/tmp", "--json"},
	} {
		stdout, stderr, code := sluiceOut(t, nil, append(args, "--api-socket", g.api)...)
		var v any
		if code != 0 || json.Unmarshal([]byte(stdout), &v) != nil {
			t.Errorf("sluice %s: exit %d, stdout %q, stderr %q; want JSON", strings.Join(args, " "), code, stdout, stderr)
			continue
		}
		checkJSONStyle(t, strings.Join(args[:2], " "), v)
	}

	// Durations are seconds; the stored rule keeps them across a restart.
	g.mustSluice("qos", "set", "--tenant", "acme", "--iops", "500", "--burst", "2s")
	g.stop()
	g.restart()
	var rules []struct {
		Limits struct {
			IOPS         float64 `json:"iops"`
			BurstSeconds float64 `json:"burst_seconds"`
		} `json:"limits"`
		Stats struct {
			AdmittedOps      *uint64  `json:"admitted_ops"`
			ThrottledSeconds *float64 `json:"throttled_seconds"`
			Classes          struct {
				Read *struct {
					WaitedSeconds *float64 `json:"waited_seconds"`
				} `json:"read"`
			} `json:"classes"`
		} `json:"stats"`
	}
	out := g.mustSluice("qos", "list", "--json")
	if err := json.Unmarshal([]byte(out), &rules); err != nil || len(rules) != 1 || rules[0].Limits.BurstSeconds != 2 ||
		rules[0].Limits.IOPS != 500 || rules[0].Stats.AdmittedOps == nil || rules[0].Stats.ThrottledSeconds == nil ||
		rules[0].Stats.Classes.Read == nil || rules[0].Stats.Classes.Read.WaitedSeconds == nil {
		t.Errorf("qos list --json after a restart: %v\n%s", err, out)
	}

	// volume delete confirms itself, in text and JSON.
	if out := g.mustSluice("volume", "delete", "acme/db"); strings.TrimSpace(out) != "deleted acme/db" {
		t.Errorf("volume delete printed %q", out)
	}
	var del map[string]any
	out = g.mustSluice("volume", "delete", "acme/fs", "--json")
	if json.Unmarshal([]byte(out), &del) != nil || del["volume"] != "acme/fs" || del["deleted"] != true {
		t.Errorf("volume delete --json printed %q", out)
	}
}

// Volumes may add up to more than the pool (thin provisioning): create and
// resize say so on stderr and in --json, and succeed.
func TestCLIOvercommitWarning(t *testing.T) {
	g := startGateway(t, t.TempDir()) // a 16 GiB pool
	type changed struct {
		Ref      string   `json:"ref"`
		Size     int64    `json:"size"`
		Warnings []string `json:"warnings"`
	}
	args := []string{"--api-socket", g.api, "volume", "create", "acme/small", "--size", "1G", "--json"}
	stdout, stderr, code := sluiceOut(t, nil, args...)
	var v changed
	if code != 0 || stderr != "" || json.Unmarshal([]byte(stdout), &v) != nil || v.Warnings == nil || len(v.Warnings) != 0 {
		t.Fatalf("create within the pool: exit %d, %q, stderr %q; want no warnings and an empty warnings array", code, stdout, stderr)
	}
	stdout, stderr, code = sluiceOut(t, nil, "--api-socket", g.api, "volume", "create", "acme/big", "--size", "512G")
	if code != 0 || !strings.Contains(stdout, "created acme/big") || strings.Count(stderr, "\n") != 1 ||
		!strings.Contains(stderr, "sluice: warning: the pool is overcommitted") || !strings.Contains(stderr, "513 GiB (550829555712 bytes)") {
		t.Errorf("512 GiB on a 16 GiB pool: exit %d, stdout %q, stderr %q; want it created with one warning line", code, stdout, stderr)
	}
	stdout, stderr, code = sluiceOut(t, nil, "--api-socket", g.api, "volume", "resize", "acme/small", "--size", "2G", "--json")
	if code != 0 || json.Unmarshal([]byte(stdout), &v) != nil || v.Size != 2<<30 || len(v.Warnings) != 1 ||
		!strings.Contains(v.Warnings[0], "overcommitted") || !strings.Contains(stderr, "warning") {
		t.Errorf("resize of an overcommitted pool: exit %d, %q, stderr %q; want one warning", code, stdout, stderr)
	}
}

// mount refuses a directory that is not empty unless --nonempty; umount
// confirms, and says in one line what to do when the mount is busy.
func TestCLIMountUmount(t *testing.T) {
	g := startGateway(t, t.TempDir())
	g.mustSluice("volume", "create", "t/fs", "--size", "256M", "--kind", "fs")
	full := t.TempDir()
	must(t, os.WriteFile(filepath.Join(full, "keep"), []byte("mine"), 0o644))
	out, code := g.sluice("mount", "t/fs", full)
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "not empty") || !strings.Contains(out, "--nonempty") {
		t.Errorf("mount on a non-empty directory: exit %d, %q; want one line refusing it and naming --nonempty", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(full, "keep")); err != nil || string(b) != "mine" {
		t.Fatalf("the refused directory changed: %q, %v", b, err)
	}
	g.mustSluice("mount", "t/fs", full, "--nonempty")
	if out := g.mustSluice("umount", full); strings.TrimSpace(out) != "unmounted "+full {
		t.Errorf("umount printed %q, want %q", out, "unmounted "+full)
	}
	if _, err := os.Stat(filepath.Join(full, "keep")); err != nil {
		t.Errorf("the directory's own file after the umount: %v", err)
	}

	mnt := t.TempDir()
	g.mustSluice("mount", "t/fs", mnt)
	f, err := os.Create(filepath.Join(mnt, "open"))
	if err != nil {
		t.Fatal(err)
	}
	out, code = g.sluice("umount", mnt)
	f.Close()
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "busy") || !strings.Contains(out, "fuser -m "+mnt) {
		t.Errorf("umount with a file open: exit %d, %q; want one line saying it is busy and how to find the users", code, out)
	}
	var done map[string]any
	out = g.mustSluice("umount", mnt, "--json")
	if json.Unmarshal([]byte(out), &done) != nil || done["dir"] != mnt || done["unmounted"] != true {
		t.Errorf("umount --json printed %q", out)
	}
}

// detach confirms, in text and JSON.
func TestCLIDetachConfirms(t *testing.T) {
	testtool.Need(t, "losetup")
	g := startGateway(t, t.TempDir(), "--attach-method", "loop")
	g.mustSluice("volume", "create", "t/disk", "--size", "64M")
	dev := strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	if out := g.mustSluice("detach", dev); strings.TrimSpace(out) != "detached "+dev {
		t.Errorf("detach printed %q, want %q", out, "detached "+dev)
	}
	dev = strings.TrimSpace(g.mustSluice("attach", "t/disk"))
	var done map[string]any
	out := g.mustSluice("detach", dev, "--json")
	if json.Unmarshal([]byte(out), &done) != nil || done["device"] != dev || done["detached"] != true {
		t.Errorf("detach --json printed %q", out)
	}
}
