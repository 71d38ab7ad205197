package admin

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
)

// fakeDoors stands in for the FUSE, attach and virtio doors and a
// controller: it records what it is asked and lists it back.
type fakeDoors struct {
	mu      sync.Mutex
	mounts  []MountInfo
	atts    []Attachment
	exports []VirtioExport
	resized []string
}

// remove deletes the first element of *list that match picks, or says
// that there is none (a not-found error, as the real doors return).
func remove[T any](list *[]T, match func(T) bool, none string) error {
	i := slices.IndexFunc(*list, match)
	if i < 0 {
		return fmt.Errorf("%s: %w", none, gateway.ErrNotFound)
	}
	*list = slices.Delete(*list, i, i+1)
	return nil
}

func (f *fakeDoors) doors() Doors {
	return Doors{Mounts: f, Attachments: f, Virtio: f, Controller: f}
}

func (f *fakeDoors) Mount(_ context.Context, ref, dir string, ro bool) (MountInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := MountInfo{Volume: ref, Dir: dir, Kind: "fs", ReadOnly: ro}
	f.mounts = append(f.mounts, m)
	return m, nil
}

func (f *fakeDoors) Unmount(_ context.Context, dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return remove(&f.mounts, func(m MountInfo) bool { return m.Dir == dir }, dir+" is not mounted")
}

func (f *fakeDoors) Mounts() []MountInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mounts)
}

func (f *fakeDoors) Attach(_ context.Context, ref string) (Attachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := Attachment{Volume: ref, Device: fmt.Sprintf("/dev/loop%d", len(f.atts)), Method: "loop"}
	f.atts = append(f.atts, a)
	return a, nil
}

func (f *fakeDoors) Detach(_ context.Context, dev string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return remove(&f.atts, func(a Attachment) bool { return a.Device == dev }, dev+" is not attached")
}

func (f *fakeDoors) Attachments() []Attachment {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.atts)
}

func (f *fakeDoors) Resize(_ context.Context, ref string, grow func() error) error {
	f.mu.Lock()
	f.resized = append(f.resized, ref)
	f.mu.Unlock()
	return grow()
}

func (f *fakeDoors) Export(_ context.Context, ref, socket string) (VirtioExport, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if socket == "" {
		socket = "/run/sluice/" + ref + ".sock"
	}
	x := VirtioExport{Volume: ref, Socket: socket}
	f.exports = append(f.exports, x)
	return x, nil
}

func (f *fakeDoors) Unexport(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return remove(&f.exports, func(x VirtioExport) bool { return x.Volume == ref }, ref+" is not exported")
}

func (f *fakeDoors) Exports() []VirtioExport {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.exports)
}

func (f *fakeDoors) ControllerStatus() ControllerStatus {
	return ControllerStatus{URL: "http://controller", GatewayID: "gw1", Following: true, Epoch: 7}
}

// A gateway without a door lists nothing ([]) and answers 501 to changes.
func TestDoorsAbsent(t *testing.T) {
	a := newAPI(t, Doors{})
	for _, path := range []string{"/v1/mounts", "/v1/attachments", "/v1/virtio"} {
		if _, raw := a.call("GET", path, nil); string(raw) != "[]\n" {
			t.Errorf("GET %s: %q, want []", path, raw)
		}
	}
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "db", Size: 16 << 20}, http.StatusCreated, nil)
	a.fails("POST", "/v1/mounts", MountRequest{Volume: "acme/db", Dir: "/mnt"}, http.StatusNotImplemented, "no such door")
	a.fails("DELETE", "/v1/mounts?dir=/mnt", nil, http.StatusNotImplemented, "no such door")
	a.fails("POST", "/v1/attachments", AttachRequest{Volume: "acme/db"}, http.StatusNotImplemented, "no such door")
	a.fails("DELETE", "/v1/attachments?device=/dev/loop0", nil, http.StatusNotImplemented, "no such door")
	a.fails("POST", "/v1/virtio", VirtioRequest{Volume: "acme/db"}, http.StatusNotImplemented, "no such door")
	a.fails("DELETE", "/v1/virtio/acme/db", nil, http.StatusNotImplemented, "no such door")
	// Resize without an attacher grows the volume directly.
	var v Volume
	a.ok("PATCH", "/v1/volumes/acme/db", ResizeRequest{Size: 32 << 20}, http.StatusOK, &v)
	if v.Size != 32<<20 {
		t.Fatalf("resize: %+v", v)
	}
}

