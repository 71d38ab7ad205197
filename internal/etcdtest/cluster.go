package etcdtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/sluice-storage/sluice/internal/testwait"
)

// memberEnv holds a member's spec (JSON) in the environment of a test
// binary started as an etcd member (see RunMemberIfAsked).
const memberEnv = "SLUICE_ETCDTEST_MEMBER"

// memberSpec is what a member process needs to start or restart.
type memberSpec struct {
	Name           string `json:"name"`
	Dir            string `json:"dir"`
	ClientURL      string `json:"client_url"`
	PeerURL        string `json:"peer_url"`
	InitialCluster string `json:"initial_cluster"`
	Log            string `json:"log"`
}

// RunMemberIfAsked makes a test binary an etcd member when it was started
// as one by StartCluster: call it first in TestMain. It then runs the
// member until SIGTERM (a clean stop) or SIGKILL, and never returns;
// otherwise it returns at once.
func RunMemberIfAsked() {
	raw := os.Getenv(memberEnv)
	if raw == "" {
		return
	}
	var spec memberSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "etcd member: bad %s: %v\n", memberEnv, err)
		os.Exit(2)
	}
	cu, err1 := url.Parse(spec.ClientURL)
	pu, err2 := url.Parse(spec.PeerURL)
	if err1 != nil || err2 != nil {
		fmt.Fprintf(os.Stderr, "etcd member: bad URLs %q %q\n", spec.ClientURL, spec.PeerURL)
		os.Exit(2)
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = spec.Name, spec.Dir
	cfg.LogLevel, cfg.LogOutputs = "warn", []string{spec.Log}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = spec.InitialCluster // ignored on a restart from the data dir
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd member %s: %v\n", spec.Name, err)
		os.Exit(1)
	}
	select {
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd member %s: %v\n", spec.Name, err)
		os.Exit(1)
	case <-stop:
		e.Close()
		os.Exit(0)
	}
}

// Cluster is etcd members on loopback, each its own process (the test
// binary, re-executed: see RunMemberIfAsked), so that killing one is a
// real SIGKILL. Each member keeps its data directory across Kill and
// Start.
type Cluster struct {
	t       testing.TB
	Members []*Member
}

// Member is one etcd member process.
type Member struct {
	t      testing.TB
	spec   memberSpec
	cmd    *exec.Cmd
	exited chan error
}

// StartCluster starts n members as one new cluster and waits until each
// answers /health; the members are stopped (SIGTERM) when the test ends.
// The test binary's TestMain must call RunMemberIfAsked.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var initial []string
	for i := 0; i < n; i++ {
		cu, pu := freeURL(t), freeURL(t)
		dir := t.TempDir()
		name := fmt.Sprintf("m%d", i+1)
		c.Members = append(c.Members, &Member{t: t, spec: memberSpec{
			Name: name, Dir: filepath.Join(dir, "data"), ClientURL: cu.String(), PeerURL: pu.String(),
			Log: filepath.Join(dir, "etcd.log"),
		}})
		initial = append(initial, name+"="+pu.String())
	}
	for _, m := range c.Members {
		m.spec.InitialCluster = strings.Join(initial, ",")
		m.Start()
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Stop()
		}
	})
	c.WaitHealthy(30 * time.Second)
	return c
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.spec.ClientURL)
	}
	return eps
}

// WaitHealthy waits until every running member answers /health with
// "true" (it has a leader and can serve), failing the test after d.
func (c *Cluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for _, m := range c.Members {
		if m.cmd == nil {
			continue
		}
		var exit error
		exited := false
		healthy := testwait.Poll(time.Until(deadline), func() bool {
			select {
			case exit = <-m.exited:
				m.exited <- exit
				exited = true
				return true
			default:
				return m.Healthy()
			}
		})
		if exited {
			c.t.Fatalf("etcd member %s exited: %v\n%s", m.spec.Name, exit, m.LogTail())
		}
		if !healthy {
			c.t.Fatalf("etcd member %s not healthy after %v\n%s", m.spec.Name, d, m.LogTail())
		}
	}
}

// Leader returns the index of the member that leads the raft group, as
// the running members see it (-1 if none answers).
func (c *Cluster) Leader(ctx context.Context) int {
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: nopLogger()})
	if err != nil {
		return -1
	}
	defer cli.Close()
	ids, leader := map[uint64]int{}, uint64(0)
	for i, m := range c.Members {
		if m.cmd == nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, m.spec.ClientURL)
		cancel()
		if err != nil {
			continue
		}
		ids[st.Header.MemberId] = i
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	if i, ok := ids[leader]; ok {
		return i
	}
	return -1
}

// Name is the member's name (m1, m2, ...).
func (m *Member) Name() string { return m.spec.Name }

// ClientURL is the member's client URL.
func (m *Member) ClientURL() string { return m.spec.ClientURL }

// Start starts the member's process on its data directory (new, or the
// one it had before) and returns without waiting for it to serve.
func (m *Member) Start() {
	m.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		m.t.Fatal(err)
	}
	spec, err := json.Marshal(m.spec)
	if err != nil {
		m.t.Fatal(err)
	}
	m.cmd = exec.Command(exe, "-test.run=^$")
	m.cmd.Env = append(os.Environ(), memberEnv+"="+string(spec))
	// A member dies with the test process, even when that is killed.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := os.OpenFile(m.spec.Log+".stderr", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		m.t.Fatal(err)
	}
	m.cmd.Stdout, m.cmd.Stderr = stderr, stderr
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	stderr.Close()
	m.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, ch chan error) { ch <- cmd.Wait() }(m.cmd, m.exited)
}

// Kill sends SIGKILL and waits for the process to end.
func (m *Member) Kill() { m.end(syscall.SIGKILL) }

// Stop sends SIGTERM (the member closes cleanly) and waits.
func (m *Member) Stop() { m.end(syscall.SIGTERM) }

func (m *Member) end(sig syscall.Signal) {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(sig)
	select {
	case <-m.exited:
	case <-time.After(20 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
	}
	m.cmd = nil
}

// Healthy reports whether the member answers GET /health with "true".
func (m *Member) Healthy() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(m.spec.ClientURL + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var h struct {
		Health string `json:"health"`
	}
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&h) == nil && h.Health == "true"
}

// LogTail is the end of the member's log (warnings and errors).
func (m *Member) LogTail() string {
	var out []byte
	for _, p := range []string{m.spec.Log, m.spec.Log + ".stderr"} {
		b, _ := os.ReadFile(p)
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		out = append(out, b...)
	}
	return string(out)
}
