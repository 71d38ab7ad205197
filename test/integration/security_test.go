package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

// The security suite: what an unprivileged local user (nobody, uid 65534)
// can do to a gateway run by root (issue 17). Each case ran as a hostile
// user against the gateway as it was, and got in.

// TestSecurityTenantIsolationNBD: over loopback TCP, the one NBD door a
// local user can reach, nobody sees and opens only the exports of
// tenants granted to its uid; another tenant's volume is "unknown", not
// "forbidden", so its existence does not leak.
func TestSecurityTenantIsolationNBD(t *testing.T) {
	testtool.Need(t, "nbdinfo", "qemu-io")
	addr := freeLoopbackAddr(t)
	g := startGateway(t, t.TempDir(), "--nbd-listen", addr)
	g.mustSluice("volume", "create", "t1/v", "--size", "64M")
	g.mustSluice("volume", "create", "t2/w", "--size", "64M")
	uri := func(ref string) string { return "nbd://" + addr + "/" + ref }
	list := func() string {
		out, err := asNobody("nbdinfo", "--list", "nbd://"+addr)
		if err != nil && !strings.Contains(out, "no exports") {
			t.Fatalf("nbdinfo --list as nobody: %v %s", err, out)
		}
		return out
	}
	writes := func(ref string) (string, error) {
		return asNobody("qemu-io", "-f", "raw", "-c", "write -P 0x66 0 64k", uri(ref))
	}

	if out := list(); strings.Contains(out, "t1/v") || strings.Contains(out, "t2/w") {
		t.Fatalf("nobody, granted nothing, lists exports:\n%s", out)
	}
	if out, err := writes("t2/w"); err == nil {
		t.Fatalf("nobody wrote t2/w without a grant: %s", out)
	}

	g.mustSluice("tenant", "allow", "t1", "--uid", "65534")
	out := list()
	if !strings.Contains(out, "t1/v") || strings.Contains(out, "t2/w") {
		t.Fatalf("nobody, granted t1, lists:\n%s", out)
	}
	if out, err := writes("t1/v"); err != nil {
		t.Fatalf("nobody cannot write its own tenant's volume: %v %s", err, out)
	}
	out, err := writes("t2/w")
	if err == nil {
		t.Fatalf("nobody wrote t2/w with a grant for t1 only: %s", out)
	}
	// root still reads t2/w untouched: zeros where nobody would have written.
	run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0 0 64k", uri("t2/w"))

	// A revoked grant takes effect for the next connection.
	var id string
	for _, line := range strings.Split(g.mustSluice("tenant", "list"), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[1] == "t1" {
			id = f[0]
		}
	}
	g.mustSluice("tenant", "revoke", id)
	if out, err := writes("t1/v"); err == nil {
		t.Fatalf("nobody wrote t1/v after its grant was revoked: %s", out)
	}
}

// TestSecurityLocalFiles: what the gateway creates is not readable by
// other users: the pool, the metadata, the sockets.
func TestSecurityLocalFiles(t *testing.T) {
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.mustSluice("volume", "create", "t/v", "--size", "64M")
	openToAll(t, dir)
	for _, f := range []string{"pool", "meta", "api.sock", "nbd.sock", "lock"} {
		if out, err := asNobody("cat", dir+"/"+f); err == nil {
			t.Errorf("nobody read %s: %.40q", f, out)
		}
	}
	if out, err := asNobody("nbdinfo", "--list", "nbd+unix://?socket="+g.nbdSock); err == nil {
		t.Errorf("nobody reached the NBD unix socket: %s", out)
	}
	out, err := asNobody(sluiceBin, "--api-socket", g.api, "volume", "list")
	if err == nil {
		t.Errorf("nobody used the admin API: %s", out)
	}
}

// TestSecurityNonLoopbackNBDRefused: an NBD listener beyond loopback is
// refused at start (it would serve anyone on the network, in the clear).
func TestSecurityNonLoopbackNBDRefused(t *testing.T) {
	out := startFails(t, "--data-dir", t.TempDir(), "--nbd-listen", "0.0.0.0:0")
	if !strings.Contains(out, "not a loopback address") {
		t.Fatalf("--nbd-listen 0.0.0.0: %q", out)
	}
}

// sysPython is Debian's python3, which nobody can run (a pyenv shim in
// root's PATH cannot).
const sysPython = "/usr/bin/python3"

// floodScript opens N TCP connections to HOST:PORT, reads each one's
// NBD greeting, and prints how many got one (the rest were closed).
const floodScript = `
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks, greeted = [], 0
for _ in range(n):
    s = socket.create_connection((host, port), timeout=10)
    socks.append(s)
    b = b""
    try:
        while len(b) < 18:
            c = s.recv(18 - len(b))
            if not c:
                break
            b += c
    except OSError:
        pass
    greeted += len(b) == 18
print(greeted)
`

// TestSecurityConnectionFlood: nobody opening 100 NBD connections gets
// at most the per-client cap (64); the gateway still serves root.
func TestSecurityConnectionFlood(t *testing.T) {
	testtool.Need(t, sysPython, "qemu-io")
	addr := freeLoopbackAddr(t)
	g := startGateway(t, t.TempDir(), "--nbd-listen", addr)
	g.mustSluice("volume", "create", "t/v", "--size", "64M")
	host, port, _ := strings.Cut(addr, ":")
	out, err := asNobody(sysPython, "-c", floodScript, host, port, "100")
	if err != nil {
		t.Fatalf("flood as nobody: %v %s", err, out)
	}
	if n := strings.TrimSpace(out); n != "64" {
		t.Fatalf("nobody held %s of 100 connections, want the cap of 64", n)
	}
	run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read 0 4k", g.uri("t/v"))
}

// TestSecurityVirtioSocket: nobody cannot connect to a virtio export.
func TestSecurityVirtioSocket(t *testing.T) {
	testtool.Need(t, sysPython)
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.mustSluice("volume", "create", "t/v", "--size", "64M")
	sock := strings.TrimSpace(g.mustSluice("virtio", "export", "t/v"))
	openToAll(t, dir)
	script := "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
	out, err := asNobody(sysPython, "-c", script, sock)
	if err == nil || !strings.Contains(out, "PermissionError") {
		t.Fatalf("nobody connecting to the virtio socket %s: %v %s; want PermissionError", sock, err, out)
	}
}