// Mount, attach and export reach the doors and list back; a block volume
// gets one writer at most (a read-only mount may join), an fs volume any
// number; a volume a door holds is not deleted.
func TestDoorsAndOneWriter(t *testing.T) {
	f := &fakeDoors{}
	a := newAPI(t, f.doors())
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "blk", Size: 16 << 20}, http.StatusCreated, nil)
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "fs", Kind: gateway.KindFS, Size: 16 << 20}, http.StatusCreated, nil)

	var at Attachment
	a.ok("POST", "/v1/attachments", AttachRequest{Volume: "acme/blk"}, http.StatusCreated, &at)
	if at.Device != "/dev/loop0" || at.Volume != "acme/blk" {
		t.Fatalf("attach: %+v", at)
	}
	a.fails("POST", "/v1/mounts", MountRequest{Volume: "acme/blk", Dir: "/mnt/a"}, http.StatusConflict, "already attached as /dev/loop0")
	a.fails("POST", "/v1/virtio", VirtioRequest{Volume: "acme/blk"}, http.StatusConflict, "second writer")
	a.fails("POST", "/v1/attachments", AttachRequest{Volume: "acme/blk"}, http.StatusConflict, "second writer")
	var m MountInfo
	a.ok("POST", "/v1/mounts", MountRequest{Volume: "acme/blk", Dir: "/mnt/ro", ReadOnly: true}, http.StatusCreated, &m)
	if !m.ReadOnly || m.Dir != "/mnt/ro" {
		t.Fatalf("read-only mount: %+v", m)
	}
	a.fails("POST", "/v1/mounts", MountRequest{Volume: "acme/fs"}, http.StatusBadRequest, "required")
	a.ok("POST", "/v1/mounts", MountRequest{Volume: "acme/fs", Dir: "/mnt/fs1"}, http.StatusCreated, nil)
	a.ok("POST", "/v1/mounts", MountRequest{Volume: "acme/fs", Dir: "/mnt/fs2"}, http.StatusCreated, nil)

	var mounts []MountInfo
	a.ok("GET", "/v1/mounts", nil, http.StatusOK, &mounts)
	if len(mounts) != 3 {
		t.Fatalf("mounts: %+v", mounts)
	}
	a.fails("DELETE", "/v1/volumes/acme/blk", nil, http.StatusBadRequest, "attached as /dev/loop0")
	a.fails("DELETE", "/v1/volumes/acme/fs", nil, http.StatusBadRequest, "mounted on /mnt/fs1")

	// Resize goes through the attacher, so the device follows.
	a.ok("PATCH", "/v1/volumes/acme/blk", ResizeRequest{Size: 32 << 20}, http.StatusOK, nil)
	if !slices.Equal(f.resized, []string{"acme/blk"}) {
		t.Fatalf("resize did not go through the attacher: %v", f.resized)
	}

	// Released, the block volume takes another writer.
	a.ok("DELETE", "/v1/attachments?device=/dev/loop0", nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/attachments?device=/dev/loop0", nil, http.StatusNotFound, "/dev/loop0")
	var x VirtioExport
	a.ok("POST", "/v1/virtio", VirtioRequest{Volume: "acme/blk"}, http.StatusCreated, &x)
	if x.Socket == "" {
		t.Fatalf("export: %+v", x)
	}
	var exports []VirtioExport
	a.ok("GET", "/v1/virtio", nil, http.StatusOK, &exports)
	if len(exports) != 1 || exports[0].Volume != "acme/blk" {
		t.Fatalf("exports: %+v", exports)
	}
	a.ok("DELETE", "/v1/virtio/acme/blk", nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/virtio/acme/blk", nil, http.StatusNotFound, "acme/blk")
	a.ok("DELETE", "/v1/mounts?dir=/mnt/ro", nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/mounts?dir=/mnt/ro", nil, http.StatusNotFound, "/mnt/ro")
	a.ok("DELETE", "/v1/volumes/acme/blk", nil, http.StatusNoContent, nil)
}

func TestFsck(t *testing.T) {
	a := newAPI(t, Doors{})
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "fs", Kind: gateway.KindFS, Size: 16 << 20}, http.StatusCreated, nil)
	var rep gateway.FsckReport
	a.ok("GET", "/v1/volumes/acme/fs/fsck", nil, http.StatusOK, &rep)
	if !rep.Clean() || rep.Volume != "acme/fs" || rep.Dirs != 1 {
		t.Fatalf("fsck of a new fs volume: %+v", rep)
	}
	a.fails("GET", "/v1/volumes/acme/nope/fsck", nil, http.StatusNotFound, "acme/nope")
}
