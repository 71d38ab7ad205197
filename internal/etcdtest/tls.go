package etcdtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sluice-storage/sluice/internal/testpki"
)

// TLSServer is a one-member etcd that serves clients over https only and
// requires a client certificate signed by CA (etcd's --client-cert-auth
// with --trusted-ca-file).
type TLSServer struct {
	// URL is the client URL: https://127.0.0.1:PORT.
	URL string
	// CA signed the server's certificate and is the only CA the server
	// trusts for client certificates.
	CA *testpki.CA
	// CAFile holds CA's certificate (PEM): what clients verify the server
	// with (--etcd-cacert, etcdctl's --cacert).
	CAFile string
}

// StartTLS starts a TLSServer with a new CA and a server certificate for
// localhost and the loopback addresses, waits until it is ready and stops
// it when the test ends.
func StartTLS(t testing.TB) *TLSServer {
	t.Helper()
	ca, err := testpki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("localhost", true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WriteDir(dir, "server", leaf); err != nil {
		t.Fatal(err)
	}
	cfg := newConfig(t, "https")
	cfg.ClientTLSInfo = transport.TLSInfo{
		CertFile:       filepath.Join(dir, "server-cert.pem"),
		KeyFile:        filepath.Join(dir, "server-key.pem"),
		TrustedCAFile:  filepath.Join(dir, "ca-cert.pem"),
		ClientCertAuth: true,
	}
	start(t, cfg)
	return &TLSServer{URL: cfg.ListenClientUrls[0].String(), CA: ca, CAFile: filepath.Join(dir, "ca-cert.pem")}
}

// ClientCert issues a client certificate with common name cn and writes
// it and its key (mode 0600) into a new temporary directory. With auth
// enabled etcd takes cn as the user name of a request that carries no
// user token.
func (s *TLSServer) ClientCert(t testing.TB, cn string) (certFile, keyFile string) {
	t.Helper()
	leaf, err := s.CA.Issue(cn, false)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := s.CA.WriteDir(dir, "client", leaf); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "client-cert.pem"), filepath.Join(dir, "client-key.pem")
}

// Client is a client of s with a certificate for cn and, unless user is
// "", etcd's user/password authentication; it is closed when the test ends.
func (s *TLSServer) Client(t testing.TB, cn, user, password string) *clientv3.Client {
	t.Helper()
	cert, key := s.ClientCert(t, cn)
	tc, err := transport.TLSInfo{CertFile: cert, KeyFile: key, TrustedCAFile: s.CAFile}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.URL}, TLS: tc, Username: user, Password: password,
		DialTimeout: 5 * time.Second, Logger: nopLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// EnableAuth turns on etcd's authentication through cli: it adds the user
// root with rootPassword and the role root, which etcd requires first.
// From then on cli (unauthenticated) is refused; connect again as root.
func EnableAuth(t testing.TB, cli *clientv3.Client, rootPassword string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, "root", rootPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
}

// AddPrefixUser adds user with password and a role of the same name that
// may read and write the keys under prefix and nothing else; cli must be
// root's.
func AddPrefixUser(t testing.TB, cli *clientv3.Client, user, password, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.RoleAdd(ctx, user); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.RoleGrantPermission(ctx, user, prefix, clientv3.GetPrefixRangeEnd(prefix),
		clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserAdd(ctx, user, password); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, user, user); err != nil {
		t.Fatal(err)
	}
}
