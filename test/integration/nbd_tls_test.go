package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testpki"
	"github.com/sluice-storage/sluice/internal/testtool"
)

// tlsGateway starts a gateway whose NBD TCP door requires TLS with a
// client certificate, and writes client certificate directories (qemu's
// tls-creds-x509 and libnbd's tls-certificates layout) for tenants.
type tlsSetup struct {
	ca        *testpki.CA
	serverDir string
}

func newTLSSetup(t *testing.T) *tlsSetup {
	t.Helper()
	ca, err := testpki.NewCA()
	must(t, err)
	leaf, err := ca.Issue("localhost", true)
	must(t, err)
	s := &tlsSetup{ca: ca, serverDir: filepath.Join(t.TempDir(), "server")}
	must(t, ca.WriteDir(s.serverDir, "server", leaf))
	return s
}

// clientDir writes a client certificate for tenant and returns its dir.
func (s *tlsSetup) clientDir(t *testing.T, tenant string) string {
	t.Helper()
	leaf, err := s.ca.Issue(tenant, false)
	must(t, err)
	dir := filepath.Join(t.TempDir(), "client-"+tenant)
	must(t, s.ca.WriteDir(dir, "client", leaf))
	return dir
}

func (s *tlsSetup) gatewayFlags() []string {
	return []string{
		"--nbd-tls-cert", filepath.Join(s.serverDir, "server-cert.pem"),
		"--nbd-tls-key", filepath.Join(s.serverDir, "server-key.pem"),
		"--nbd-tls-ca", filepath.Join(s.serverDir, "ca-cert.pem"),
	}
}

// qemuTLS runs qemu-io on export over TLS with the certificates in dir.
func qemuTLS(addr, export, dir string, cmds ...string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	args := []string{"--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir,
		"--image-opts", "driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port + ",export=" + export + ",tls-creds=tls0"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	return string(out), err
}

// TestNBDTLS: with TLS required on the TCP door, qemu (tls-creds-x509)
// and libnbd (nbds://) clients get in with a certificate whose common
// name is their tenant and see and use that tenant's volumes only; a
// client without TLS gets nothing; the unix socket stays plain.
func TestNBDTLS(t *testing.T) {
	testtool.Need(t, "qemu-io", "nbdinfo")
	s := newTLSSetup(t)
	addr := freeLoopbackAddr(t)
	g := startGateway(t, t.TempDir(), append([]string{"--nbd-listen", addr}, s.gatewayFlags()...)...)
	g.mustSluice("volume", "create", "t1/v", "--size", "64M")
	g.mustSluice("volume", "create", "t2/w", "--size", "64M")
	t1 := s.clientDir(t, "t1")

	if out, err := qemuTLS(addr, "t1/v", t1, "write -P 0x71 0 1M", "read -P 0x71 0 1M"); err != nil {
		t.Fatalf("qemu-io over TLS with t1's certificate: %v\n%s", err, out)
	}
	if out, err := qemuTLS(addr, "t2/w", t1, "read 0 4k"); err == nil {
		t.Fatalf("t1's certificate opened t2/w:\n%s", out)
	}
	out := run(t, time.Minute, "nbdinfo", "--list", "nbds://"+addr+"?tls-certificates="+t1)
	if !strings.Contains(out, "t1/v") || strings.Contains(out, "t2/w") {
		t.Fatalf("nbdinfo --list over TLS for t1:\n%s", out)
	}
	// Without TLS: refused before anything is listed or opened.
	if out, err := exec.Command("nbdinfo", "--list", "nbd://"+addr).CombinedOutput(); err == nil || strings.Contains(string(out), "t1/v") {
		t.Fatalf("nbdinfo --list without TLS: %v\n%s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read 0 4k", "nbd://"+addr+"/t1/v").CombinedOutput(); err == nil {
		t.Fatalf("qemu-io without TLS read t1/v:\n%s", out)
	}
	// The unix socket (mode 0600, root's) is not affected.
	run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x71 0 1M", g.uri("t1/v"))
}

// TestNBDTLSFlags: the TLS flags go together (a usage error otherwise).
func TestNBDTLSFlags(t *testing.T) {
	s := newTLSSetup(t)
	cmd := exec.Command(sluiceBin, "gateway", "--data-dir", t.TempDir(), "--nbd-listen", "127.0.0.1:0",
		"--nbd-tls-cert", filepath.Join(s.serverDir, "server-cert.pem"))
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "go together") {
		t.Errorf("one TLS flag alone: %v %q; want exit 2", err, out)
	}
}
