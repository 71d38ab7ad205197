package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
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
	"github.com/sluice-storage/sluice/internal/testwait"
)

// notifySocket is the service manager's end of NOTIFY_SOCKET: a unixgram
// socket the test listens on (this machine has no systemd as init).
type notifySocket struct {
	t    *testing.T
	path string
	conn *net.UnixConn
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return &notifySocket{t: t, path: path, conn: c}
}

// recv returns the next notification, failing the test after a generous
// wait (a gateway start on a busy machine takes seconds).
func (n *notifySocket) recv(g *gw) string {
	n.t.Helper()
	msg, err := n.read(60 * time.Second)
	if err != nil {
		n.t.Fatalf("no notification: %v\ngateway log:\n%s", err, g.logTail())
	}
	return msg
}

func (n *notifySocket) read(wait time.Duration) (string, error) {
	buf := make([]byte, 4097)
	n.conn.SetReadDeadline(time.Now().Add(wait))
	k, err := n.conn.Read(buf)
	return string(buf[:k]), err
}

// startSystemdGateway starts `sluice gateway` on dir as systemd would:
// with env added and files passed from fd 3 on. With files, LISTEN_PID is
// set in the child by a shell that then execs the gateway, so it is the
// gateway's own pid (the parent cannot know it before the fork; systemd
// sets it in the child too). It does not wait: the caller waits for
// READY=1.
func startSystemdGateway(t *testing.T, dir string, env []string, files []*os.File, extra ...string) *gw {
	t.Helper()
	g := &gw{t: t, dir: dir, api: filepath.Join(dir, "api.sock"), nbdSock: filepath.Join(dir, "nbd.sock")}
	g.args = append([]string{"gateway", "--data-dir", dir, "--nbd-listen", "", "--pool-size", "16G"}, extra...)
	if len(files) > 0 {
		sh, err := exec.LookPath("sh")
		must(t, err)
		g.cmd = exec.Command(sh, append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, sluiceBin}, g.args...)...)
	} else {
		g.cmd = exec.Command(sluiceBin, g.args...)
	}
	g.cmd.Env = append(os.Environ(), env...)
	g.cmd.ExtraFiles = files
	g.launch()
	return g
}

