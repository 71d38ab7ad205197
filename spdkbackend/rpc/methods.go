package rpc

import (
	"context"
	"encoding/json"
)

// The methods below are SPDK's, with its parameter names (checked against
// SPDK v23.01.1's python/spdk/rpc/*.py and against the target). Optional
// parameters are left out when zero, as rpc.py leaves out its falsy
// arguments, except where the comment on a field says otherwise.

// Version is spdk_get_version's answer.
type Version struct {
	Version string `json:"version"` // "SPDK v23.01.1 git sha1 186986cf10"
	Fields  struct {
		Major  int    `json:"major"`
		Minor  int    `json:"minor"`
		Patch  int    `json:"patch"`
		Suffix string `json:"suffix"`
		Commit string `json:"commit"`
	} `json:"fields"`
}

// SPDKGetVersion calls spdk_get_version (allowed before framework_start_init).
func (c *Client) SPDKGetVersion(ctx context.Context) (Version, error) {
	var v Version
	err := c.Call(ctx, "spdk_get_version", nil, &v)
	return v, err
}

// FrameworkStartInit calls framework_start_init: a target started with
// --wait-for-rpc initialises its subsystems (bdev, vhost, ...) and begins
// accepting runtime methods. Called again it answers ErrAlreadyInitialized.
func (c *Client) FrameworkStartInit(ctx context.Context) error {
	return c.Call(ctx, "framework_start_init", nil, nil)
}

// FrameworkWaitInit calls framework_wait_init, which answers once the
// subsystems are initialised. Before framework_start_init it waits for it:
// give it a context that ends.
func (c *Client) FrameworkWaitInit(ctx context.Context) error {
	return c.Call(ctx, "framework_wait_init", nil, nil)
}

// MallocBdev is bdev_malloc_create's parameters: a RAM-backed bdev of
// NumBlocks blocks of BlockSize bytes (a power of two, at least 512). The
// metadata and protection-information parameters are not offered: the
// store does not use them.
type MallocBdev struct {
	Name              string `json:"name,omitempty"` // SPDK picks "MallocN" when empty
	NumBlocks         uint64 `json:"num_blocks"`
	BlockSize         uint32 `json:"block_size"`
	UUID              string `json:"uuid,omitempty"`
	OptimalIOBoundary uint32 `json:"optimal_io_boundary,omitempty"` // in blocks
}

// BdevMallocCreate calls bdev_malloc_create and returns the new bdev's name.
func (c *Client) BdevMallocCreate(ctx context.Context, p MallocBdev) (string, error) {
	var name string
	err := c.Call(ctx, "bdev_malloc_create", p, &name)
	return name, err
}

// BdevMallocDelete calls bdev_malloc_delete.
func (c *Client) BdevMallocDelete(ctx context.Context, name string) error {
	return c.Call(ctx, "bdev_malloc_delete", nameParam{Name: name}, nil)
}

// AIOBdev is bdev_aio_create's parameters: a bdev over a file or block
// device through Linux AIO.
type AIOBdev struct {
	Name      string `json:"name"`
	Filename  string `json:"filename"`
	BlockSize uint32 `json:"block_size,omitempty"` // detected when zero
	Readonly  bool   `json:"readonly,omitempty"`
}

// BdevAIOCreate calls bdev_aio_create and returns the new bdev's name.
func (c *Client) BdevAIOCreate(ctx context.Context, p AIOBdev) (string, error) {
	var name string
	err := c.Call(ctx, "bdev_aio_create", p, &name)
	return name, err
}

// BdevAIODelete calls bdev_aio_delete.
func (c *Client) BdevAIODelete(ctx context.Context, name string) error {
	return c.Call(ctx, "bdev_aio_delete", nameParam{Name: name}, nil)
}

type nameParam struct {
	Name string `json:"name"`
}

// Bdev is one entry of bdev_get_bdevs' answer.
type Bdev struct {
	Name             string           `json:"name"`
	Aliases          []string         `json:"aliases"`
	ProductName      string           `json:"product_name"` // "Malloc disk", "AIO disk", "NVMe disk"
	BlockSize        uint32           `json:"block_size"`
	NumBlocks        uint64           `json:"num_blocks"`
	UUID             string           `json:"uuid"`
	Claimed          bool             `json:"claimed"` // by a module: a vhost controller, an lvol store, ...
	Zoned            bool             `json:"zoned"`
	SupportedIOTypes SupportedIOTypes `json:"supported_io_types"`
	// AssignedRateLimits is SPDK's QoS on the bdev (rw_ios_per_sec,
	// rw_mbytes_per_sec, r_mbytes_per_sec, w_mbytes_per_sec; 0 = none).
	AssignedRateLimits map[string]uint64 `json:"assigned_rate_limits"`
	// DriverSpecific is the module's own description, e.g. {"aio":
	// {"filename": ...}} or {"nvme": [...]}.
	DriverSpecific json.RawMessage `json:"driver_specific"`
}

