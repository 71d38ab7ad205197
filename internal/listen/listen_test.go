package listen

import (
	"net"
	"os"
	"testing"
)

// TestLoopbackUID: the owner of a loopback client socket is found in
// /proc/net/tcp (this process's euid), over IPv4 and IPv6.
func TestLoopbackUID(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Logf("%s: %v", addr, err)
			continue
		}
		defer l.Close()
		client, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		uid, ok := LoopbackUID(server)
		if !ok || uid != os.Geteuid() {
			t.Fatalf("%s: uid %d ok %v, want %d", addr, uid, ok, os.Geteuid())
		}
		if key := ClientKey(server); key != "127.0.0.1" && key != "::1" {
			t.Fatalf("client key %q", key)
		}
	}
}

// TestPeerCred: a unix socket's peer is this process.
func TestPeerCred(t *testing.T) {
	sock := t.TempDir() + "/s"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	cred, ok := PeerCred(server)
	if !ok || int(cred.Uid) != os.Geteuid() || int(cred.Pid) != os.Getpid() {
		t.Fatalf("cred %+v ok %v", cred, ok)
	}
}
