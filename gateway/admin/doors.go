package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"

	"github.com/sluice-storage/sluice/gateway"
)

// Doors are the door operations the API exposes. The gateway command
// provides them (package admin imports no door); a nil one answers 501.
type Doors struct {
	Mounts      Mounter
	Attachments Attacher
	Virtio      VirtioExporter
	Shim        ShimDoor // nil: the shim door is off
	// Controller is the cluster controller the gateway follows (nil: none;
	// GET /v1/controller then says so).
	Controller ControllerSource
	// Device is the store's device, when it has stats of its own (SPDK).
	Device DeviceSource
}

// VirtioExport is a volume served as a vhost-user-blk device.
type VirtioExport struct {
	Volume string `json:"volume"`
	Socket string `json:"socket"`
}

// VirtioRequest is the body of POST /v1/virtio.
type VirtioRequest struct {
	Volume string `json:"volume"`
	Socket string `json:"socket,omitempty"` // default: a socket in the gateway's virtio directory
}

// VirtioExporter serves volumes over the virtio door.
type VirtioExporter interface {
	Export(ctx context.Context, ref, socket string) (VirtioExport, error)
	Unexport(ctx context.Context, ref string) error
	Exports() []VirtioExport
}

// MountInfo describes one FUSE mount.
type MountInfo struct {
	Volume   string `json:"volume"`
	Dir      string `json:"dir"`
	Kind     string `json:"kind"`
	ReadOnly bool   `json:"read_only"`
}

