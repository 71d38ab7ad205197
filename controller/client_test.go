package controller

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// servedReplica is a replica on etcd behind a real HTTP server, advertising
// that server's URL.
type servedReplica struct {
	s  *Server
	hs *httptest.Server
}

func (r servedReplica) url() string { return r.hs.URL }

func openServedReplica(t *testing.T, ep string) servedReplica {
	t.Helper()
	hs := httptest.NewUnstartedServer(nil)
	url := "http://" + hs.Listener.Addr().String()
	s := openReplica(t, ep, url)
	hs.Config.Handler = s.Handler()
	hs.Start()
	t.Cleanup(hs.Close)
	return servedReplica{s: s, hs: hs}
}

// TestClientFollowsTheLeader: a client given every replica's URL, the
// leader last, sends writes and reports to the leader (following a
// follower's answer), finds the new leader when the old one dies, and
// its status comes from the leader even when a follower answers first.
func TestClientFollowsTheLeader(t *testing.T) {
	ep := startEtcd(t)
	ctx := context.Background()
	a := openServedReplica(t, ep)
	testwait.For(t, "a leads", a.s.Leading)
	b, c := openServedReplica(t, ep), openServedReplica(t, ep)
	testwait.For(t, "b and c know the leader", func() bool {
		return b.s.Leader(ctx) == a.url() && c.s.Leader(ctx) == a.url()
	})

	cl, err := NewClient(strings.Join([]string{b.url(), c.url() + "/", a.url()}, ","), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.SetSLO(ctx, SLO{Tenant: "gold", Min: Rates{ReadBPS: mb}}); err != nil {
		t.Fatalf("SetSLO through a follower: %v", err)
	}
	if cl.URL() != a.url() {
		t.Fatalf("client points at %s after the write, want the leader %s", cl.URL(), a.url())
	}
	if _, err := cl.Register(ctx, GatewayRegistration{ID: "gw1"}); err != nil {
		t.Fatal(err)
	}
	rep := Report{Gateway: "gw1", Interval: time.Second}
	if _, err := cl.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	// A follower refuses reports (runtime state is the leader's alone),
	// naming the leader.
	direct, err := NewClient(b.url(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.s.Report(ctx, rep); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Report on a follower: %v, want ErrNotLeader", err)
	}
	// The status through a follower is the leader's: it has the report.
	st, err := direct.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leader != a.url() || st.Replica != a.url() || len(st.Replicas) != 3 || !st.Replicas[0].Leader ||
		st.Etcd == nil || !st.Etcd.Healthy || len(st.Gateways) != 1 || st.Gateways[0].LastReport.IsZero() || st.Term == 0 {
		t.Fatalf("status through the follower b: %+v", st)
	}
	term := st.Term

	// The leader dies: its server stops answering and its lease is
	// revoked. The client finds whichever replica leads next.
	t0 := time.Now()
	a.hs.Close()
	a.s.Close()
	testwait.For(t, "a report reaches a new leader", func() bool {
		_, err := cl.Report(ctx, rep)
		return err == nil
	})
	t.Logf("the client reached the new leader %s %v after the old one died", cl.URL(), time.Since(t0))
	if u := cl.URL(); u != b.url() && u != c.url() {
		t.Fatalf("client points at %s, want b or c", u)
	}
	newLeader := b
	if cl.URL() == c.url() {
		newLeader = c
	}
	if !newLeader.s.Leading() && newLeader.s.store.Term() == 0 {
		t.Fatalf("%s took the report but does not lead", cl.URL())
	}
	testwait.For(t, "the status names the new leader with a newer term", func() bool {
		st, err := cl.Status(ctx)
		return err == nil && st.Leader == newLeader.url() && st.Term > term && len(st.Replicas) == 2
	})
	// Its rounds send gw1 sets of the new term.
	set, ok, err := cl.Assignments(ctx, "gw1", 0, 10*time.Second)
	if err != nil || !ok || set.Term <= term {
		t.Fatalf("assignments from the new leader: %+v %v %v; want a set of a term above %d", set, ok, err, term)
	}
}

func TestClientURLs(t *testing.T) {
	for _, bad := range []string{"", ",", "ftp://x", "http://a,localhost:1"} {
		if _, err := NewClient(bad, ""); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewClient(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	c, err := NewClient(" http://a:1/, http://b:2,http://a:1 ", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.URLs(); len(got) != 2 || got[0] != "http://a:1" || got[1] != "http://b:2" || c.URL() != "http://a:1" {
		t.Fatalf("URLs %v, current %s", got, c.URL())
	}
}
