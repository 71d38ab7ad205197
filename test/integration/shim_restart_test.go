package integration

import (
	"bufio"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// shimIOWorker is a long-running program under the shim: for each "io
// PATH" line on stdin it writes 16 pieces of 4 KiB to PATH with pwrite,
// fsyncs, reads them back with pread, closes, and prints "ok" or the
// error; "quit" exits (printing the shim's stats).
const shimIOWorker = `
import os, sys
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "quit":
        break
    try:
        fd = os.open(cmd[1], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            data = [bytes([i + 1]) * 4096 for i in range(16)]
            for i, d in enumerate(data):
                os.pwrite(fd, d, i * 4096)
            os.fsync(fd)
            for i, d in enumerate(data):
                if os.pread(fd, 4096, i * 4096) != d:
                    raise Exception("piece %d read back wrong" % i)
        finally:
            os.close(fd)
        print("ok", flush=True)
    except Exception as e:
        print("err", e, flush=True)
`

// TestShimGatewayRestarts: a process under the shim outlives two gateway
// restarts (SIGKILL, start on the same data dir, mount again). After each
// restart its next files go through the new gateway's shim door (every
// write of the round counted by the new process), their data is right,
// and no data call fell back for anything but the gateway being gone.
func TestShimGatewayRestarts(t *testing.T) {
	python := testtool.Path(t, "python3")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/restart", "fs", "1G")
	cmd := g.shimCmd(mnt, python, "-c", shimIOWorker)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	round := func(r int) {
		t.Helper()
		fmt.Fprintf(stdin, "io %s\n", filepath.Join(mnt, fmt.Sprintf("f%d", r)))
		select {
		case l, ok := <-lines:
			if l != "ok" {
				t.Fatalf("round %d: %q (open %v)\n%s", r, l, ok, stderr.String())
			}
		case <-time.After(time.Minute):
			t.Fatalf("round %d: no answer in a minute (a hang)\n%s", r, stderr.String())
		}
		// Every write of the round reaches the new gateway: the
		// library notices the old channel is dead at the file's
		// registration and opens a new one at once.
		n := shimWrites(t, g)
		if n != 16 {
			t.Fatalf("round %d: the gateway served %d shim writes, want 16\n%s", r, n, g.metrics())
		}
		t.Logf("round %d: the gateway (pid %d) served %d shim writes", r, g.cmd.Process.Pid, n)
	}
	round(0)
	for r := 1; r <= 2; r++ {
		g.kill()
		g.restart()
		g.mustSluice("umount", mnt) // the dead mount of the killed gateway
		g.mustSluice("mount", "t/restart", mnt)
		round(r)
	}
	fmt.Fprintln(stdin, "quit")
	stdin.Close()
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker: %v\n%s", err, stderr.String())
	}
	st := parseShimStats(stderr.String())
	t.Logf("pwrite: bypassed %d, fell back %d", st.sum("pwrite", "bypassed")+st.sum("pwrite64", "bypassed"), st.sum("pwrite", "fallback")+st.sum("pwrite64", "fallback"))
	if n := st.sum("pwrite", "bypassed") + st.sum("pwrite64", "bypassed"); n != 3*16 {
		t.Errorf("%d pwrites bypassed over three gateways, want 48\n%s", n, stderr.String())
	}
	for k, f := range st {
		for reason, n := range f {
			if reason != "bypassed" && reason != "fallback" && reason != "gateway_gone" && n > 0 &&
				(strings.HasSuffix(k, " pwrite") || strings.HasSuffix(k, " pwrite64") || strings.HasSuffix(k, " pread") || strings.HasSuffix(k, " pread64") || strings.HasSuffix(k, " fsync")) {
				t.Errorf("%s fell back for %s %d times\n%s", k, reason, n, stderr.String())
			}
		}
	}
}

var shimWriteMetric = regexp.MustCompile(`(?m)^sluice_shim_requests_total\{op="write"\} (\d+)`)

// shimWrites is the gateway process's count of shim write requests.
func shimWrites(t *testing.T, g *gw) int {
	m := shimWriteMetric.FindStringSubmatch(g.metrics())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
