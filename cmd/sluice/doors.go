package main

import (
	"context"

	"github.com/sluice-storage/sluice/attach"
	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/shim"
	"github.com/sluice-storage/sluice/virtio"
)

// mountDoor adapts the FUSE door's Manager to the admin API.
type mountDoor struct{ mg *fuse.Manager }

func (d mountDoor) Mount(ctx context.Context, ref, dir string, ro bool) (admin.MountInfo, error) {
	m, err := d.mg.Mount(ctx, ref, dir, ro)
	return admin.MountInfo(m), err
}

func (d mountDoor) Unmount(ctx context.Context, dir string) error { return d.mg.Unmount(ctx, dir) }

func (d mountDoor) Mounts() []admin.MountInfo {
	var out []admin.MountInfo
	for _, m := range d.mg.Mounts() {
		out = append(out, admin.MountInfo(m))
	}
	return out
}

// attachDoor adapts the Attacher to the admin API.
type attachDoor struct{ a *attach.Attacher }

func view(at attach.Attachment) admin.Attachment {
	return admin.Attachment{Volume: at.Volume, Device: at.Device, Method: at.Method, Image: at.Image}
}

func (d attachDoor) Attach(ctx context.Context, ref string) (admin.Attachment, error) {
	at, err := d.a.Attach(ctx, ref)
	return view(at), err
}

func (d attachDoor) Detach(ctx context.Context, dev string) error { return d.a.Detach(ctx, dev) }

func (d attachDoor) Resize(ctx context.Context, ref string, grow func() error) error {
	return d.a.Resize(ctx, ref, grow)
}

func (d attachDoor) Attachments() []admin.Attachment {
	out := []admin.Attachment{} // [] in JSON, not null
	for _, at := range d.a.Attachments() {
		out = append(out, view(at))
	}
	return out
}

// virtioDoor adapts the virtio Exports to the admin API.
type virtioDoor struct{ x *virtio.Exports }

func (d virtioDoor) Export(ctx context.Context, ref, socket string) (admin.VirtioExport, error) {
	e, err := d.x.Export(ctx, ref, socket)
	return admin.VirtioExport(e), err
}

func (d virtioDoor) Unexport(ctx context.Context, ref string) error { return d.x.Unexport(ctx, ref) }

func (d virtioDoor) Exports() []admin.VirtioExport {
	var out []admin.VirtioExport
	for _, e := range d.x.List() {
		out = append(out, admin.VirtioExport(e))
	}
	return out
}

// shimMounts gives the shim door the FUSE door's mounts to check files
// against.
type shimMounts struct{ mg *fuse.Manager }

func (m shimMounts) ByDevice(dev uint64) (shim.Mount, bool) {
	mt, ok := m.mg.ByDevice(dev)
	if !ok {
		return shim.Mount{}, false
	}
	return shim.Mount{Dir: mt.Dir, Volume: mt.Vol(), ReadOnly: mt.ReadOnly(), Renames: mt.Renames, Settle: mt.Settle, PageCached: mt.PageCached}, true
}

// shimDoor adapts the shim Server to the admin API.
type shimDoor struct {
	s      *shim.Server
	socket string
}

func (d shimDoor) Shim() admin.ShimInfo {
	info := admin.ShimInfo{Socket: d.socket}
	for _, c := range d.s.Channels() {
		info.Channels = append(info.Channels, admin.ShimChannel(c))
	}
	return info
}
