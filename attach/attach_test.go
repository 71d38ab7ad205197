package attach

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/nbd"
)

// The attach paths themselves need a loop device or the nbd driver: the
// integration tests run them (TestAttachExt4, TestAttachKernelNBD). These
// tests cover what is decided before a device is touched.

func openGateway(t *testing.T) *gateway.Gateway {
	t.Helper()
	ctx := context.Background()
	g, err := gateway.Open(ctx, gateway.Config{DataDir: t.TempDir(), PoolSize: 64 << 20, AutomationInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	for _, o := range []gateway.CreateOptions{
		{Tenant: "t", Name: "blk", Size: 8 << 20},
		{Tenant: "t", Name: "files", Kind: gateway.KindFS, Size: 8 << 20},
	} {
		if _, err := g.CreateVolume(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

func TestMethodChoice(t *testing.T) {
	g := openGateway(t)
	mg := fuse.NewManager(g, nil)
	srv := nbd.NewServer(nil, nbd.Options{}) // never serves here
	if _, err := New(g, mg, Options{Dir: t.TempDir(), Method: "iscsi"}); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("method iscsi: %v, want ErrInvalid", err)
	}
	if _, err := New(g, mg, Options{Dir: t.TempDir(), Method: MethodNBD}); !errors.Is(err, gateway.ErrInvalid) {
		t.Errorf("method nbd without a server: %v, want ErrInvalid", err)
	}
	devs, _ := filepath.Glob("/dev/nbd*")
	if len(devs) == 0 {
		_, err := New(g, mg, Options{Dir: t.TempDir(), Method: MethodNBD, NBD: srv})
		if err == nil || !strings.Contains(err.Error(), "nbd driver is not available") {
			t.Errorf("method nbd on a kernel without nbd: %v", err)
		}
		a, err := New(g, mg, Options{Dir: t.TempDir(), NBD: srv})
		if err != nil {
			t.Fatal(err)
		}
		if a.Method() != MethodLoop {
			t.Errorf("auto without /dev/nbd*: method %s, want loop", a.Method())
		}
		a.Close()
	}
}

func TestIdentifierIsKept(t *testing.T) {
	g := openGateway(t)
	dir := t.TempDir()
	a1, err := New(g, nil, Options{Dir: dir, Method: MethodLoop})
	if err != nil {
		t.Fatal(err)
	}
	a1.Close()
	a2, err := New(g, nil, Options{Dir: dir, Method: MethodLoop})
	if err != nil {
		t.Fatal(err)
	}
	a2.Close()
	if a1.id == "" || a1.id != a2.id {
		t.Errorf("identifiers %q and %q: a data directory keeps one", a1.id, a2.id)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, idFile)); strings.TrimSpace(string(b)) != a1.id {
		t.Errorf("id file holds %q, want %q", b, a1.id)
	}
}

func TestRefusals(t *testing.T) {
	g := openGateway(t)
	ctx := context.Background()
	a, err := New(g, fuse.NewManager(g, nil), Options{Dir: t.TempDir(), Method: MethodLoop})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Attach(ctx, "t/files"); !errors.Is(err, gateway.ErrInvalid) || !strings.Contains(err.Error(), "fs volume") {
		t.Errorf("attach of an fs volume: %v", err)
	}
	if _, err := a.Attach(ctx, "t/none"); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("attach of a missing volume: %v, want ErrNotFound", err)
	}
	if err := a.Detach(ctx, "/dev/loop99"); !errors.Is(err, gateway.ErrNotFound) {
		t.Errorf("detach of a device not attached: %v, want ErrNotFound", err)
	}
	a.Close()
	if _, err := a.Attach(ctx, "t/blk"); !errors.Is(err, gateway.ErrClosed) {
		t.Errorf("attach after Close: %v, want ErrClosed", err)
	}
	if err := a.Detach(ctx, "/dev/loop99"); !errors.Is(err, gateway.ErrClosed) {
		t.Errorf("detach after Close: %v, want ErrClosed", err)
	}
	if len(a.Attachments()) != 0 {
		t.Errorf("attachments after Close: %v", a.Attachments())
	}
}
