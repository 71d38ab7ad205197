package integration

import (
	"context"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

func TestReadOnlyExports(t *testing.T) {
	testtool.Need(t, "qemu-io", "nbdinfo")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/rw", "64M")
	qemuIO(t, g.uri("acme/rw"), "write -P 5 0 1M")
	g.mustSluice("volume", "create", "ro", "--tenant", "acme", "--size", "64M", "--read-only")
	if out := run(t, time.Minute, "nbdinfo", g.uri("acme/ro")); !strings.Contains(out, "is_read_only: true") {
		t.Fatalf("read-only volume not advertised read-only:\n%s", out)
	}
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", g.uri("acme/ro")).CombinedOutput()
	if err == nil && !strings.Contains(string(out), "failed") && !strings.Contains(string(out), "read-only") && !strings.Contains(string(out), "ermission") {
		t.Fatalf("write to a read-only volume went through:\n%s", out)
	}
	qemuIOReadOnly(t, g.uri("acme/ro"), "read -P 0 0 1M")

	// --nbd-read-only serves every export read-only.
	g.stop()
	g.args = append(g.args, "--nbd-read-only")
	g.restart()
	if out := run(t, time.Minute, "nbdinfo", g.uri("acme/rw")); !strings.Contains(out, "is_read_only: true") {
		t.Fatalf("--nbd-read-only export not read-only:\n%s", out)
	}
	qemuIOReadOnly(t, g.uri("acme/rw"), "read -P 5 0 1M")
}

func TestMetricsEndpoint(t *testing.T) {
	testtool.Need(t, "qemu-io")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/m", "64M")
	qemuIO(t, g.uri("acme/m"), "write -P 1 0 1M", "read -P 1 0 64k", "flush")
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", g.api)
	}}}
	resp, err := c.Get("http://sluice/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`sluice_volume_ops_total{door="nbd",op="write",tenant="acme",volume="acme/m"} 1`,
		`sluice_volume_bytes_total{door="nbd",op="write",tenant="acme",volume="acme/m"} 1.048576e+06`,
		`sluice_volume_bytes_total{door="nbd",op="read",tenant="acme",volume="acme/m"} 65536`,
		`sluice_volume_latency_seconds_count{door="nbd",op="flush",tenant="acme",volume="acme/m"}`,
		`sluice_volume_allocated_bytes{tenant="acme",volume="acme/m"} 1.048576e+06`,
		`sluice_pool_used_bytes 1.048576e+06`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}
