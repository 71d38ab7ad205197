// Command tlscerts writes a throwaway CA with a server certificate and a
// client certificate for bench/nbd-tls.sh: DIR/server holds ca-cert.pem,
// server-cert.pem and server-key.pem (nbdkit's --tls-certificates layout,
// and Sluice's --nbd-tls-* files); DIR/client holds ca-cert.pem,
// client-cert.pem and client-key.pem for tenant TENANT (libnbd's
// tls-certificates layout).
//
// Usage: go run ./bench/tlscerts DIR TENANT
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sluice-storage/sluice/internal/testpki"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tlscerts DIR TENANT")
		os.Exit(2)
	}
	if err := write(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "tlscerts:", err)
		os.Exit(1)
	}
}

func write(dir, tenant string) error {
	ca, err := testpki.NewCA()
	if err != nil {
		return err
	}
	server, err := ca.Issue("localhost", true)
	if err != nil {
		return err
	}
	client, err := ca.Issue(tenant, false)
	if err != nil {
		return err
	}
	if err := ca.WriteDir(filepath.Join(dir, "server"), "server", server); err != nil {
		return err
	}
	return ca.WriteDir(filepath.Join(dir, "client"), "client", client)
}
