package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/etcdtest"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// TestControllerEtcdQuorumLoss: the failure table's "etcd loses quorum"
// row (docs/CONTROLLER.md). Three controller replicas on a 3-member etcd,
// one gateway following them with a 4 s grace. Two members are killed:
// the leader's session ends (it logs `session lost`), no replica leads,
// an SLO write fails with an error instead of landing somewhere, `cluster
// status` says etcd is unhealthy, and the gateway falls back to its
// static rules once its grace is over (and says so). The two members
// start again: a replica leads, the gateway follows its newer term, the
// SLO set before the loss is still there and writes work again.
func TestControllerEtcdQuorumLoss(t *testing.T) {
	etcd := etcdtest.StartCluster(t, 3)
	h := newHACluster(t, haOptions{
		endpoints: strings.Join(etcd.Endpoints(), ","), gateways: 1,
		ctlFlags: []string{"--interval", "200ms", "--report-timeout", "2s"},
		gwFlags:  []string{"--controller-grace", "4s"},
	})
	g := h.gws[0]
	slo := func(args ...string) (string, error) {
		out, err := exec.Command(sluiceBin, append(append([]string{"slo"}, args...), "--controller", h.all, "--token-file", h.tok)...).CombinedOutput()
		return string(out), err
	}
	if out, err := slo("set", "gold", "--min-read-bw", "10MiB"); err != nil {
		t.Fatalf("slo set: %v %s", err, out)
	}
	var before haFollower
	testwait.For(t, "the gateway follows the first leader", func() bool {
		var err error
		before, err = h.state(g)
		return err == nil && before.Following && before.Term != 0 && before.Leader == h.urls[0]
	})

	// Quorum lost: two of three members gone.
	lost := time.Now()
	etcd.Members[1].Kill()
	etcd.Members[2].Kill()
	leaderLog := filepath.Join(h.byURL[h.urls[0]].dir, "controller.log")
	testwait.For(t, "the leader's session ends", func() bool {
		b, _ := os.ReadFile(leaderLog)
		return strings.Contains(string(b), "session lost")
	})
	sessionLost := time.Since(lost)
	testwait.For(t, "the gateway falls back to its static rules", func() bool {
		f, err := h.state(g)
		return err == nil && !f.Following
	})
	fellBack := time.Since(lost)
	if b, _ := os.ReadFile(filepath.Join(g.dir, "gateway.log")); !strings.Contains(string(b), "falling back to local rules") {
		t.Errorf("the gateway fell back without saying so:\n%s", g.logTail())
	}
	if fellBack < 4*time.Second {
		t.Errorf("the gateway fell back %v after the loss, inside its 4 s grace", fellBack)
	}
	// Nobody leads, so no write is taken; the CLI is told so, promptly
	// (each replica bounds its etcd calls: unbounded, a follower's reload
	// held its write lock and the CLI waited out its 5 minutes).
	asked := time.Now()
	out, err := slo("set", "silver", "--min-read-bw", "1MiB")
	took := time.Since(asked)
	t.Logf("slo set without quorum, %v: %s", took.Round(10*time.Millisecond), strings.TrimSpace(out))
	if err == nil {
		t.Errorf("an SLO write without etcd's quorum succeeded: %s", out)
	} else if !strings.Contains(out, "no leader is elected") && !strings.Contains(out, "etcd: no answer") {
		t.Errorf("slo set without quorum does not say why it failed: %s", out)
	}
	if took > 30*time.Second {
		t.Errorf("slo set without quorum took %v", took)
	}
	st, err := h.status(g)
	if err != nil {
		// The status needs a replica; a replica answers it from what it
		// has, and says etcd is not healthy.
		t.Fatalf("cluster status without quorum: %v", err)
	}
	if st.Etcd == nil || st.Etcd.Healthy {
		t.Errorf("cluster status without quorum does not say etcd is unhealthy: %+v", st.Etcd)
	}
	if st.Leader != "" {
		t.Errorf("cluster status without quorum names a leader: %q", st.Leader)
	}

	// Quorum back.
	back := time.Now()
	etcd.Members[1].Start()
	etcd.Members[2].Start()
	etcd.WaitHealthy(time.Minute)
	var after haFollower
	testwait.For(t, "a replica leads and the gateway follows its newer term", func() bool {
		var err error
		after, err = h.state(g)
		return err == nil && after.Following && after.Term > before.Term && h.byURL[after.Leader] != nil
	})
	t.Logf("quorum lost: the leader's session ended after %v, the gateway fell back after %v; quorum back: %s leads term %d (was %d), followed %v after the members started",
		sessionLost.Round(10*time.Millisecond), fellBack.Round(10*time.Millisecond), after.Leader, after.Term, before.Term, time.Since(back).Round(10*time.Millisecond))
	out, err = slo("list")
	if err != nil || !strings.Contains(out, "gold") {
		t.Fatalf("the SLO set before the quorum loss: %v %s", err, out)
	}
	testwait.For(t, "writes are taken again", func() bool {
		_, err := slo("set", "silver", "--min-read-bw", "1MiB")
		return err == nil
	})
	if out, err := slo("list"); err != nil || !strings.Contains(out, "silver") {
		t.Fatal(fmt.Errorf("the SLO written after the quorum came back: %v %s", err, out))
	}
}
