// Package integration runs the built sluice binary as its own process and
// drives it with the clients people use: the sluice CLI, qemu-io, nbdinfo,
// nbdcopy and fio. Set SLUICE_BIN to a built binary (make integration does);
// otherwise TestMain builds one.
//
// A missing client tool skips its test, except under CI=true, where it fails.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/etcdtest"
)

var sluiceBin string

func TestMain(m *testing.M) {
	// A child process: an etcd member of etcdtest.StartCluster.
	etcdtest.RunMemberIfAsked()
	if spec := os.Getenv(durableWorkerEnv); spec != "" { // a child process of a test
		i := strings.LastIndexByte(spec, ':')
		n, _ := strconv.Atoi(spec[i+1:])
		os.Exit(durableRenameWorker(spec[:i], n))
	}
	sluiceBin = os.Getenv("SLUICE_BIN")
	if sluiceBin == "" {
		dir, err := os.MkdirTemp("", "sluice-bin")
		if err != nil {
			panic(err)
		}
		sluiceBin = filepath.Join(dir, "sluice")
		build := exec.Command("go", "build", "-o", sluiceBin, "../../cmd/sluice")
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build: the nbd guest test runs it
		out, err := build.CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building sluice: %v\n%s", err, out)
			os.Exit(1)
		}
		defer os.RemoveAll(dir)
	}
	code := m.Run()
	os.Exit(code)
}

// gw is one gateway process on its own data directory.
type gw struct {
	t       *testing.T
	dir     string
	api     string
	nbdSock string
	args    []string
	cmd     *exec.Cmd
	log     *os.File
	exited  chan error
}

// startGateway starts `sluice gateway` on dir and waits until its API socket
// answers. extra flags are appended.
func startGateway(t *testing.T, dir string, extra ...string) *gw {
	t.Helper()
	g := &gw{t: t, dir: dir, api: filepath.Join(dir, "api.sock"), nbdSock: filepath.Join(dir, "nbd.sock")}
	g.args = append([]string{"gateway", "--data-dir", dir, "--nbd-listen", "", "--pool-size", "16G"}, extra...)
	g.start()
	t.Cleanup(func() { g.stop() })
	return g
}

func (g *gw) start() {
	g.t.Helper()
	var err error
	g.log, err = os.OpenFile(filepath.Join(g.dir, "gateway.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		g.t.Fatal(err)
	}
	g.cmd = exec.Command(sluiceBin, g.args...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		g.t.Fatal(err)
	}
	g.exited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(g.cmd, g.exited)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(g.api); err == nil {
			if _, code := g.sluice("volume", "list", "--json"); code == 0 {
				return
			}
		}
		select {
		case err := <-g.exited:
			g.exited <- err
			g.t.Fatalf("gateway exited during start-up: %v\n%s", err, g.logTail())
		default:
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("gateway not ready after 30s\n%s", g.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *gw) logTail() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop sends SIGTERM and waits for a clean exit.
func (g *gw) stop() {
	if g.cmd == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-g.exited:
		if err != nil {
			g.t.Errorf("gateway exited with %v after SIGTERM\n%s", err, g.logTail())
		}
	case <-time.After(60 * time.Second):
		g.cmd.Process.Kill()
		g.t.Errorf("gateway did not stop within 60s of SIGTERM\n%s", g.logTail())
	}
	g.cmd = nil
	g.log.Close()
}

// kill sends SIGKILL: no flush, no clean-up.
func (g *gw) kill() {
	g.cmd.Process.Kill()
	<-g.exited
	g.cmd = nil
	g.log.Close()
}

func (g *gw) restart() {
	g.t.Helper()
	g.start()
}

// sluice runs the CLI against this gateway; it returns stdout+stderr and the exit code.
func (g *gw) sluice(args ...string) (string, int) {
	cmd := exec.Command(sluiceBin, append([]string{"--api-socket", g.api}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		g.t.Fatalf("running sluice %v: %v", args, err)
	}
	return string(out), 0
}

// mustSluice runs the CLI and fails the test on a non-zero exit.
func (g *gw) mustSluice(args ...string) string {
	g.t.Helper()
	out, code := g.sluice(args...)
	if code != 0 {
		g.t.Fatalf("sluice %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	return out
}

func (g *gw) createVolume(ref, size string) {
	g.t.Helper()
	tenant, name, _ := strings.Cut(ref, "/")
	g.mustSluice("volume", "create", name, "--tenant", tenant, "--size", size)
}

// uri is the NBD URI of a volume over the gateway's unix socket.
func (g *gw) uri(ref string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", ref, g.nbdSock)
}

// poolAllocated is the bytes the pool file holds on the host filesystem.
func (g *gw) poolAllocated() int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(g.dir, "pool"), &st); err != nil {
		g.t.Fatal(err)
	}
	return st.Blocks * 512
}

type statsJSON struct {
	Pool struct {
		Used int64 `json:"used"`
	} `json:"pool"`
	Volumes []struct {
		Ref       string `json:"ref"`
		Allocated int64  `json:"allocated"`
		Ops       []struct {
			Door  string `json:"door"`
			Op    string `json:"op"`
			Bytes int64  `json:"bytes"`
		} `json:"ops"`
	} `json:"volumes"`
}

func (g *gw) stats() statsJSON {
	g.t.Helper()
	var st statsJSON
	if err := json.Unmarshal([]byte(g.mustSluice("stats", "--json")), &st); err != nil {
		g.t.Fatal(err)
	}
	return st
}

// run runs a client tool with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runCmd(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// run is run against this gateway: a failure also shows the gateway's log.
func (g *gw) run(timeout time.Duration, name string, args ...string) string {
	g.t.Helper()
	out, err := runCmd(timeout, name, args...)
	if err != nil {
		g.t.Fatalf("%s %s: %v\n%s\ngateway log:\n%s", name, strings.Join(args, " "), err, out, g.logTail())
	}
	return out
}

// runCmd runs a command and returns its stdout and stderr together.
func runCmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// qemuIO runs qemu-io commands against a volume and fails on any pattern
// verification failure.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	return qemuIOWith(t, []string{"-f", "raw"}, uri, cmds...)
}

// qemuIOReadOnly opens the export read-only (qemu-io -r), as a read-only
// export requires.
func qemuIOReadOnly(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	return qemuIOWith(t, []string{"-r", "-f", "raw"}, uri, cmds...)
}

func qemuIOWith(t *testing.T, args []string, uri string, cmds ...string) string {
	t.Helper()
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, 2*time.Minute, "qemu-io", append(args, uri)...)
	if strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io %q:\n%s", cmds, out)
	}
	return out
}
