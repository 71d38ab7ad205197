package rpc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/internal/testwait"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// recorder is a unix socket that keeps every request sent to it and answers
// each with a canned result. It stands in for SPDK only to capture what a
// client sends: the requests of SPDK's rpc.py and ours are compared.
type recorder struct {
	path   string
	result json.RawMessage // the answer's "result"

	mu   sync.Mutex
	reqs []map[string]any
	raw  [][]byte // each connection's bytes
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{path: filepath.Join(t.TempDir(), "rec.sock")}
	ln, err := net.Listen("unix", r.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go r.serve(conn)
		}
	}()
	return r
}

func (r *recorder) serve(conn net.Conn) {
	defer conn.Close()
	var raw bytes.Buffer
	dec := json.NewDecoder(io.TeeReader(conn, &raw))
	defer func() {
		r.mu.Lock()
		r.raw = append(r.raw, raw.Bytes())
		r.mu.Unlock()
	}()
	for {
		var req map[string]any
		if err := dec.Decode(&req); err != nil {
			return
		}
		r.mu.Lock()
		r.reqs = append(r.reqs, req)
		result := r.result
		r.mu.Unlock()
		id, _ := json.Marshal(req["id"])
		fmt.Fprintf(conn, `{"jsonrpc":"2.0","id":%s,"result":%s}`, id, result)
	}
}

// take returns the requests recorded so far and forgets them.
func (r *recorder) take() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	reqs := r.reqs
	r.reqs = nil
	return reqs
}

func ptr[T any](v T) *T { return &v }

