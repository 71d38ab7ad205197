package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/handover"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// freeTCPAddr is a loopback address with a port nothing listens on now.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// takeover runs `sluice gateway --takeover` with g's flags, waits for the
// old process to exit 0 and for the new one to serve the API (the data
// directory's lock names it), and makes g the new process.
func (g *gw) takeover() {
	g.t.Helper()
	oldCmd, oldExited, oldLog := g.cmd, g.exited, g.log
	var err error
	g.log, err = os.OpenFile(filepath.Join(g.dir, "gateway.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		g.t.Fatal(err)
	}
	g.cmd = exec.Command(sluiceBin, append(append([]string{}, g.args...), "--takeover")...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.exited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(g.cmd, g.exited)
	select {
	case err := <-oldExited:
		oldLog.Close()
		if err != nil {
			g.t.Fatalf("old gateway (pid %d) exited with %v on the handover\n%s", oldCmd.Process.Pid, err, g.logTail())
		}
	case err := <-g.exited:
		g.exited <- err
		g.t.Fatalf("the new gateway exited during the takeover: %v\n%s", err, g.logTail())
	case <-time.After(90 * time.Second):
		g.t.Fatalf("old gateway did not exit within 90s of the takeover\n%s", g.logTail())
	}
	pid := strconv.Itoa(g.cmd.Process.Pid)
	testwait.For(g.t, "the new gateway serves the API", func() bool {
		b, _ := os.ReadFile(filepath.Join(g.dir, "lock"))
		return strings.TrimSpace(string(b)) == pid && apiHealth(g.api) == nil
	})
}

var pauseRE = regexp.MustCompile(`msg="takeover complete" pause_ms=([0-9.]+)`)

// pauses are the pauses the new processes logged, in order.
func (g *gw) pauses() []float64 {
	b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
	var out []float64
	for _, m := range pauseRE.FindAllStringSubmatch(string(b), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		out = append(out, v)
	}
	return out
}

// TestHandoverNBD: a gateway serving NBD (unix and TCP), metrics and the
// API is taken over 10 times in a row by `sluice gateway --takeover`
// while two clients, one on the NBD unix socket (4 KiB blocks) and one
// on TCP (128 KiB blocks, read through the gateway's raw payload path),
// each keep one connection doing random writes pipelined with verified
// reads, and flushes. The connections are handed over: neither client
// may see an error or reconnect, and each new process must say it
// resumed them. Each old process exits 0, each new one serves, every
// flushed block reads back (through each new process, and after a plain
// restart at the end), and the API keeps working (a volume created after
// each handover). The longest IO of each client across each handover
// (its p100 pause) is logged.
func TestHandoverNBD(t *testing.T) {
	dir := t.TempDir()
	tcpAddr := freeTCPAddr(t)
	g := startGateway(t, dir, "--nbd-listen", tcpAddr, "--metrics-listen", freeTCPAddr(t))
	g.createVolume("t/disk", "64M")
	g.createVolume("t/disk2", "64M")
	ws := []*verifiedWriter{
		{socket: g.nbdSock, export: "t/disk", blocks: 1024, bs: 4096, keep: true},
		{socket: tcpAddr, export: "t/disk2", blocks: 256, bs: 128 << 10, keep: true},
	}
	stop := make(chan struct{})
	var done sync.WaitGroup
	for _, w := range ws {
		w.flushed, w.uncertain = map[int][]byte{}, map[int][2][]byte{}
		done.Add(1)
		go func() {
			defer done.Done()
			w.run(stop)
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		done.Wait()
	}()
	progress := func(what string, n int64) {
		t.Helper()
		waitProgress(t, g, ws, what, n)
	}
	const rounds = 10
	longest := make([][]time.Duration, len(ws))
	for i := 0; i < rounds; i++ {
		progress("the NBD clients make progress", 100)
		for _, w := range ws {
			w.takeLongestIO()
		}
		start := time.Now()
		g.takeover()
		took := time.Since(start)
		progress("the NBD clients make progress after the handover", 20)
		var line []string
		for j, w := range ws {
			d := w.takeLongestIO()
			longest[j] = append(longest[j], d)
			line = append(line, fmt.Sprintf("%s longest IO %v", w.export, d.Round(100*time.Microsecond)))
		}
		t.Logf("handover %d: old exited and new serving after %v; %s", i+1, took.Round(time.Millisecond), strings.Join(line, ", "))
		g.createVolume("t/after"+strconv.Itoa(i), "1M")
		for _, w := range ws {
			if err := w.verifyAll(); err != nil {
				t.Fatalf("after handover %d, %s: %v", i+1, w.export, err)
			}
		}
	}
	progress("the NBD clients make progress after the last handover", 100)
	close(stop)
	done.Wait()
	pauses := g.pauses()
	if len(pauses) != rounds {
		t.Fatalf("%d takeover complete lines in the log, want %d", len(pauses), rounds)
	}
	var longestPause float64
	for _, p := range pauses {
		longestPause = max(longestPause, p)
	}
	t.Logf("pauses (old stops accepting → new serving), ms: %v; longest %.1f ms", pauses, longestPause)
	for j, w := range ws {
		if err := w.failed(); err != nil {
			t.Fatalf("NBD client on %s: %v", w.socket, err)
		}
		t.Logf("NBD client %s (%s, %d-byte blocks): %d write+read+flush steps, %d verified reads, %d connections, longest IO per handover %v",
			w.export, w.socket, w.bs, w.ops, w.verifyReads, w.dials, longest[j])
		if w.dials != 1 || w.reconnects != 0 {
			t.Errorf("NBD client %s connected %d times (%d reconnects): its connection did not survive the handovers", w.export, w.dials, w.reconnects)
		}
	}
	for i, n := range g.resumedNBD() {
		if n < len(ws) {
			t.Errorf("handover %d resumed %d NBD connections, want at least %d", i+1, n, len(ws))
		}
	}
	vols := g.mustSluice("volume", "list")
	for i := 0; i < rounds; i++ {
		if !strings.Contains(vols, "after"+strconv.Itoa(i)) {
			t.Errorf("volume after%d missing:\n%s", i, vols)
		}
	}
	// A plain stop and start: what was flushed is on disk.
	g.stop()
	g.args = append([]string{}, g.args...)
	g.start()
	for _, w := range ws {
		if err := w.verifyAll(); err != nil {
			t.Fatalf("after a restart, %s: %v", w.export, err)
		}
	}
}

// waitProgress waits until each writer has made n more steps; it fails
// the test on a writer's error.
func waitProgress(t *testing.T, g *gw, ws []*verifiedWriter, what string, n int64) {
	t.Helper()
	before := make([]int64, len(ws))
	for i, w := range ws {
		before[i] = w.opCount()
	}
	testwait.For(t, what, func() bool {
		for i, w := range ws {
			if w.failed() != nil {
				return true
			}
			if w.opCount() < before[i]+n {
				return false
			}
		}
		return true
	})
	for _, w := range ws {
		if err := w.failed(); err != nil {
			t.Fatalf("NBD client on %s: %v\n%s", w.socket, err, g.logTail())
		}
	}
}

var resumedRE = regexp.MustCompile(`msg="takeover complete" .*nbd_conns_resumed=([0-9]+)`)

// resumedNBD is how many NBD connections each new process resumed.
func (g *gw) resumedNBD() []int {
	b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
	var out []int
	for _, m := range resumedRE.FindAllStringSubmatch(string(b), -1) {
		v, _ := strconv.Atoi(m[1])
		out = append(out, v)
	}
	return out
}

// TestHandoverNoGateway: --takeover with no gateway running fails with a
// clear error (exit 4) and creates nothing: neither on a data directory
// that does not exist nor on one whose gateway has stopped.
func TestHandoverNoGateway(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none")
	out, code := runTakeover(t, missing)
	if code != 4 || !strings.Contains(out, "no running gateway answers on") {
		t.Fatalf("exit %d, want 4 and a clear message:\n%s", code, out)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("the data directory was created: %v", err)
	}
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.stop()
	if _, err := os.Stat(filepath.Join(dir, handover.SocketName)); !os.IsNotExist(err) {
		t.Fatalf("a stopped gateway left its handover socket: %v", err)
	}
	out, code = runTakeover(t, dir)
	if code != 4 || !strings.Contains(out, "no running gateway answers on") {
		t.Fatalf("after the gateway stopped: exit %d, want 4:\n%s", code, out)
	}
}

func runTakeover(t *testing.T, dir string, extra ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(sluiceBin, append([]string{"gateway", "--data-dir", dir, "--nbd-listen", "", "--pool-size", "16G", "--takeover"}, extra...)...)
	out, err := runWithTimeout(cmd, 60*time.Second)
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("sluice gateway --takeover: %v\n%s", err, out)
	}
	return string(out), 0
}

// TestHandoverRefused: a handover is refused before anything is touched
// when the versions or the flags do not match:
//   - a new process whose hello has another state version or on-disk
//     format (spoken by the test) is refused by the running gateway,
//     which serves on and can still be taken over;
//   - `sluice gateway --takeover` facing a gateway of another on-disk
//     format (the test plays it) refuses, says why, exits 4 and creates
//     nothing in the data directory;
//   - `--takeover` with flags that describe other sockets is refused and
//     the running gateway serves on.
func TestHandoverRefused(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.createVolume("t/v", "8M")
	for _, bad := range []struct {
		msg  handover.Message
		want string
	}{
		{handover.Message{Type: handover.TypeHello, StateVersion: 99, FormatVersion: 1, PID: 1, SluiceVersion: "future"}, "state version 99"},
		{handover.Message{Type: handover.TypeHello, StateVersion: handover.StateVersion, FormatVersion: 99, PID: 1, SluiceVersion: "future"}, "on-disk format 99"},
	} {
		c, err := handover.Dial(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Send(bad.msg); err != nil {
			t.Fatal(err)
		}
		reply, fds, err := c.Recv()
		c.Close()
		if err != nil || len(fds) != 0 {
			t.Fatalf("reply to a bad hello: %v, %d fds", err, len(fds))
		}
		if reply.Type != handover.TypeRefuse || !strings.Contains(reply.Error, bad.want) {
			t.Fatalf("reply %+v, want a refusal naming %q", reply, bad.want)
		}
		if err := apiHealth(g.api); err != nil {
			t.Fatalf("the gateway stopped serving after refusing: %v", err)
		}
	}
	// Other flags: another API socket path.
	out, code := runTakeover(t, dir, "--api-socket", filepath.Join(t.TempDir(), "other.sock"))
	if code != 4 || !strings.Contains(out, "start the new process with the running gateway's flags") {
		t.Fatalf("takeover with another --api-socket: exit %d:\n%s", code, out)
	}
	if err := apiHealth(g.api); err != nil {
		t.Fatalf("the gateway stopped serving after a refused takeover: %v", err)
	}
	// The running gateway still hands over after the refusals.
	g.takeover()
	if !strings.Contains(g.mustSluice("volume", "list"), "v") {
		t.Fatal("volume lost")
	}

	// The test plays a running gateway of another on-disk format.
	other := t.TempDir()
	hl, err := handover.Listen(other)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	got := make(chan handover.Message, 2)
	go func() {
		c, err := handover.Accept(hl)
		if err != nil {
			return
		}
		defer c.Close()
		hello, _, err := c.Recv()
		if err != nil {
			return
		}
		got <- hello
		c.Send(handover.Message{Type: handover.TypeHello, StateVersion: handover.StateVersion, FormatVersion: 99, PID: os.Getpid(), SluiceVersion: "future",
			Listeners: []handover.Listener{{Name: "api", Network: "unix", Addr: filepath.Join(other, "api.sock")}}})
		next, _, err := c.Recv()
		if err == nil {
			got <- next
		}
	}()
	out, code = runTakeover(t, other)
	if code != 4 || !strings.Contains(out, "on-disk format 99") || !strings.Contains(out, "serves on") {
		t.Fatalf("takeover from a gateway of another format: exit %d:\n%s", code, out)
	}
	hello := <-got
	if hello.Type != handover.TypeHello || hello.StateVersion != handover.StateVersion || hello.FormatVersion < 1 {
		t.Fatalf("the new process's hello: %+v", hello)
	}
	if r := <-got; r.Type != handover.TypeRefuse || !strings.Contains(r.Error, "on-disk format 99") {
		t.Fatalf("the new process told the old one %+v, want a refusal", r)
	}
	entries, _ := os.ReadDir(other)
	for _, e := range entries {
		if e.Name() != handover.SocketName {
			t.Errorf("a refused takeover created %s in the data directory", e.Name())
		}
	}
}
