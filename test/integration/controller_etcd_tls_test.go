package integration

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-storage/sluice/internal/etcdtest"
	"github.com/sluice-storage/sluice/internal/testpki"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// TestControllerEtcdTLSAuth: `sluice controller` against an etcd that
// serves clients only over TLS, requires client certificates signed by its
// CA and has authentication on, as a user whose role may read and write
// the controller's --etcd-prefix and nothing else. With the right CA,
// certificate, user and password file the controller leads, an SLO set
// through it lands under the prefix (read back as that user) and is
// listed, etcd is healthy in `cluster status`, and SIGTERM revokes its
// election lease. A wrong password, no client certificate or a CA that
// does not match each make it exit 4 before it serves, within the etcd
// client's 5 s dial timeout, with an error naming the cause; the password
// is never in its output.
func TestControllerEtcdTLSAuth(t *testing.T) {
	srv := etcdtest.StartTLS(t)
	etcdtest.EnableAuth(t, srv.Client(t, "admin", "", ""), "root-pw")
	root := srv.Client(t, "admin", "root", "root-pw")
	const prefix, password = "/clusters/a/sluice/", "etcd-pw-do-not-log"
	etcdtest.AddPrefixUser(t, root, "sluice", password, prefix)

	dir := t.TempDir()
	pwFile := filepath.Join(dir, "etcd-password")
	must(t, os.WriteFile(pwFile, []byte(password+"\n"), 0o600))
	wrongPW := filepath.Join(dir, "wrong-password")
	must(t, os.WriteFile(wrongPW, []byte("not-"+password+"\n"), 0o600))
	otherCA, err := testpki.NewCA()
	must(t, err)
	otherCAFile := filepath.Join(dir, "other-ca.pem")
	must(t, os.WriteFile(otherCAFile, otherCA.CertPEM, 0o644))
	tok := filepath.Join(dir, "token")
	must(t, os.WriteFile(tok, []byte(strings.Repeat("t", 32)+"\n"), 0o600))
	cert, key := srv.ClientCert(t, "controller")
	flags := func(cacert, pw string, withCert bool) []string {
		f := []string{"--etcd-endpoints", srv.URL, "--etcd-prefix", prefix, "--etcd-cacert", cacert,
			"--etcd-user", "sluice", "--etcd-password-file", pw, "--token-file", tok, "--interval", "200ms", "--report-timeout", "1s"}
		if withCert {
			f = append(f, "--etcd-cert", cert, "--etcd-key", key)
		}
		return f
	}

	t.Run("refusals", func(t *testing.T) {
		refusals := []struct {
			name  string
			flags []string
			want  string
		}{
			{"wrong password", flags(srv.CAFile, wrongPW, true), "authentication failed, invalid user ID or password"},
			{"no client certificate", flags(srv.CAFile, pwFile, false), "remote error: tls: certificate required"},
			{"a CA that does not match", flags(otherCAFile, pwFile, true), "x509: certificate signed by unknown authority"},
		}
		var wg sync.WaitGroup
		for _, r := range refusals {
			args := append([]string{"controller", "--listen", freeLoopbackAddr(t), "--data-dir", t.TempDir()}, r.flags...)
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, code, took := runRefusedController(t, args)
				t.Logf("%s: exit %d after %v: %s", r.name, code, took.Round(time.Millisecond), lastLine(out))
				switch {
				case code != 4:
					t.Errorf("%s: exit %d, want 4 (start-up failed):\n%s", r.name, code, out)
				case !strings.Contains(out, r.want):
					t.Errorf("%s: the error does not name the cause (%q):\n%s", r.name, r.want, out)
				case strings.Contains(out, "controller ready"):
					t.Errorf("%s: it served before failing:\n%s", r.name, out)
				case strings.Contains(out, password):
					t.Errorf("%s: the password is in the output:\n%s", r.name, out)
				}
				// The dial timeout is 5 s and the TLS probe adds at most 3.
				if took > 12*time.Second {
					t.Errorf("%s: took %v to fail", r.name, took)
				}
			}()
		}
		wg.Wait()
	})

	c := startController(t, t.TempDir(), freeLoopbackAddr(t), flags(srv.CAFile, pwFile, true)...)
	// The values of the election keys: the campaigning replicas' URLs.
	elections := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := root.Get(ctx, prefix+"election/", clientv3.WithPrefix())
		must(t, err)
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Value))
		}
		return out
	}
	testwait.For(t, "the controller leads", func() bool {
		e := elections()
		return len(e) == 1 && e[0] == c.url()
	})
	sluiceCtl := func(args ...string) (string, error) {
		out, err := exec.Command(sluiceBin, append(args, "--controller", c.url(), "--token-file", tok)...).CombinedOutput()
		return string(out), err
	}
	testwait.For(t, "slo set is taken", func() bool {
		_, err := sluiceCtl("slo", "set", "gold", "--min-read-bw", "1000")
		return err == nil
	})
	if out, err := sluiceCtl("slo", "list"); err != nil || !strings.Contains(out, "gold") {
		t.Fatalf("slo list: %v %s", err, out)
	}
	// The SLO is in etcd under the prefix: read it as the controller's
	// user (whose role covers only the prefix).
	user := srv.Client(t, "reader", "sluice", password)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := user.Get(ctx, prefix+"slo/gold")
	must(t, err)
	if len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"gold"`) {
		t.Fatalf("%sslo/gold in etcd: %v", prefix, resp.Kvs)
	}
	if _, err := user.Get(ctx, "/clusters/b/", clientv3.WithPrefix()); err == nil {
		t.Error("the controller's user may read outside its prefix: the test's role is wrong")
	}
	out, err := sluiceCtl("cluster", "status", "--json")
	must(t, err)
	var st haStatus
	must(t, json.Unmarshal([]byte(out), &st))
	if st.Leader != c.url() || st.Etcd == nil || !st.Etcd.Healthy {
		t.Errorf("cluster status: leader %q, etcd %+v:\n%s", st.Leader, st.Etcd, out)
	}

	c.stop()
	if e := elections(); len(e) != 0 {
		t.Errorf("election keys after SIGTERM (the lease was not revoked): %v", e)
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "controller.log"))
	must(t, err)
	if strings.Contains(string(b), password) {
		t.Errorf("the password is in the controller's log:\n%s", b)
	}
}

// runRefusedController runs `sluice ARGS...`, expecting it to exit by
// itself; it returns its output, exit code and run time (it is killed
// after 30 s: -1).
func runRefusedController(t *testing.T, args []string) (string, int, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sluiceBin, args...)
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(t0)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0, took
	case ctx.Err() != nil:
		return string(out), -1, took
	case errors.As(err, &ee):
		return string(out), ee.ExitCode(), took
	}
	t.Errorf("running the controller: %v", err)
	return string(out), -1, took
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
