package handover

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSendRecv: a state message and two listening sockets go through the
// handover socket; the received fds are the same sockets (inodes), are
// close-on-exec, and the received listener accepts.
func TestSendRecv(t *testing.T) {
	dir := t.TempDir()
	hl, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	if st, err := os.Stat(filepath.Join(dir, SocketName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("handover socket: %v, mode %v", err, st.Mode())
	}
	l1, err := net.Listen("unix", filepath.Join(dir, "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	f1, _ := l1.(*net.UnixListener).File()
	f2, _ := l2.(*net.TCPListener).File()
	defer f1.Close()
	defer f2.Close()
	sent := Message{Type: TypeState, StateVersion: StateVersion, StoppedAccepting: 1,
		Listeners: []Listener{{Name: "a", Network: "unix", Addr: l1.Addr().String()}, {Name: "b", Network: "tcp", Addr: l2.Addr().String()}}}

	done := make(chan error, 1)
	go func() {
		c, err := Accept(hl)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		done <- c.Send(sent, f1, f2)
	}()
	c, err := Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, fds, err := c.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, sent) {
		t.Fatalf("got %+v, sent %+v", got, sent)
	}
	if len(fds) != 2 {
		t.Fatalf("%d fds, want 2", len(fds))
	}
	for i, f := range []*os.File{f1, f2} {
		var a, b unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &a); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fstat(fds[i], &b); err != nil {
			t.Fatal(err)
		}
		if a.Ino != b.Ino || a.Dev != b.Dev {
			t.Errorf("fd %d: inode %d, sent %d", i, b.Ino, a.Ino)
		}
		flags, err := unix.FcntlInt(uintptr(fds[i]), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("fd %d: not close-on-exec (%v)", i, err)
		}
	}
	rl, err := net.FileListener(os.NewFile(uintptr(fds[1]), "b"))
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	unix.Close(fds[0])
	cl, err := net.Dial("tcp", l2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sc, err := rl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()

	// The peer's close is told apart from a bad message.
	if _, _, err := c.Recv(); !IsClosed(err) {
		t.Fatalf("after the peer closed: %v", err)
	}
}

// TestCompatible: state and format versions must match; sluice versions
// may differ, and the error names both sides.
func TestCompatible(t *testing.T) {
	mine := Hello("v1", 1, nil)
	other := Hello("v2", 1, nil)
	if err := Compatible(mine, other); err != nil {
		t.Fatalf("another sluice version with the same format: %v", err)
	}
	other.FormatVersion = 2
	if err := Compatible(mine, other); err == nil || !strings.Contains(err.Error(), "on-disk format 2") {
		t.Fatalf("format mismatch: %v", err)
	}
	other = Hello("v2", 1, nil)
	other.StateVersion = 7
	if err := Compatible(mine, other); err == nil || !strings.Contains(err.Error(), "state version 7") {
		t.Fatalf("state version mismatch: %v", err)
	}
}

// TestParseRefuses: messages Parse must refuse.
func TestParseRefuses(t *testing.T) {
	for _, b := range []string{
		``, `{}`, `[]`, `{"type":"hello"}`, `{"type":"what"}`, `{"type":"refuse"}`,
		`{"type":"go","extra":1}`, `{"type":"go"} {"type":"go"}`,
		`{"type":"state","state_version":1,"stopped_accepting":1}`,
		`{"type":"state","state_version":2,"stopped_accepting":1}`,
		`{"type":"state","state_version":3}`,
		`{"type":"state","state_version":3,"stopped_accepting":1,"nbd_conns":-1}`,
		`{"type":"state","state_version":3,"stopped_accepting":1,"nbd_conns":65537}`,
		`{"type":"state","state_version":3,"stopped_accepting":1,"fuse_mounts":-1}`,
		`{"type":"state","state_version":3,"stopped_accepting":1,"fuse_mounts":4097}`,
		`{"type":"go","fuse_mounts":1}`,
		`{"type":"fuse_mount"}`,
		`{"type":"fuse_mount","fuse":{"volume":"","dir":"/m","init":{"major":7},"negotiated":0,"next_node_id":2,"automatic_ino":0,"parts":0}}`,
		`{"type":"fuse_mount","fuse":{"volume":"t/v","dir":"m","init":{"major":7},"negotiated":0,"next_node_id":2,"automatic_ino":0,"parts":0}}`,
		`{"type":"fuse_mount","fuse":{"volume":"t/v","dir":"/m/../x","init":{"major":7},"negotiated":0,"next_node_id":2,"automatic_ino":0,"parts":0}}`,
		`{"type":"fuse_mount","fuse":{"volume":"t/v","dir":"/m","init":{"major":0},"negotiated":0,"next_node_id":2,"automatic_ino":0,"parts":0}}`,
		`{"type":"fuse_mount","fuse":{"volume":"t/v","dir":"/m","init":{"major":7},"negotiated":0,"next_node_id":2,"automatic_ino":0,"parts":-1}}`,
		`{"type":"fuse_mount","fuse":{"volume":"t/v","dir":"/m","init":{"major":7},"negotiated":0,"next_node_id":2,"automatic_ino":0,"parts":65537}}`,
		`{"type":"fuse_table"}`,
		`{"type":"go","table":{}}`,
		`{"type":"fuse_table","table":{"nodes":[{"id":0,"ino":1,"lookups":1}]}}`,
		`{"type":"fuse_table","table":{"nodes":[{"id":2,"ino":2,"lookups":1,"links":[{"p":0,"n":"a"}]}]}}`,
		`{"type":"fuse_table","table":{"nodes":[{"id":2,"ino":2,"lookups":1,"links":[{"p":1,"n":"a/b"}]}]}}`,
		`{"type":"fuse_table","table":{"nodes":[{"id":2,"ino":2,"lookups":1,"links":[{"p":1,"n":".."}]}]}}`,
		`{"type":"fuse_table","table":{"files":[{"fh":0,"node":1}]}}`,
		`{"type":"fuse_table","table":{"files":[{"fh":4294967296,"node":1}]}}`,
		`{"type":"fuse_table","table":{"files":[{"fh":1,"node":0}]}}`,
		`{"type":"go","nbd_conns":1}`,
		`{"type":"go","virtio_exports":1}`,
		`{"type":"state","state_version":5,"stopped_accepting":1,"virtio_exports":-1}`,
		`{"type":"state","state_version":5,"stopped_accepting":1,"virtio_exports":4097}`,
		`{"type":"virtio_export"}`,
		`{"type":"virtio_export","virtio":{"volume":"t/v","socket":"/s","conns":-1}}`,
		`{"type":"virtio_conn"}`,
		`{"type":"go","virtio_conn":{"features":0,"protocol_features":0}}`,
		`{"type":"virtio_conn","virtio_conn":{"features":0,"protocol_features":0,"rings":[{"index":64}]}}`,
		`{"type":"virtio_conn","virtio_conn":{"features":0,"protocol_features":0,"rings":[{"index":1},{"index":1}]}}`,
		`{"type":"virtio_conn","virtio_conn":{"features":0,"protocol_features":0,"rings":[{"index":1,"num":3}]}}`,
		`{"type":"virtio_conn","virtio_conn":{"features":0,"protocol_features":0,"rings":[{"index":1,"kick":true,"kick_no_fd":true}]}}`,
		`{"type":"virtio_conn","virtio_conn":{"features":0,"protocol_features":0,"inflight":{"mmap_size":1,"mmap_offset":0,"num_queues":0,"queue_size":8}}}`,
		`{"type":"go","virtio":{"volume":"t/v","socket":"/s"}}`,
		`{"type":"virtio_export","virtio":{"volume":"","socket":"/s"}}`,
		`{"type":"virtio_export","virtio":{"volume":"t/v","socket":"s"}}`,
		`{"type":"virtio_export","virtio":{"volume":"t/v","socket":"/a/../s"}}`,
		`{"type":"go","nbd":{"export":"t/v","size":1,"flags":1,"max_payload":4096}}`,
		`{"type":"nbd_conn"}`,
		`{"type":"nbd_conn","nbd":null}`,
		`{"type":"nbd_conn","nbd":{"export":"","size":1,"flags":1,"max_payload":4096}}`,
		`{"type":"nbd_conn","nbd":{"export":"t/v","size":-1,"flags":1,"max_payload":4096}}`,
		`{"type":"nbd_conn","nbd":{"export":"t/v","size":1,"flags":1,"max_payload":0}}`,
		`{"type":"nbd_conn","nbd":{"export":"t/v","size":1,"flags":1,"max_payload":1073741825}}`,
		`{"type":"nbd_conn","nbd":{"export":"t/v","size":1,"flags":65536,"max_payload":4096}}`,
		`{"type":"nbd_conn","nbd":{"export":"t/v","size":1,"flags":1,"max_payload":4096,"tls":true}}`,
		`{"type":"go","listeners":[{"name":"a","network":"tcp"},{"name":"a","network":"tcp"}]}`,
		`{"type":"go","listeners":[{"name":"a","network":"udp"}]}`,
		`{"type":"go","listeners":[{"name":"","network":"tcp"}]}`,
	} {
		if m, err := Parse([]byte(b)); err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", b, m)
		}
	}
}

// FuzzParse: Parse never panics, and what it accepts encodes and parses
// again to the same message.
func FuzzParse(f *testing.F) {
	for _, m := range []Message{
		Hello("v", 1, []Listener{{Name: "api", Network: "unix", Addr: "/x/api.sock"}}),
		{Type: TypeRefuse, Error: "no"},
		{Type: TypeGo},
		{Type: TypeState, StateVersion: StateVersion, StoppedAccepting: 5, Unmounted: []string{"/mnt"},
			Listeners: []Listener{{Name: "nbd-tcp", Network: "tcp", Addr: "127.0.0.1:1"}}, NBDConns: 2},
		{Type: TypeNBD, NBD: &NBDConn{Export: "t/disk", Size: 64 << 20, Structured: true, MetaAlloc: true,
			Flags: 0x1ff, MaxPayload: 32 << 20}},
		{Type: TypeNBD, NBD: &NBDConn{Export: "t/ro", Size: 0, ReadOnly: true, Flags: 3, MaxPayload: 4096}},
		{Type: TypeState, StateVersion: StateVersion, StoppedAccepting: 5, FUSEMounts: 1},
		{Type: TypeState, StateVersion: StateVersion, StoppedAccepting: 5, VirtioExports: 2},
		{Type: TypeVirtio, Virtio: &VirtioExport{Volume: "t/vm", Socket: "/var/lib/sluice/virtio/t.vm.sock", Conns: 1}},
		{Type: TypeVConn, VConn: &VirtioConn{Features: 0x170006e46, ProtocolFeatures: 0x9209,
			Regions:  []VirtioRegion{{GPA: 0, Size: 0xa0000, UVA: 0x7f0000000000}, {GPA: 0xc0000, Size: 1 << 28, UVA: 0x7f00000c0000, MmapOffset: 0xc0000}},
			Inflight: &VirtioInflight{MmapSize: 2112, NumQueues: 1, QueueSize: 128},
			Rings: []VirtioRing{{Index: 0, Num: 128, AddrSet: true, Desc: 0x7f0000100000, Used: 0x7f0000101000, Avail: 0x7f0000100800,
				Base: 77, Started: true, Enabled: true, Kick: true, Call: true, Err: true}, {Index: 1}}}},
		{Type: TypeFUSE, FUSE: &FUSEMount{Volume: "t/fs", Dir: "/mnt/fs", Init: FUSEInit{Major: 7, Minor: 41, MaxReadAhead: 131072,
			Flags: 0x73fffffb, Flags2: 0x1}, Negotiated: 0x40077f, NextNodeID: 2, AutomaticIno: 1 << 63, Parts: 1}},
		{Type: TypeTable, Table: &FUSETable{
			Nodes: []FUSENode{{ID: 1, Mode: 0o40000, Ino: 1, Lookups: 3},
				{ID: 9, Mode: 0o100000, Ino: 9, Lookups: 2, Links: []FUSELink{{P: 1, N: "a"}, {P: 7, N: "b"}}}},
			Files: []FUSEFile{{Fh: 1, Node: 9, Flags: 2}, {Fh: 2, Node: 1, Dir: true}}}},
	} {
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		b2, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Parse(b2)
		if err != nil {
			t.Fatalf("re-encoded %q refused: %v", b2, err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("%+v became %+v", m, m2)
		}
	})
}
