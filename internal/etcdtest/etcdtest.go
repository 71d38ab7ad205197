// Package etcdtest runs real etcd servers (go.etcd.io/etcd's embed
// package) on loopback ports with their data in temporary directories, for
// the controller's unit and integration tests: Start runs one member inside
// the test process; StartCluster runs several, each its own process (the
// test binary re-executed), so that one can be killed.
package etcdtest

import (
	"net"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Start starts the server, waits until it is ready and stops it when the
// test ends; it returns the client URL.
func Start(t testing.TB) string {
	t.Helper()
	cfg := newConfig(t, "http")
	start(t, cfg)
	return cfg.ListenClientUrls[0].String()
}

// newConfig is a one-member configuration on free loopback ports, clients
// served over scheme (http or https), data in a temporary directory.
func newConfig(t testing.TB, scheme string) *embed.Config {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop()) // it logs errors on a normal Close
	cu, pu := freeURL(t), freeURL(t)
	cu.Scheme = scheme
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	return cfg
}

// start starts the member cfg describes, waits until it is ready and
// stops it when the test ends.
func start(t testing.TB, cfg *embed.Config) {
	t.Helper()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready after 30 s")
	}
}

// freeURL is a loopback URL on a port the kernel just handed out.
func freeURL(t testing.TB) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return url.URL{Scheme: "http", Host: addr}
}

// nopLogger keeps the etcd client quiet (it logs its retries).
func nopLogger() *zap.Logger { return zap.NewNop() }