// TestRequestsMatchRPCPy sends each method with rpc.py's command line and
// with our client, and compares the requests: method, params (names,
// types, which optional ones are present) and the jsonrpc and id members.
// A fresh client per case gives both id 1.
func TestRequestsMatchRPCPy(t *testing.T) {
	testtool.Need(t, "python3")
	dir := spdktest.Dir(t)
	rec := newRecorder(t)
	ctx := t.Context()
	const uuid = "3f1d7c2a-4a7e-4a8e-9d0b-5c2f6f1e2a10"
	cases := []struct {
		name   string
		rpcpy  []string
		result string
		ours   func(c *rpc.Client) error
	}{
		{"spdk_get_version", []string{"spdk_get_version"}, `{"version":"SPDK v23.01.1","fields":{"major":23}}`,
			func(c *rpc.Client) error { _, err := c.SPDKGetVersion(ctx); return err }},
		{"framework_start_init", []string{"framework_start_init"}, `true`,
			func(c *rpc.Client) error { return c.FrameworkStartInit(ctx) }},
		{"framework_wait_init", []string{"framework_wait_init"}, `true`,
			func(c *rpc.Client) error { return c.FrameworkWaitInit(ctx) }},
		{"bdev_malloc_create", []string{"bdev_malloc_create", "64", "512"}, `"Malloc0"`,
			func(c *rpc.Client) error {
				_, err := c.BdevMallocCreate(ctx, rpc.MallocBdev{NumBlocks: 64 << 20 / 512, BlockSize: 512})
				return err
			}},
		{"bdev_malloc_create all", []string{"bdev_malloc_create", "-b", "M0", "-u", uuid, "-o", "8", "64", "4096"}, `"M0"`,
			func(c *rpc.Client) error {
				_, err := c.BdevMallocCreate(ctx, rpc.MallocBdev{Name: "M0", NumBlocks: 16384, BlockSize: 4096, UUID: uuid, OptimalIOBoundary: 8})
				return err
			}},
		{"bdev_malloc_delete", []string{"bdev_malloc_delete", "M0"}, `true`,
			func(c *rpc.Client) error { return c.BdevMallocDelete(ctx, "M0") }},
		{"bdev_aio_create", []string{"bdev_aio_create", "/var/lib/pool.img", "A0"}, `"A0"`,
			func(c *rpc.Client) error {
				_, err := c.BdevAIOCreate(ctx, rpc.AIOBdev{Name: "A0", Filename: "/var/lib/pool.img"})
				return err
			}},
		{"bdev_aio_create all", []string{"bdev_aio_create", "-r", "/var/lib/pool.img", "A0", "4096"}, `"A0"`,
			func(c *rpc.Client) error {
				_, err := c.BdevAIOCreate(ctx, rpc.AIOBdev{Name: "A0", Filename: "/var/lib/pool.img", BlockSize: 4096, Readonly: true})
				return err
			}},
		{"bdev_aio_delete", []string{"bdev_aio_delete", "A0"}, `true`,
			func(c *rpc.Client) error { return c.BdevAIODelete(ctx, "A0") }},
		{"bdev_get_bdevs", []string{"bdev_get_bdevs"}, `[]`,
			func(c *rpc.Client) error { _, err := c.BdevGetBdevs(ctx, rpc.GetBdevs{}); return err }},
		{"bdev_get_bdevs all", []string{"bdev_get_bdevs", "-b", "M0", "-t", "500"}, `[]`,
			func(c *rpc.Client) error {
				_, err := c.BdevGetBdevs(ctx, rpc.GetBdevs{Name: "M0", TimeoutMs: 500})
				return err
			}},
		{"bdev_get_iostat", []string{"bdev_get_iostat"}, `{"tick_rate":1,"ticks":1,"bdevs":[]}`,
			func(c *rpc.Client) error { _, err := c.BdevGetIostat(ctx, ""); return err }},
		{"bdev_get_iostat name", []string{"bdev_get_iostat", "-b", "M0"}, `{"tick_rate":1,"ticks":1,"bdevs":[]}`,
			func(c *rpc.Client) error { _, err := c.BdevGetIostat(ctx, "M0"); return err }},
		{"bdev_nvme_attach_controller pcie", []string{"bdev_nvme_attach_controller", "-b", "Nvme0", "-t", "PCIe", "-a", "0000:01:00.0"}, `["Nvme0n1"]`,
			func(c *rpc.Client) error {
				_, err := c.BdevNVMeAttachController(ctx, rpc.NVMeController{Name: "Nvme0", TrType: "PCIe", TrAddr: "0000:01:00.0"})
				return err
			}},
		{"bdev_nvme_attach_controller tcp", []string{"bdev_nvme_attach_controller", "-b", "Nvme1", "-t", "TCP", "-a", "10.0.0.1",
			"-f", "IPv4", "-s", "4420", "-n", "nqn.2016-06.io.spdk:cnode1", "-q", "nqn.2014-08.org.nvmexpress:uuid:" + uuid,
			"-i", "10.0.0.2", "-c", "5000", "-r", "-g", "-e", "-d", "--fabrics-timeout", "1000000", "-x", "multipath",
			"--num-io-queues", "4", "-l", "-1", "-o", "2", "-u", "0", "-k", "1234567890ABCDEF"}, `["Nvme1n1"]`,
			func(c *rpc.Client) error {
				_, err := c.BdevNVMeAttachController(ctx, rpc.NVMeController{
					Name: "Nvme1", TrType: "TCP", TrAddr: "10.0.0.1", AdrFam: "IPv4", TrSvcID: "4420",
					SubNQN: "nqn.2016-06.io.spdk:cnode1", HostNQN: "nqn.2014-08.org.nvmexpress:uuid:" + uuid,
					HostAddr: "10.0.0.2", HostSvcID: "5000", PrChkRefTag: true, PrChkGuard: true, HDgst: true, DDgst: true,
					FabricsConnectTimeoutUs: 1000000, Multipath: "multipath", NumIOQueues: 4,
					CtrlrLossTimeoutSec: ptr(-1), ReconnectDelaySec: ptr(2), FastIOFailTimeoutSec: ptr(0), PSK: "1234567890ABCDEF",
				})
				return err
			}},
		{"vhost_create_blk_controller", []string{"vhost_create_blk_controller", "vb0", "M0"}, `true`,
			func(c *rpc.Client) error {
				return c.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: "vb0", DevName: "M0"})
			}},
		{"vhost_create_blk_controller all", []string{"vhost_create_blk_controller", "--cpumask", "0x1", "--transport", "vhost_user_blk", "-r", "-p", "-l", "vb0", "M0"}, `true`,
			func(c *rpc.Client) error {
				return c.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: "vb0", DevName: "M0", Cpumask: "0x1",
					Transport: "vhost_user_blk", Readonly: true, PackedRing: true, PackedRingRecovery: true})
			}},
		{"vhost_delete_controller", []string{"vhost_delete_controller", "vb0"}, `true`,
			func(c *rpc.Client) error { return c.VhostDeleteController(ctx, "vb0") }},
		{"vhost_get_controllers", []string{"vhost_get_controllers", "-n", "vb0"}, `[]`,
			func(c *rpc.Client) error { _, err := c.VhostGetControllers(ctx, "vb0"); return err }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec.mu.Lock()
			rec.result = json.RawMessage(tc.result)
			rec.mu.Unlock()
			if out, err := spdktest.RPCPy(ctx, dir, rec.path, tc.rpcpy...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			theirs := rec.take()
			c, err := rpc.Dial(ctx, rec.path, rpc.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := tc.ours(c); err != nil {
				t.Fatalf("our call: %v", err)
			}
			ours := rec.take()
			if len(theirs) != 1 || len(ours) != 1 {
				t.Fatalf("requests: rpc.py sent %d, we sent %d; want 1 each", len(theirs), len(ours))
			}
			if !reflect.DeepEqual(theirs[0], ours[0]) {
				a, _ := json.Marshal(theirs[0])
				b, _ := json.Marshal(ours[0])
				t.Errorf("requests differ:\nrpc.py: %s\nours:   %s", a, b)
			}
			if ours[0]["jsonrpc"] != "2.0" || ours[0]["id"] != float64(1) {
				t.Errorf("request %v: want jsonrpc 2.0 and id 1", ours[0])
			}
		})
	}
}

// TestIDsCountUp checks that a client numbers its requests 1, 2, 3, ...
// on one connection, as rpc.py numbers requests in a script.
func TestIDsCountUp(t *testing.T) {
	rec := newRecorder(t)
	rec.result = json.RawMessage(`true`)
	c, err := rpc.Dial(t.Context(), rec.path, rpc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.FrameworkStartInit(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	for i, r := range rec.take() {
		if r["id"] != float64(i+1) {
			t.Errorf("request %d has id %v, want %d", i, r["id"], i+1)
		}
	}
	if err := c.FrameworkStartInit(context.Background()); err != rpc.ErrClosed {
		t.Errorf("call after Close: %v, want ErrClosed", err)
	}
	// One connection for the three calls: the recorder keeps its bytes
	// when it sees it closed.
	testwait.For(t, "the recorder to see the connection closed", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.raw) == 1
	})
}
