package controller

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-storage/sluice/internal/etcdtest"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// startEtcd: a real one-member etcd in this process (internal/etcdtest).
func startEtcd(t *testing.T) string { return etcdtest.Start(t) }

func etcdClient(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func openTestEtcdStore(t *testing.T, endpoint, name string) *etcdStore {
	t.Helper()
	st, err := openEtcdStore(context.Background(), EtcdOptions{Endpoints: []string{endpoint}, Name: name, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// openReplica is a controller on the etcd store with its rounds running,
// advertising name (a URL).
func openReplica(t *testing.T, endpoint, name string) *Server {
	t.Helper()
	s, err := Open(context.Background(), Options{Store: openTestEtcdStore(t, endpoint, name), Interval: 100 * time.Millisecond,
		Logger: quietLogger(), Advertise: name})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-ran
		s.Close()
	})
	return s
}

func TestEtcdStoreSurvivesRestart(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	gold := SLO{Tenant: "gold", Min: Rates{ReadBPS: 30 * mb}, Max: Rates{WriteBPS: 100 * mb}}
	silver := SLO{Tenant: "silver", Min: Rates{ReadIOPS: 500}}

	s := openReplica(t, ep, "http://a")
	testwait.For(t, "the only replica leads", s.Leading)
	for _, slo := range []SLO{gold, silver} {
		if _, err := s.SetSLO(ctx, slo); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteSLO(ctx, "silver"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(ctx, GatewayRegistration{ID: "gw1", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The records are in etcd under the prefix, as JSON.
	cli := etcdClient(t, ep)
	resp, err := cli.Get(ctx, DefaultEtcdPrefix+"slo/gold")
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"tenant":"gold"`) {
		t.Fatalf("slo/gold in etcd: %v, %v", resp, err)
	}

	// A new controller on the same etcd sees the same desired state.
	s2 := openReplica(t, ep, "http://b")
	if got := s2.SLOs(); len(got) != 1 || got[0] != gold {
		t.Fatalf("SLOs after restart = %+v, want [%+v]", got, gold)
	}
	s2.mu.Lock()
	_, ok := s2.gws["gw1"]
	s2.mu.Unlock()
	if !ok {
		t.Fatal("gateway gw1 not registered after restart")
	}
	testwait.For(t, "the restarted replica leads", s2.Leading)
}

func TestEtcdOneLeaderAndFailover(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	a := openReplica(t, ep, "http://a")
	testwait.For(t, "a replica leads", a.Leading)
	b := openReplica(t, ep, "http://b")
	testwait.For(t, "b knows the leader", func() bool { return b.Leader(ctx) == "http://a" })
	// b has campaigned (its session and key exist) but must not lead.
	testwait.For(t, "b campaigns", func() bool {
		resp, err := etcdClient(t, ep).Get(ctx, DefaultEtcdPrefix+keyElection, clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	})
	if b.Leading() || b.store.Term() != 0 || !a.Leading() {
		t.Fatalf("leading: a %v, b %v (term %d): want exactly a", a.Leading(), b.Leading(), b.store.Term())
	}

	// A follower refuses writes, naming the leader, also over HTTP...
	_, err := b.SetSLO(ctx, SLO{Tenant: "gold"})
	var nl *NotLeaderError
	if !errors.As(err, &nl) || nl.Leader != "http://a" || !errors.Is(err, ErrNotLeader) {
		t.Fatalf("SetSLO on the follower: %v", err)
	}
	hs := httptest.NewServer(b.Handler())
	defer hs.Close()
	c, err := NewClient(hs.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.SetSLO(ctx, SLO{Tenant: "gold"})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || !strings.Contains(ae.Message, "http://a") {
		t.Fatalf("SetSLO on the follower over HTTP: %v", err)
	}
	// ...and answers reads with what the leader wrote.
	gold := SLO{Tenant: "gold", Min: Rates{ReadBPS: mb}}
	if _, err := a.SetSLO(ctx, gold); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the follower sees the leader's SLO", func() bool {
		got, err := c.SLO(ctx, "gold")
		return err == nil && got == gold
	})

	// The leader's session ends (its lease revoked, as when it expires):
	// b takes over.
	ast := a.store.(*etcdStore)
	ast.mu.Lock()
	sess := ast.session
	ast.mu.Unlock()
	t0 := time.Now()
	if _, err := ast.cli.Revoke(ctx, sess.Lease()); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b leads", func() bool { return b.store.Term() != 0 })
	took := time.Since(t0)
	t.Logf("failover: b's store leads %v after a's lease was revoked", took)
	if took > 3*time.Second {
		t.Errorf("failover took %v, goal 3 s", took)
	}
	testwait.For(t, "b's server leads and a's follows", func() bool { return b.Leading() && !a.Leading() })
	t.Logf("failover: b's server leads %v after a's lease was revoked", time.Since(t0))
	if _, err := b.SetSLO(ctx, SLO{Tenant: "silver"}); err != nil {
		t.Fatalf("SetSLO on the new leader: %v", err)
	}
	if _, err := a.SetSLO(ctx, SLO{Tenant: "bronze"}); !errors.As(err, &nl) || nl.Leader != "http://b" {
		t.Fatalf("SetSLO on the deposed leader: %v", err)
	}
}

func TestEtcdFencing(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	a := openTestEtcdStore(t, ep, "http://a")
	defer a.Close()
	testwait.For(t, "a leads", func() bool { return a.Term() != 0 })
	b := openTestEtcdStore(t, ep, "http://b")
	defer b.Close()

	// a is paused past its lease: the lease is gone, but a has not
	// noticed and still holds its fence.
	a.mu.Lock()
	stale, sess := *a.lead, a.session
	a.mu.Unlock()
	if _, err := a.cli.Revoke(ctx, sess.Lease()); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "b leads", func() bool { return b.Term() != 0 })
	if err := b.Put(ctx, keySLO+"gold", SLO{Tenant: "gold", Min: Rates{ReadBPS: 2 * mb}}); err != nil {
		t.Fatal(err)
	}

	// Without the fence the deposed leader's write would land: the same
	// client's plain Put does.
	probe := DefaultEtcdPrefix + "probe"
	if _, err := a.cli.Put(ctx, probe, "unfenced"); err != nil {
		t.Fatalf("unfenced put: %v", err)
	}
	// With it, the write is refused and b's value stays.
	err := a.commit(ctx, stale, nil, clientv3.OpPut(DefaultEtcdPrefix+keySLO+"gold", `{"tenant":"gold"}`))
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's fenced write: %v, want ErrNotLeader", err)
	}
	t.Logf("deposed leader's write refused: %v", err)
	slos, _, err := b.Load(ctx)
	if err != nil || slos["gold"].Min.ReadBPS != 2*mb {
		t.Fatalf("gold after the deposed write: %+v, %v", slos["gold"], err)
	}
}

func TestEtcdSchemaVersion(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	st := openTestEtcdStore(t, ep, "http://a")
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	cli := etcdClient(t, ep)
	resp, err := cli.Get(ctx, DefaultEtcdPrefix+keySchema)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != EtcdSchema {
		t.Fatalf("schema key: %v, %v", resp, err)
	}
	if _, err := cli.Put(ctx, DefaultEtcdPrefix+keySchema, "2"); err != nil {
		t.Fatal(err)
	}
	_, err = openEtcdStore(ctx, EtcdOptions{Endpoints: []string{ep}, Name: "http://a", Logger: quietLogger()})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `schema version "2"`) {
		t.Fatalf("opening a prefix with schema 2: %v", err)
	}
	t.Logf("refused: %v", err)
	// Another prefix is a separate state.
	other, err := openEtcdStore(ctx, EtcdOptions{Endpoints: []string{ep}, Prefix: "/other", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
}

func TestEtcdAuth(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	cli := etcdClient(t, ep)
	if _, err := cli.UserAdd(ctx, "root", "secret"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	open := func(user, pass string) (*etcdStore, error) {
		return openEtcdStore(ctx, EtcdOptions{Endpoints: []string{ep}, Username: user, Password: pass, Name: "http://a", Logger: quietLogger()})
	}
	if _, err := open("root", "wrong"); err == nil {
		t.Fatal("opened with a wrong password")
	} else {
		t.Logf("wrong password: %v", err)
	}
	if _, err := open("", ""); err == nil {
		t.Fatal("opened without credentials on an etcd with auth enabled")
	}
	st, err := open("root", "secret")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	testwait.For(t, "it leads", func() bool { return st.Term() != 0 })
	if err := st.Put(ctx, keySLO+"gold", SLO{Tenant: "gold"}); err != nil {
		t.Fatal(err)
	}
	// A client certificate needs its key (checked before dialling).
	if _, err := openEtcdStore(ctx, EtcdOptions{Endpoints: []string{ep}, Cert: "c.pem"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("--etcd-cert without --etcd-key: %v", err)
	}
}
