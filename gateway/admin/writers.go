package admin

import (
	"fmt"
	"strings"

	"github.com/sluice-storage/sluice/gateway"
)

// One writer per block volume. A block volume's bytes are a filesystem
// image that only one kernel (or guest) may have mounted read-write: two
// writers (an ext4 on the attached device and a FUSE mount of the image,
// or a VM over virtio) corrupt it without either noticing. So the API
// refuses a second writable door to a block volume: attach, a
// read-write mount, and a virtio export each exclude the others. A
// read-only mount is allowed beside a writer (it sees the bytes as they
// are). NBD clients of the door itself are not counted: NBD has
// multi-conn and its clients coordinate among themselves. fs volumes are
// not affected: all their mounts share one namespace in the gateway.

// holder is one door's hold on a volume.
type holder struct {
	what     string // "attached as /dev/loop0", "mounted on /mnt"...
	writable bool
}

// holders lists how doors hold volume ref: attachments first (the loop
// method mounts the image privately), then mounts, then virtio exports.
func (h *handler) holders(ref string) []holder {
	var out []holder
	if h.doors.Attachments != nil {
		for _, a := range h.doors.Attachments.Attachments() {
			if a.Volume == ref {
				out = append(out, holder{"attached as " + a.Device, true})
			}
		}
	}
	if h.doors.Mounts != nil {
		for _, m := range h.doors.Mounts.Mounts() {
			if m.Volume == ref {
				out = append(out, holder{"mounted on " + m.Dir, !m.ReadOnly})
			}
		}
	}
	if h.doors.Virtio != nil {
		for _, x := range h.doors.Virtio.Exports() {
			if x.Volume == ref {
				out = append(out, holder{"exported over vhost-user at " + x.Socket, true})
			}
		}
	}
	return out
}

// blockWriter says which door holds block volume ref writable ("" if
// none does, or ref is not a block volume).
func (h *handler) blockWriter(ref string) string {
	v, err := h.g.Volume(ref)
	if err != nil || v.Kind() != gateway.KindBlock {
		return ""
	}
	for _, hd := range h.holders(ref) {
		if hd.writable {
			return strings.Replace(hd.what, "mounted on", "mounted read-write on", 1)
		}
	}
	return ""
}

// claimWriter returns an error if block volume ref already has a writer;
// the caller holds h.writersMu until its own door is open, so two
// requests cannot both pass the check.
func (h *handler) claimWriter(ref, what string) error {
	if w := h.blockWriter(ref); w != "" {
		return fmt.Errorf("cannot %s block volume %s: it is already %s, and a second writer would corrupt it: %w "+
			"(mount it --read-only, or release it first)", what, ref, w, gateway.ErrExists)
	}
	return nil
}
