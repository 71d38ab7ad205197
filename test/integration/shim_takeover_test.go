package integration

import (
	"bufio"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// shimKeepWorker is a program under the shim that keeps one file open:
// "open PATH" opens it; each "io R" writes 16 pieces of 4 KiB (filled
// with R and the piece's index) with pwrite, fsyncs, reads every piece
// back with pread and prints "ok" or the error; "quit" closes and exits
// (printing the shim's stats).
const shimKeepWorker = `
import os, sys
fd = -1
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "quit":
        break
    try:
        if cmd[0] == "open":
            fd = os.open(cmd[1], os.O_RDWR | os.O_CREAT, 0o644)
        else:
            r = int(cmd[1])
            data = [bytes([(r * 16 + i) % 251 + 1]) * 4096 for i in range(16)]
            for i, d in enumerate(data):
                os.pwrite(fd, d, i * 4096)
            os.fsync(fd)
            for i, d in enumerate(data):
                if os.pread(fd, 4096, i * 4096) != d:
                    raise Exception("piece %d read back wrong" % i)
        print("ok", flush=True)
    except Exception as e:
        print("err", e, flush=True)
os.close(fd)
`

// TestShimTakeover: a process under the shim keeps a file of a FUSE
// mount open (registered with the shim door) through three takeovers.
// The mount is handed over; the shim channel is not (the old door closes
// it, as on a stop): every round's writes and reads on the same
// descriptor must succeed and read back right, and some of each round's
// writes must reach the new gateway's shim door (the library registers
// the file again on a new channel). The shim's own stats tell which path
// carried the rest; the test logs them.
func TestShimTakeover(t *testing.T) {
	python := testtool.Path(t, "python3")
	g := startGateway(t, t.TempDir())
	mnt := g.mountVolume("t/shimho", "fs", "1G")
	cmd := g.shimCmd(mnt, python, "-c", shimKeepWorker)
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
	say := func(what string) {
		t.Helper()
		fmt.Fprintln(stdin, what)
		select {
		case l, ok := <-lines:
			if l != "ok" {
				t.Fatalf("%s: %q (open %v)\n%s\n%s", what, l, ok, stderr.String(), g.logTail())
			}
		case <-time.After(time.Minute):
			t.Fatalf("%s: no answer in a minute (a hang)\n%s", what, stderr.String())
		}
	}
	say("open " + filepath.Join(mnt, "kept"))
	say("io 0")
	t.Logf("before the handovers: the gateway served %d shim writes", shimWrites(t, g))
	for r := 1; r <= 3; r++ {
		g.takeover()
		say(fmt.Sprintf("io %d", r))
		n := shimWrites(t, g)
		t.Logf("handover %d: the new gateway (pid %d) served %d shim writes", r, g.cmd.Process.Pid, n)
		if n == 0 {
			t.Errorf("handover %d: the shim never reached the new gateway (it should register the file again on a new channel)", r)
		}
	}
	fmt.Fprintln(stdin, "quit")
	stdin.Close()
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker: %v\n%s", err, stderr.String())
	}
	st := parseShimStats(stderr.String())
	for _, op := range []string{"pwrite", "pwrite64", "pread", "pread64", "fsync"} {
		if f := st[op]; len(f) > 0 {
			t.Logf("%s: %v", op, f)
		}
	}
	t.Logf("shim stats:\n%s", stderr.String())
}
