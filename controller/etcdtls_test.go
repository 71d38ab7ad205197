package controller

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-storage/sluice/internal/etcdtest"
	"github.com/sluice-storage/sluice/internal/testpki"
	"github.com/sluice-storage/sluice/internal/testwait"
)

// TestEtcdTLSAuth: a controller store on an etcd that serves only TLS,
// requires client certificates and has authentication enabled, as a user
// whose role may read and write the controller's prefix and nothing else.
// Everything the store does works with that: the schema transaction, the
// session's lease (grant, keep-alive, revoke), the election, fenced
// writes, the generation, loads, the replicas and etcd's status.
func TestEtcdTLSAuth(t *testing.T) {
	ctx := context.Background()
	srv := etcdtest.StartTLS(t)
	etcdtest.EnableAuth(t, srv.Client(t, "admin", "", ""), "rootpw")
	root := srv.Client(t, "admin", "root", "rootpw")
	const prefix = "/clusters/a/sluice/"
	etcdtest.AddPrefixUser(t, root, "sluice", "pw", prefix)
	cert, key := srv.ClientCert(t, "controller")
	o := EtcdOptions{Endpoints: []string{srv.URL}, Prefix: prefix, CACert: srv.CAFile, Cert: cert, Key: key,
		Username: "sluice", Password: "pw", Name: "http://a", SessionTTL: 15 * time.Second, Logger: quietLogger()}
	st, err := openEtcdStore(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "it leads", func() bool { return st.Term() != 0 })
	if err := st.Put(ctx, keySLO+"gold", SLO{Tenant: "gold"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.NextGeneration(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if slos, _, err := st.Load(ctx); err != nil || len(slos) != 1 {
		t.Fatalf("load: %v %v", slos, err)
	}
	if h := st.Health(ctx); !h.Healthy {
		t.Fatalf("etcd's status as the prefix's user: %+v", h)
	}
	if reps, err := st.Replicas(ctx); err != nil || len(reps) != 1 || st.Leader(ctx) != "http://a" {
		t.Fatalf("replicas %v %v, leader %q", reps, err, st.Leader(ctx))
	}
	if resp, err := root.Get(ctx, prefix+keySLO+"gold"); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the SLO in etcd: %v %v", resp, err)
	}
	// The keep-alives are permitted: the lease's remaining time rises.
	st.mu.Lock()
	lease := st.session.Lease()
	st.mu.Unlock()
	low := int64(-1)
	testwait.For(t, "the session's lease renewed", func() bool {
		r, err := st.cli.TimeToLive(ctx, lease)
		if err != nil || r.TTL < 1 {
			t.Fatalf("lease: %v %v", r, err)
		}
		if low >= 0 && r.TTL > low {
			return true
		}
		if low < 0 || r.TTL < low {
			low = r.TTL
		}
		return false
	})
	if err := st.Delete(ctx, keySLO+"gold"); err != nil {
		t.Fatal(err)
	}
	// Close revokes the lease: the election key goes at once.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if resp, err := root.Get(ctx, prefix+keyElection, clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("election keys after Close: %v %v", resp.Kvs, err)
	}

	// Without a user, etcd takes the client certificate's common name.
	cn := o
	cn.Cert, cn.Key = srv.ClientCert(t, "sluice")
	cn.Username, cn.Password = "", ""
	st, err = openEtcdStore(ctx, cn)
	if err != nil {
		t.Fatalf("certificate CN sluice without a password: %v", err)
	}
	testwait.For(t, "it leads", func() bool { return st.Term() != 0 })
	if err := st.Put(ctx, keySLO+"silver", SLO{Tenant: "silver"}); err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// TestEtcdTLSAuthRefusals: every way of not being let in fails the store's
// start within the dial timeout with an error that names the cause, also
// when etcd's client itself would only say "context deadline exceeded".
func TestEtcdTLSAuthRefusals(t *testing.T) {
	srv := etcdtest.StartTLS(t)
	etcdtest.EnableAuth(t, srv.Client(t, "admin", "", ""), "rootpw")
	root := srv.Client(t, "admin", "root", "rootpw")
	etcdtest.AddPrefixUser(t, root, "sluice", "pw", DefaultEtcdPrefix)
	etcdtest.AddPrefixUser(t, root, "other", "pw", "/clusters/b/")
	cert, key := srv.ClientCert(t, "controller")
	good := EtcdOptions{Endpoints: []string{srv.URL}, CACert: srv.CAFile, Cert: cert, Key: key,
		Username: "sluice", Password: "pw", Name: "http://a", DialTimeout: 5 * time.Second, Logger: quietLogger()}
	otherCA, err := testpki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(otherCAFile, otherCA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	type refusal struct {
		name string
		o    EtcdOptions
		want []string // one of them
	}
	var cases []refusal
	add := func(name string, change func(o *EtcdOptions), want ...string) {
		o := good
		change(&o)
		cases = append(cases, refusal{name, o, want})
	}
	// Refusals etcd answers need the handshake and the authentication
	// done within the dial timeout: 15 s for those (5 s was once too
	// short beside stress-ng and -race), 5 s for those only a timeout
	// ends, so that the test stays short.
	add("wrong password", func(o *EtcdOptions) { o.Password, o.DialTimeout = "wrong", 15*time.Second }, "authentication failed")
	add("a user of another prefix", func(o *EtcdOptions) { o.Username, o.DialTimeout = "other", 15*time.Second },
		"needs readwrite on every key under "+DefaultEtcdPrefix)
	add("no client certificate", func(o *EtcdOptions) { o.Cert, o.Key = "", "" },
		"tls: certificate required", "tls: bad certificate")
	add("no client certificate, no user", func(o *EtcdOptions) { o.Cert, o.Key, o.Username, o.Password = "", "", "", "" },
		"tls: certificate required", "tls: bad certificate")
	add("a CA that does not match", func(o *EtcdOptions) { o.CACert = otherCAFile }, "certificate signed by unknown authority")
	add("a certificate's CN that is no user, no user", func(o *EtcdOptions) { o.Username, o.Password, o.DialTimeout = "", "", 15*time.Second },
		"permission denied")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + l.Addr().String()
	l.Close()
	add("no etcd there", func(o *EtcdOptions) { o.Endpoints = []string{closed} }, "connection refused")

	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			st, err := openEtcdStore(context.Background(), c.o)
			took := time.Since(t0)
			if err == nil {
				st.Close()
				t.Errorf("%s: opened", c.name)
				return
			}
			t.Logf("%s (%v): %v", c.name, took.Round(time.Millisecond), err)
			if !containsAny(err.Error(), c.want) {
				t.Errorf("%s: %v, want it to name %q", c.name, err, c.want)
			}
			// The dial timeout (seven stores dial at once, on a machine
			// that may be busy, and a connection or an authentication
			// not done by then leaves only "context deadline exceeded")
			// bounds a failed handshake with a user, the schema check
			// (twice the dial timeout) one without.
			if took > 40*time.Second {
				t.Errorf("%s: took %v", c.name, took)
			}
		}()
	}
	wg.Wait()
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestLastCauseExplains: a bare deadline gets the recorded cause; a call
// that got through forgets it; other errors are left alone.
func TestLastCauseExplains(t *testing.T) {
	var l lastCause
	ic := l.interceptor()
	call := func(err error) {
		ic(context.Background(), "/m", nil, nil, nil, func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
			return err
		})
	}
	deadline := context.DeadlineExceeded
	if got := l.explain(deadline); got != deadline {
		t.Fatalf("nothing recorded: %v", got)
	}
	cause := status.Error(codes.DeadlineExceeded, `latest balancer error: connection error: desc = "tls: certificate required"`)
	call(cause)
	got := l.explain(deadline)
	if !errors.Is(got, context.DeadlineExceeded) || !strings.Contains(got.Error(), "tls: certificate required") {
		t.Fatalf("explained: %v", got)
	}
	other := errors.New("etcdserver: permission denied")
	if l.explain(other) != other {
		t.Fatal("a non-deadline error was changed")
	}
	call(status.Error(codes.DeadlineExceeded, context.DeadlineExceeded.Error())) // says nothing more: kept
	if !strings.Contains(l.explain(deadline).Error(), "certificate required") {
		t.Fatal("a bare deadline replaced the cause")
	}
	call(nil)
	if l.explain(deadline) != deadline {
		t.Fatal("a successful call did not clear the cause")
	}
}