// Size is the bdev's size in bytes.
func (b Bdev) Size() int64 { return int64(b.NumBlocks) * int64(b.BlockSize) }

// SupportedIOTypes is what a bdev's module can do.
type SupportedIOTypes struct {
	Read            bool `json:"read"`
	Write           bool `json:"write"`
	Unmap           bool `json:"unmap"`
	WriteZeroes     bool `json:"write_zeroes"`
	Flush           bool `json:"flush"`
	Reset           bool `json:"reset"`
	Compare         bool `json:"compare"`
	CompareAndWrite bool `json:"compare_and_write"`
	Abort           bool `json:"abort"`
	NVMeAdmin       bool `json:"nvme_admin"`
	NVMeIO          bool `json:"nvme_io"`
}

// GetBdevs is bdev_get_bdevs' parameters.
type GetBdevs struct {
	Name string `json:"name,omitempty"` // empty: every bdev
	// TimeoutMs waits this long for the named bdev to appear (0: answer at
	// once); keep the call's context longer.
	TimeoutMs uint32 `json:"timeout,omitempty"`
}

// BdevGetBdevs calls bdev_get_bdevs. A name that does not exist answers
// ErrNoSuchDevice.
func (c *Client) BdevGetBdevs(ctx context.Context, p GetBdevs) ([]Bdev, error) {
	var bdevs []Bdev
	err := c.Call(ctx, "bdev_get_bdevs", p, &bdevs)
	return bdevs, err
}

// Iostat is bdev_get_iostat's answer. Latencies are in ticks of TickRate
// per second, summed over the bdev's life (divide by the op count for a
// mean); Ticks is the target's clock when it answered.
type Iostat struct {
	TickRate uint64       `json:"tick_rate"`
	Ticks    uint64       `json:"ticks"`
	Bdevs    []BdevIostat `json:"bdevs"`
}

// BdevIostat is one bdev's counters.
type BdevIostat struct {
	Name                 string `json:"name"`
	BytesRead            uint64 `json:"bytes_read"`
	NumReadOps           uint64 `json:"num_read_ops"`
	BytesWritten         uint64 `json:"bytes_written"`
	NumWriteOps          uint64 `json:"num_write_ops"`
	BytesUnmapped        uint64 `json:"bytes_unmapped"`
	NumUnmapOps          uint64 `json:"num_unmap_ops"`
	BytesCopied          uint64 `json:"bytes_copied"`
	NumCopyOps           uint64 `json:"num_copy_ops"`
	ReadLatencyTicks     uint64 `json:"read_latency_ticks"`
	MaxReadLatencyTicks  uint64 `json:"max_read_latency_ticks"`
	MinReadLatencyTicks  uint64 `json:"min_read_latency_ticks"`
	WriteLatencyTicks    uint64 `json:"write_latency_ticks"`
	MaxWriteLatencyTicks uint64 `json:"max_write_latency_ticks"`
	MinWriteLatencyTicks uint64 `json:"min_write_latency_ticks"`
	UnmapLatencyTicks    uint64 `json:"unmap_latency_ticks"`
	MaxUnmapLatencyTicks uint64 `json:"max_unmap_latency_ticks"`
	MinUnmapLatencyTicks uint64 `json:"min_unmap_latency_ticks"`
	CopyLatencyTicks     uint64 `json:"copy_latency_ticks"`
	MaxCopyLatencyTicks  uint64 `json:"max_copy_latency_ticks"`
	MinCopyLatencyTicks  uint64 `json:"min_copy_latency_ticks"`
	// IOError counts failed IOs by type ("read", "write", ...), when SPDK
	// was built to keep them.
	IOError map[string]uint64 `json:"io_error"`
}

// BdevGetIostat calls bdev_get_iostat for one bdev, or every bdev when name
// is empty. An unknown name answers ErrNoSuchDevice.
func (c *Client) BdevGetIostat(ctx context.Context, name string) (Iostat, error) {
	var st Iostat
	p := struct {
		Name string `json:"name,omitempty"`
	}{name}
	err := c.Call(ctx, "bdev_get_iostat", p, &st)
	return st, err
}

