package integration

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
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
		{[]string{"volume", "resize", "acme/db", "--size", "1G"}, 1, "cannot shrink"},
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
		if b.code == 1 && strings.Count(strings.TrimSpace(out), "\n") != 0 {
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