// MountRequest is the body of POST /v1/mounts.
type MountRequest struct {
	Volume   string `json:"volume"`
	Dir      string `json:"dir"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Mounter mounts volumes with the FUSE door.
type Mounter interface {
	Mount(ctx context.Context, ref, dir string, readOnly bool) (MountInfo, error)
	Unmount(ctx context.Context, dir string) error
	Mounts() []MountInfo
}

// Attachment is a volume attached as a block device of the host.
type Attachment struct {
	Volume string `json:"volume"`
	Device string `json:"device"` // /dev/loopN or /dev/nbdN
	Method string `json:"method"` // "loop" (over a FUSE image file) or "nbd"
	Image  string `json:"image,omitempty"`
}

// AttachRequest is the body of POST /v1/attachments.
type AttachRequest struct {
	Volume string `json:"volume"`
}

// Attacher attaches block volumes as block devices.
type Attacher interface {
	Attach(ctx context.Context, ref string) (Attachment, error)
	Detach(ctx context.Context, device string) error
	Attachments() []Attachment
	// Resize grows volume ref with grow and makes its device, if it is
	// attached, take the new size (or refuses before growing it).
	Resize(ctx context.Context, ref string, grow func() error) error
}

func (h *handler) routeDoors(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/volumes/{tenant}/{name}/fsck", h.fsck)
	mux.HandleFunc("GET /v1/mounts", h.mountList)
	mux.HandleFunc("POST /v1/mounts", h.mount)
	mux.HandleFunc("DELETE /v1/mounts", h.unmount)
	mux.HandleFunc("GET /v1/attachments", h.attachList)
	mux.HandleFunc("POST /v1/attachments", h.attach)
	mux.HandleFunc("DELETE /v1/attachments", h.detach)
	mux.HandleFunc("GET /v1/virtio", h.virtioList)
	mux.HandleFunc("POST /v1/virtio", h.virtioExport)
	mux.HandleFunc("DELETE /v1/virtio/{tenant}/{name}", h.virtioUnexport)
	mux.HandleFunc("GET /v1/shim", h.shim)
}

func (h *handler) virtioList(w http.ResponseWriter, r *http.Request) {
	if h.doors.Virtio == nil {
		reply(w, http.StatusOK, []VirtioExport{})
		return
	}
	reply(w, http.StatusOK, h.doors.Virtio.Exports())
}

func (h *handler) virtioExport(w http.ResponseWriter, r *http.Request) {
	var req VirtioRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	if h.doors.Virtio == nil {
		h.fail(w, errNoDoor)
		return
	}
	h.writersMu.Lock()
	defer h.writersMu.Unlock()
	// Exporting again where it is exported is no error (the export is
	// remembered across restarts, and a script that exports at boot
	// finds it there).
	for _, x := range h.doors.Virtio.Exports() {
		if x.Volume == req.Volume && (req.Socket == "" || filepath.Clean(req.Socket) == x.Socket) {
			reply(w, http.StatusOK, x)
			return
		}
	}
	if err := h.claimWriter(req.Volume, "export"); err != nil {
		h.fail(w, err)
		return
	}
	x, err := h.doors.Virtio.Export(r.Context(), req.Volume, req.Socket)
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusCreated, x)
}

func (h *handler) virtioUnexport(w http.ResponseWriter, r *http.Request) {
	if h.doors.Virtio == nil {
		h.fail(w, errNoDoor)
		return
	}
	if err := h.doors.Virtio.Unexport(r.Context(), r.PathValue("tenant")+"/"+r.PathValue("name")); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// VirtioExports lists the volumes served over virtio.
func (c *Client) VirtioExports(ctx context.Context) ([]VirtioExport, error) {
	var out []VirtioExport
	return out, c.do(ctx, http.MethodGet, "/v1/virtio", nil, &out)
}

// VirtioExport serves a block volume as a vhost-user-blk device.
func (c *Client) VirtioExport(ctx context.Context, req VirtioRequest) (VirtioExport, error) {
	var out VirtioExport
	return out, c.do(ctx, http.MethodPost, "/v1/virtio", req, &out)
}

// VirtioUnexport stops serving a volume over virtio.
func (c *Client) VirtioUnexport(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, "/v1/virtio/"+ref, nil, nil)
}

var errNoDoor = fmt.Errorf("this gateway has no such door: %w", gateway.ErrUnsupported)

func (h *handler) fsck(w http.ResponseWriter, r *http.Request) {
	v, err := h.g.Volume(r.PathValue("tenant") + "/" + r.PathValue("name"))
	if err != nil {
		h.fail(w, err)
		return
	}
	rep, err := v.Fsck(r.Context())
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusOK, rep)
}

func (h *handler) mountList(w http.ResponseWriter, r *http.Request) {
	if h.doors.Mounts == nil {
		reply(w, http.StatusOK, []MountInfo{})
		return
	}
	reply(w, http.StatusOK, h.doors.Mounts.Mounts())
}

func (h *handler) mount(w http.ResponseWriter, r *http.Request) {
	var req MountRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	if h.doors.Mounts == nil {
		h.fail(w, errNoDoor)
		return
	}
	if req.Dir == "" || req.Volume == "" {
		h.fail(w, fmt.Errorf("mount: volume and dir are required: %w", gateway.ErrInvalid))
		return
	}
	h.writersMu.Lock()
	defer h.writersMu.Unlock()
	if !req.ReadOnly {
		if err := h.claimWriter(req.Volume, "mount"); err != nil {
			h.fail(w, err)
			return
		}
	}
	m, err := h.doors.Mounts.Mount(r.Context(), req.Volume, req.Dir, req.ReadOnly)
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusCreated, m)
}

func (h *handler) unmount(w http.ResponseWriter, r *http.Request) {
	if h.doors.Mounts == nil {
		h.fail(w, errNoDoor)
		return
	}
	if err := h.doors.Mounts.Unmount(r.Context(), r.URL.Query().Get("dir")); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) attachList(w http.ResponseWriter, r *http.Request) {
	if h.doors.Attachments == nil {
		reply(w, http.StatusOK, []Attachment{})
		return
	}
	reply(w, http.StatusOK, h.doors.Attachments.Attachments())
}

func (h *handler) attach(w http.ResponseWriter, r *http.Request) {
	var req AttachRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	if h.doors.Attachments == nil {
		h.fail(w, errNoDoor)
		return
	}
	h.writersMu.Lock()
	defer h.writersMu.Unlock()
	if err := h.claimWriter(req.Volume, "attach"); err != nil {
		h.fail(w, err)
		return
	}
	a, err := h.doors.Attachments.Attach(r.Context(), req.Volume)
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusCreated, a)
}

func (h *handler) detach(w http.ResponseWriter, r *http.Request) {
	if h.doors.Attachments == nil {
		h.fail(w, errNoDoor)
		return
	}
	if err := h.doors.Attachments.Detach(r.Context(), r.URL.Query().Get("device")); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Fsck checks a volume's metadata.
func (c *Client) Fsck(ctx context.Context, ref string) (gateway.FsckReport, error) {
	var out gateway.FsckReport
	return out, c.do(ctx, http.MethodGet, "/v1/volumes/"+ref+"/fsck", nil, &out)
}

// Mounts lists the gateway's FUSE mounts.
func (c *Client) Mounts(ctx context.Context) ([]MountInfo, error) {
	var out []MountInfo
	return out, c.do(ctx, http.MethodGet, "/v1/mounts", nil, &out)
}

// Mount asks the gateway to mount a volume; it returns once the mount is live.
func (c *Client) Mount(ctx context.Context, req MountRequest) (MountInfo, error) {
	var out MountInfo
	return out, c.do(ctx, http.MethodPost, "/v1/mounts", req, &out)
}

// Unmount asks the gateway to unmount dir.
func (c *Client) Unmount(ctx context.Context, dir string) error {
	return c.do(ctx, http.MethodDelete, "/v1/mounts?dir="+url.QueryEscape(dir), nil, nil)
}

// Attachments lists attached volumes.
func (c *Client) Attachments(ctx context.Context) ([]Attachment, error) {
	var out []Attachment
	return out, c.do(ctx, http.MethodGet, "/v1/attachments", nil, &out)
}

// Attach attaches a block volume as a block device.
func (c *Client) Attach(ctx context.Context, ref string) (Attachment, error) {
	var out Attachment
	return out, c.do(ctx, http.MethodPost, "/v1/attachments", AttachRequest{Volume: ref}, &out)
}

// Detach detaches a device made by Attach.
func (c *Client) Detach(ctx context.Context, device string) error {
	return c.do(ctx, http.MethodDelete, "/v1/attachments?device="+url.QueryEscape(device), nil, nil)
}

// ShimInfo is the LD_PRELOAD door: its socket and live channels (one per
// client process).
type ShimInfo struct {
	Socket   string        `json:"socket"`
	Channels []ShimChannel `json:"channels"`
}

// ShimChannel is one client process's channel.
type ShimChannel struct {
	ID       uint32 `json:"id"`
	PID      int32  `json:"pid"`
	UID      uint32 `json:"uid"`
	Slots    int    `json:"slots"`
	SlotData int    `json:"slot_data"`
	Handles  int    `json:"handles"`
	Requests uint64 `json:"requests"`
}

// ShimDoor reports the shim door.
type ShimDoor interface {
	Shim() ShimInfo
}

func (h *handler) shim(w http.ResponseWriter, r *http.Request) {
	if h.doors.Shim == nil {
		h.fail(w, fmt.Errorf("the shim door is off (the gateway runs with --shim-socket none): %w", errNoDoor))
		return
	}
	info := h.doors.Shim.Shim()
	if info.Channels == nil {
		info.Channels = []ShimChannel{}
	}
	reply(w, http.StatusOK, info)
}

// Shim describes the gateway's shim door (ErrUnsupported when it is off).
func (c *Client) Shim(ctx context.Context) (ShimInfo, error) {
	var out ShimInfo
	return out, c.do(ctx, http.MethodGet, "/v1/shim", nil, &out)
}

// DeviceStats is what the store's device says of itself, in GET /v1/stats
// when the store is on an SPDK bdev.
type DeviceStats struct {
	Kind       string `json:"kind"` // "spdk"
	Bdev       string `json:"bdev"`
	Controller string `json:"controller"`
	// Connected is false while the device reconnects to its target;
	// Reconnects counts the times it did.
	Connected  bool   `json:"connected"`
	Reconnects uint64 `json:"reconnects"`
	// SPDK is the target's own bdev_get_iostat for the bdev (counted over
	// the bdev's life in that target: a restarted target starts again from
	// zero); nil when the target did not answer, and Error says why.
	SPDK  *SPDKIostat `json:"spdk_iostat,omitempty"`
	Error string      `json:"error,omitempty"`
}

// SPDKIostat is SPDK's bdev_get_iostat for one bdev, latencies as means
// in seconds (SPDK's ticks divided by its tick rate and the op count).
type SPDKIostat struct {
	ReadOps          uint64  `json:"read_ops"`
	BytesRead        uint64  `json:"bytes_read"`
	MeanReadLatency  float64 `json:"mean_read_latency_seconds"`
	WriteOps         uint64  `json:"write_ops"`
	BytesWritten     uint64  `json:"bytes_written"`
	MeanWriteLatency float64 `json:"mean_write_latency_seconds"`
	UnmapOps         uint64  `json:"unmap_ops"`
	BytesUnmapped    uint64  `json:"bytes_unmapped"`
	MeanUnmapLatency float64 `json:"mean_unmap_latency_seconds"`
}

// DeviceSource reports the store's device's stats (nil in Doors: the
// store is on a pool file or a block device, and says nothing more).
type DeviceSource interface {
	DeviceStats(ctx context.Context) DeviceStats
}