// NVMeController is bdev_nvme_attach_controller's parameters: attach an
// NVMe controller, local (TrType "PCIe", TrAddr a PCI address such as
// "0000:01:00.0") or over a fabric (TCP, RDMA, FC), and create a bdev
// "NAMEnN" per namespace N.
type NVMeController struct {
	Name      string `json:"name"`
	TrType    string `json:"trtype"`
	TrAddr    string `json:"traddr"`
	HostNQN   string `json:"hostnqn,omitempty"`
	HostAddr  string `json:"hostaddr,omitempty"`
	HostSvcID string `json:"hostsvcid,omitempty"`
	AdrFam    string `json:"adrfam,omitempty"`  // "IPv4", "IPv6", "IB", "FC"
	TrSvcID   string `json:"trsvcid,omitempty"` // the port, for IP fabrics
	// Priority is a number here; rpc.py's command line sends it as a
	// string, which SPDK's decoder refuses.
	Priority    int    `json:"priority,omitempty"`
	SubNQN      string `json:"subnqn,omitempty"`
	PrChkRefTag bool   `json:"prchk_reftag,omitempty"`
	PrChkGuard  bool   `json:"prchk_guard,omitempty"`
	HDgst       bool   `json:"hdgst,omitempty"`
	DDgst       bool   `json:"ddgst,omitempty"`
	// FabricsConnectTimeoutUs is rpc.py's fabrics_timeout.
	FabricsConnectTimeoutUs uint64 `json:"fabrics_connect_timeout_us,omitempty"`
	Multipath               string `json:"multipath,omitempty"` // "disable", "failover", "multipath"
	NumIOQueues             uint32 `json:"num_io_queues,omitempty"`
	// The reconnect timers are sent whenever set, zero included, as rpc.py
	// sends them whenever given (-1 for CtrlrLossTimeoutSec: retry forever).
	CtrlrLossTimeoutSec  *int   `json:"ctrlr_loss_timeout_sec,omitempty"`
	ReconnectDelaySec    *int   `json:"reconnect_delay_sec,omitempty"`
	FastIOFailTimeoutSec *int   `json:"fast_io_fail_timeout_sec,omitempty"`
	PSK                  string `json:"psk,omitempty"`
}

// BdevNVMeAttachController calls bdev_nvme_attach_controller and returns
// the names of the bdevs it created.
func (c *Client) BdevNVMeAttachController(ctx context.Context, p NVMeController) ([]string, error) {
	var names []string
	err := c.Call(ctx, "bdev_nvme_attach_controller", p, &names)
	return names, err
}

// VhostBlkController is vhost_create_blk_controller's parameters: expose
// bdev DevName as a vhost-user-blk socket named Ctrlr in the target's
// socket directory (its -S; the current directory by default).
type VhostBlkController struct {
	Ctrlr     string `json:"ctrlr"`
	DevName   string `json:"dev_name"`
	Cpumask   string `json:"cpumask,omitempty"`   // e.g. "0x1"; the target's cores by default
	Transport string `json:"transport,omitempty"` // "vhost_user_blk" by default
	// The flags are always sent, as rpc.py's command line sends them.
	Readonly           bool `json:"readonly"`
	PackedRing         bool `json:"packed_ring"`
	PackedRingRecovery bool `json:"packed_ring_recovery"`
}

// VhostCreateBlkController calls vhost_create_blk_controller. A controller
// of that name answers ErrExists; an unknown bdev, ErrNoSuchDevice (both
// under CodeInvalidParams).
func (c *Client) VhostCreateBlkController(ctx context.Context, p VhostBlkController) error {
	return c.Call(ctx, "vhost_create_blk_controller", p, nil)
}

// VhostDeleteController calls vhost_delete_controller; SPDK removes the
// controller's socket. An unknown name answers ErrNoSuchDevice.
func (c *Client) VhostDeleteController(ctx context.Context, ctrlr string) error {
	p := struct {
		Ctrlr string `json:"ctrlr"`
	}{ctrlr}
	return c.Call(ctx, "vhost_delete_controller", p, nil)
}

// VhostController is one entry of vhost_get_controllers' answer.
type VhostController struct {
	Ctrlr         string `json:"ctrlr"`
	Cpumask       string `json:"cpumask"`
	Socket        string `json:"socket"` // the vhost-user socket's path
	DelayBaseUs   uint64 `json:"delay_base_us"`
	IOPSThreshold uint64 `json:"iops_threshold"`
	// BackendSpecific describes the backend; for a blk controller
	// {"block": {"bdev": ..., "readonly": ..., "transport": ...}}.
	BackendSpecific json.RawMessage `json:"backend_specific"`
}

// VhostGetControllers calls vhost_get_controllers for one controller, or
// every controller when name is empty.
func (c *Client) VhostGetControllers(ctx context.Context, name string) ([]VhostController, error) {
	var ctrls []VhostController
	p := struct {
		Name string `json:"name,omitempty"`
	}{name}
	err := c.Call(ctx, "vhost_get_controllers", p, &ctrls)
	return ctrls, err
}