// launch starts g.cmd with its output in the gateway's log, and stops it
// when the test ends.
func (g *gw) launch() {
	g.t.Helper()
	var err error
	g.log, err = os.OpenFile(filepath.Join(g.dir, "gateway.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	must(g.t, err)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	must(g.t, g.cmd.Start())
	g.exited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(g.cmd, g.exited)
	g.t.Cleanup(func() { g.stop() })
}

// apiHealth asks the API socket once, without retrying: an error means it
// does not answer now.
func apiHealth(socket string) error {
	c := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
	resp, err := c.Get("http://sluice/v1/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s", resp.Status)
	}
	return nil
}

// TestSystemdNotify: under a NOTIFY_SOCKET the gateway says READY=1 (with
// a STATUS) only once its API answers, pings the watchdog at half of
// WATCHDOG_USEC, and says STOPPING=1 when SIGTERM starts the shutdown,
// then nothing more.
func TestSystemdNotify(t *testing.T) {
	n := listenNotify(t)
	dir := t.TempDir()
	const watchdog = time.Second
	g := startSystemdGateway(t, dir, []string{"NOTIFY_SOCKET=" + n.path, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds())}, nil)

	msg := n.recv(g)
	want := "READY=1\nSTATUS=serving 0 volumes; API " + g.api
	if msg != want {
		t.Fatalf("first notification %q, want %q", msg, want)
	}
	if err := apiHealth(g.api); err != nil {
		t.Fatalf("READY=1 arrived but the API does not answer: %v", err)
	}

	// Pings, each WATCHDOG=1, every half interval.
	const pings = 4
	var at []time.Time
	for len(at) < pings {
		if msg := n.recv(g); msg != "WATCHDOG=1" {
			t.Fatalf("while running: %q, want WATCHDOG=1", msg)
		}
		at = append(at, time.Now())
	}
	span, period := at[pings-1].Sub(at[0]), watchdog/2
	if lo, hi := time.Duration(pings-1)*period*8/10, time.Duration(pings-1)*watchdog; span < lo || span > hi {
		t.Fatalf("%d pings over %v, want between %v and %v", pings, span, lo, hi)
	}
	t.Logf("%d watchdog pings over %v (WATCHDOG_USEC %v)", pings, span, watchdog)

	g.cmd.Process.Signal(syscall.SIGTERM)
	for {
		msg := n.recv(g)
		if msg == "STOPPING=1\nSTATUS=draining NBD requests and flushing" {
			break
		}
		if msg != "WATCHDOG=1" {
			t.Fatalf("after SIGTERM: %q, want STOPPING=1", msg)
		}
	}
	select {
	case err := <-g.exited:
		if err != nil {
			t.Fatalf("gateway exited with %v after SIGTERM\n%s", err, g.logTail())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("gateway did not exit within 60s of STOPPING=1")
	}
	g.cmd = nil
	g.log.Close()
	if msg, err := n.read(100 * time.Millisecond); err == nil {
		t.Fatalf("notification after STOPPING=1: %q", msg)
	}
}

// inheritSocket makes a listening unix socket at path, as a .socket unit
// does, and returns it as a file to pass and the socket's inode.
func inheritSocket(t *testing.T, network, path string) (*os.File, uint64) {
	t.Helper()
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	must(t, err)
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	must(t, err)
	l.Close() // f holds the socket
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	must(t, syscall.Stat(path, &st))
	return f, st.Ino
}

// TestSystemdSocketActivation: started with LISTEN_FDS (the API and NBD
// unix sockets made by the test, as a .socket unit makes them), the
// gateway serves on those sockets instead of creating its own, leaves
// their paths in place on SIGTERM, and a request sent while it is down
// waits in the socket's queue and is answered by the next start.
func TestSystemdSocketActivation(t *testing.T) {
	n := listenNotify(t)
	dir := t.TempDir()
	api, apiIno := inheritSocket(t, "unix", filepath.Join(dir, "api.sock"))
	nbdSock, nbdIno := inheritSocket(t, "unix", filepath.Join(dir, "nbd.sock"))
	env := []string{"NOTIFY_SOCKET=" + n.path, "LISTEN_FDS=2", "LISTEN_FDNAMES=api:nbd"}
	files := []*os.File{api, nbdSock}

	g := startSystemdGateway(t, dir, env, files)
	if msg := n.recv(g); !strings.HasPrefix(msg, "READY=1\n") {
		t.Fatalf("first notification %q, want READY=1", msg)
	}
	for path, ino := range map[string]uint64{g.api: apiIno, g.nbdSock: nbdIno} {
		var st syscall.Stat_t
		must(t, syscall.Stat(path, &st))
		if st.Ino != ino {
			t.Fatalf("%s was replaced (inode %d, the inherited socket's is %d)", path, st.Ino, ino)
		}
	}
	g.mustSluice("volume", "create", "t/v", "--size", "64M")
	checkNBDGreeting(t, g.nbdSock)

	g.stop()
	if msg := n.recv(g); !strings.HasPrefix(msg, "STOPPING=1\n") {
		t.Fatalf("on SIGTERM: %q, want STOPPING=1", msg)
	}
	for _, path := range []string{g.api, g.nbdSock} {
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("SIGTERM removed the inherited socket %s: %v", path, err)
		}
	}
	// Down: the kernel still accepts into the socket the test holds.
	c, err := net.Dial("unix", g.api)
	must(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET /v1/volumes HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
	must(t, err)

	g2 := startSystemdGateway(t, dir, env, files)
	if msg := n.recv(g2); !strings.HasPrefix(msg, "READY=1\nSTATUS=serving 1 volumes") {
		t.Fatalf("after the restart: %q, want READY=1 with 1 volume", msg)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the request sent while the gateway was down: %v\n%s", err, g2.logTail())
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "t/v") {
		t.Fatalf("the request sent while the gateway was down: %s %s", resp.Status, body)
	}
	checkNBDGreeting(t, g2.nbdSock)
}

// TestSystemdFDStore: told its fd store has room ($FDSTORE), the gateway
// stores the sockets it made (FDSTORE=1, FDNAME=api, nbd, shim) before
// READY=1. After a SIGKILL, started again with those fds as systemd
// passes them (LISTEN_FDS), it serves on them (the socket files are the
// same inodes), answers a request sent while it was dead, and stores
// nothing again.
func TestSystemdFDStore(t *testing.T) {
	n := listenNotify(t)
	dir := t.TempDir()
	g := startSystemdGateway(t, dir, []string{"NOTIFY_SOCKET=" + n.path, "FDSTORE=16"}, nil)
	stored := map[string]*os.File{}
	var names []string
	for {
		msg, fds := n.recvFDs(g)
		if strings.HasPrefix(msg, "READY=1\n") {
			break
		}
		name, ok := strings.CutPrefix(msg, "FDSTORE=1\nFDNAME=")
		if !ok || len(fds) != 1 || stored[name] != nil {
			t.Fatalf("before READY=1: %q with %d fds", msg, len(fds))
		}
		stored[name] = os.NewFile(uintptr(fds[0]), name)
		t.Cleanup(func() { stored[name].Close() })
		names = append(names, name)
	}
	if strings.Join(names, ",") != "api,nbd,shim" {
		t.Fatalf("stored %q, want api, nbd and shim", names)
	}
	inodes := map[string]uint64{}
	for _, name := range names {
		var st syscall.Stat_t
		must(t, syscall.Stat(filepath.Join(dir, name+".sock"), &st))
		inodes[name] = st.Ino
	}
	g.mustSluice("volume", "create", "t/v", "--size", "64M")

	g.kill()
	c, err := net.Dial("unix", g.api) // queued in the stored socket
	must(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET /v1/volumes HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
	must(t, err)

	files := []*os.File{stored["api"], stored["nbd"], stored["shim"]}
	env := []string{"NOTIFY_SOCKET=" + n.path, "FDSTORE=16", "LISTEN_FDS=3", "LISTEN_FDNAMES=api:nbd:shim"}
	g2 := startSystemdGateway(t, dir, env, files)
	if msg := n.recv(g2); !strings.HasPrefix(msg, "READY=1\nSTATUS=serving 1 volumes") {
		t.Fatalf("after the restart: %q, want READY=1 (and no FDSTORE again)", msg)
	}
	for _, name := range names {
		var st syscall.Stat_t
		must(t, syscall.Stat(filepath.Join(dir, name+".sock"), &st))
		if st.Ino != inodes[name] {
			t.Errorf("%s.sock was made anew after the restart, not taken from the fd store", name)
		}
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the request sent while the gateway was dead: %v\n%s", err, g2.logTail())
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "t/v") {
		t.Fatalf("the request sent while the gateway was dead: %s %s", resp.Status, body)
	}
	checkNBDGreeting(t, g2.nbdSock)
}

// recvFDs is recv that also returns the fds a notification carried.
func (n *notifySocket) recvFDs(g *gw) (string, []int) {
	n.t.Helper()
	buf, oob := make([]byte, 4097), make([]byte, syscall.CmsgSpace(253*4))
	n.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	k, oobn, _, _, err := n.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		n.t.Fatalf("no notification: %v\ngateway log:\n%s", err, g.logTail())
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	must(n.t, err)
	var fds []int
	for _, m := range msgs {
		got, err := syscall.ParseUnixRights(&m)
		must(n.t, err)
		fds = append(fds, got...)
	}
	return string(buf[:k]), fds
}

// TestSystemdSocketActivateTool: under systemd's own
// systemd-socket-activate, which makes the sockets and execs the gateway
// in its place when the first client connects, that client is answered,
// READY=1 follows, and SIGTERM stops the gateway cleanly.
func TestSystemdSocketActivateTool(t *testing.T) {
	tool := testtool.Path(t, "systemd-socket-activate")
	n := listenNotify(t)
	dir := t.TempDir()
	g := &gw{t: t, dir: dir, api: filepath.Join(dir, "api.sock"), nbdSock: filepath.Join(dir, "nbd.sock")}
	g.args = []string{"gateway", "--data-dir", dir, "--nbd-listen", "", "--pool-size", "16G"}
	g.cmd = exec.Command(tool, append([]string{"-l", g.api, "-l", g.nbdSock, "--fdname=api:nbd",
		"-E", "NOTIFY_SOCKET=" + n.path, sluiceBin}, g.args...)...)
	g.launch()
	testwait.For(t, "systemd-socket-activate listening on "+g.api, func() bool {
		_, err := os.Stat(g.api)
		return err == nil
	})
	if _, err := os.Stat(filepath.Join(dir, "lock")); err == nil {
		t.Fatal("the gateway ran before any client connected")
	}
	// The first client starts it, and is answered.
	if out := g.mustSluice("volume", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("volume list through the activated gateway: %q", out)
	}
	if msg := n.recv(g); !strings.HasPrefix(msg, "READY=1\n") {
		t.Fatalf("first notification %q, want READY=1", msg)
	}
	checkNBDGreeting(t, g.nbdSock)
	g.stop()
	if msg := n.recv(g); !strings.HasPrefix(msg, "STOPPING=1\n") {
		t.Fatalf("on SIGTERM: %q, want STOPPING=1", msg)
	}
}

// checkNBDGreeting connects to an NBD socket and reads the server's
// greeting (NBDMAGIC IHAVEOPT).
func checkNBDGreeting(t *testing.T, socket string) {
	t.Helper()
	c, err := net.DialTimeout("unix", socket, 10*time.Second)
	must(t, err)
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 16)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "NBDMAGICIHAVEOPT" {
		t.Fatalf("NBD greeting on %s: %q %v", socket, buf, err)
	}
}

// TestSystemdInheritedMismatch: an inherited fd that is none of the
// gateway's sockets, or is bound elsewhere than its flag says, stops the
// start with a message naming it, before anything is created (the data
// directory does not even appear).
func TestSystemdInheritedMismatch(t *testing.T) {
	sockets := t.TempDir()
	cases := []struct {
		names, path string
		extra       []string
		want        string
	}{
		{"bogus", "api.sock", nil, `inherited fd 3 is named "bogus", which is none of the gateway's sockets`},
		{"api", "elsewhere.sock", nil, `inherited fd 3 named "api" is bound to`},
		{"nbd", "nbd.sock", []string{"--nbd-socket", "none"}, "--nbd-socket disables that socket"},
		{"shim", "shim.sock", nil, "is a unix socket, want unixpacket"},
	}
	for _, c := range cases {
		dir := filepath.Join(t.TempDir(), "data")
		f, _ := inheritSocket(t, "unix", filepath.Join(sockets, c.names+"-"+c.path))
		if c.path != "elsewhere.sock" {
			// The flag names the socket's path: only the name or kind is wrong.
			flag := map[string]string{"bogus": "--api-socket", "nbd": "--api-socket", "shim": "--shim-socket"}[c.names]
			c.extra = append(c.extra, flag, filepath.Join(sockets, c.names+"-"+c.path))
		}
		sh, err := exec.LookPath("sh")
		must(t, err)
		args := append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, sluiceBin, "gateway", "--data-dir", dir, "--nbd-listen", ""}, c.extra...)
		cmd := exec.Command(sh, args...)
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES="+c.names)
		cmd.ExtraFiles = []*os.File{f}
		out, err := runWithTimeout(cmd, time.Minute)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 4 || !strings.Contains(string(out), c.want) {
			t.Errorf("fd named %s at %s: %v, want exit 4 saying %q:\n%s", c.names, c.path, err, c.want, out)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("fd named %s: the refused start created the data directory (%v)", c.names, err)
		}
	}
}

// runWithTimeout runs cmd, killing it after timeout, and returns its
// combined output.
func runWithTimeout(cmd *exec.Cmd, timeout time.Duration) ([]byte, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := time.AfterFunc(timeout, func() { cmd.Process.Kill() })
	defer t.Stop()
	err := cmd.Wait()
	return []byte(out.String()), err
}
