package integration

import (
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestControllerRequiresToken: a controller started without --token-file
// generates a token (mode 0600) and refuses every API call without it,
// also on loopback; an unprivileged user can neither read the token nor
// change an SLO or register a gateway (issue 17).
func TestControllerRequiresToken(t *testing.T) {
	dir := t.TempDir()
	c := startController(t, dir, freeLoopbackAddr(t))
	fi, err := os.Stat(c.tokenFile())
	if err != nil {
		t.Fatalf("no generated token: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %04o, want 0600", fi.Mode().Perm())
	}
	for _, req := range []struct{ method, path, body string }{
		{"PUT", "/v1/slos/acme", `{"tenant":"acme","min":{"read_bps":1000}}`},
		{"POST", "/v1/gateways", `{"id":"fake","url":"unix:///tmp/x"}`},
		{"GET", "/v1/slos", ""},
	} {
		r, err := http.NewRequest(req.method, c.url()+req.path, strings.NewReader(req.body))
		must(t, err)
		resp, err := http.DefaultClient.Do(r)
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: %d, want 401", req.method, req.path, resp.StatusCode)
		}
	}
	// The CLI: without the token refused (exit 1, says what to pass),
	// with it accepted.
	cmd := exec.Command(sluiceBin, "slo", "set", "acme", "--min-read-bw", "1000", "--controller", c.url())
	cmd.Dir = t.TempDir() // no ./sluice-controller/token here
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "token") {
		t.Errorf("slo set without a token: %v %q", err, out)
	}
	if out, err := exec.Command(sluiceBin, "slo", "set", "acme", "--min-read-bw", "1000", "--controller", c.url(), "--token-file", c.tokenFile()).CombinedOutput(); err != nil {
		t.Fatalf("slo set with the token: %v %s", err, out)
	}
	// Another user cannot read it.
	openToAll(t, dir)
	if out, err := asNobody("cat", c.tokenFile()); err == nil {
		t.Errorf("nobody read the controller's token: %q", out)
	}
}
