package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/internal/etcdtest"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// startEtcd: a real one-member etcd in this process (internal/etcdtest).
func startEtcd(t *testing.T) string { return etcdtest.Start(t) }

// etcdLeaderOf returns a function reading the leading controller
// replica's URL from etcd at eps (comma-separated; "" while none leads).
func etcdLeaderOf(t *testing.T, eps string) func() string {
	cli := etcdClientOf(t, eps)
	return func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, controller.DefaultEtcdPrefix+"election/", clientv3.WithFirstCreate()...)
		if err != nil || len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}
}

// etcdClientOf is an etcd client of eps (comma-separated), closed when
// the test ends.
func etcdClientOf(t *testing.T, eps string) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(eps, ","), DialTimeout: 5 * time.Second})
	must(t, err)
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestControllerEtcdFailover: two `sluice controller` processes on one
// etcd. One leads; the follower answers reads and refuses writes naming the
// leader, which the CLI follows; SIGKILL the leader and the follower takes over (the time is
// logged: the goal is 3 s); the SLOs survive a restart of both.
func TestControllerEtcdFailover(t *testing.T) {
	ep := startEtcd(t)
	leader := etcdLeaderOf(t, ep)
	// Replicas share the API token.
	tok := filepath.Join(t.TempDir(), "token")
	must(t, os.WriteFile(tok, []byte(strings.Repeat("t", 32)+"\n"), 0o600))
	flags := []string{"--etcd-endpoints", ep, "--token-file", tok, "--interval", "200ms", "--report-timeout", "1s"}
	slo := func(c *ctl, args ...string) (string, error) {
		out, err := exec.Command(sluiceBin, append(append([]string{"slo"}, args...), "--controller", c.url(), "--token-file", tok)...).CombinedOutput()
		return string(out), err
	}

	a := startController(t, t.TempDir(), freeLoopbackAddr(t), flags...)
	testwait.For(t, "a leads", func() bool { return leader() == a.url() })
	b := startController(t, t.TempDir(), freeLoopbackAddr(t), flags...)
	if out, err := slo(a, "set", "gold", "--min-read-bw", "1000"); err != nil {
		t.Fatalf("slo set on the leader: %v %s", err, out)
	}
	// The CLI pointed at the follower follows its "not the leader"
	// answer (which names the leader) to the leader.
	if out, err := slo(b, "set", "bronze", "--min-read-bw", "1000"); err != nil {
		t.Fatalf("slo set through the follower: %v %s", err, out)
	}
	if out, err := slo(a, "list"); err != nil || !strings.Contains(out, "bronze") {
		t.Fatalf("the leader does not hold the SLO set through the follower: %v %s", err, out)
	}
	testwait.For(t, "the follower lists gold", func() bool {
		out, err := slo(b, "list")
		return err == nil && strings.Contains(out, "gold")
	})

	t0 := time.Now()
	a.kill()
	testwait.For(t, "b leads in etcd", func() bool { return leader() == b.url() })
	elected := time.Since(t0)
	testwait.For(t, "b accepts writes", func() bool {
		_, err := slo(b, "set", "silver", "--min-read-bw", "1000")
		return err == nil
	})
	writable := time.Since(t0)
	t.Logf("after SIGKILL of the leader: b elected in %v, accepting writes in %v (goal 3 s)", elected, writable)
	// The lease is 2 s; anything far beyond is a bug, not a busy machine.
	if elected > 6*time.Second {
		t.Errorf("failover took %v", elected)
	}

	// Restart a: it follows b and sees both SLOs.
	a.start()
	testwait.For(t, "a lists gold and silver", func() bool {
		out, err := slo(a, "list")
		return err == nil && strings.Contains(out, "gold") && strings.Contains(out, "silver")
	})
	if leader() != b.url() {
		t.Errorf("leader after a's restart: %q, want %s", leader(), b.url())
	}
}
