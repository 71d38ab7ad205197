// Package spdkbackend puts the store's device on an SPDK bdev: the blocks
// live in a bdev of an SPDK target (an NVMe namespace in production; a
// malloc or aio bdev on a test machine), which SPDK's vhost target exposes
// as a vhost-user-blk controller, and the gateway's own virtio initiator
// (virtio.Client) moves the data through shared memory backed by 2 MiB huge
// pages, which SPDK can DMA into.
//
// # Use
//
//	dev, err := spdkbackend.Open(ctx, spdkbackend.Options{
//		Socket:     "/var/tmp/spdk.sock", // the target's RPC socket
//		Bdev:       "Nvme0n1",
//		Controller: spdkbackend.ControllerName(dataDir),
//	})
//	st, err := store.Open(ctx, metaDir, dev, ...) // dev is a device.Device
//	...
//	dev.Close() // closes the initiator, deletes the controller
//
// `sluice gateway --device spdk:RPC_SOCKET?bdev=NAME` does this (ParseURI
// parses the string); `--spdk-launch` starts the target first (package
// launch).
//
// # Pre-flight
//
// Open checks, in this order and before it creates anything, and says
// what is wrong in words a person can act on: enough free 2 MiB huge pages
// for the initiator's shared memory (/sys/kernel/mm/hugepages); the RPC
// socket reachable; the bdev present (an unknown name lists the bdevs that
// exist); the bdev at least store.MinDeviceSize; its block size a power of
// two from 512 to store.DeviceBlockSize (4 KiB); the bdev not served by
// another vhost controller (another gateway's) and not claimed by another
// SPDK module. Only then does it create the controller, and a failure
// after that deletes it again.
//
// # The controller
//
// The controller's name is the caller's (the gateway derives one from its
// data directory, ControllerName, so it is the same after a restart). A
// controller of that name that already serves the bdev is one a gateway on
// this data directory left behind when it was killed: Open uses it rather
// than failing. One of that name on another bdev is an error. Close deletes
// the controller; SPDK removes its socket.
//
// # Block size and unaligned IO
//
// The store addresses bytes (a file's 10-byte write reaches the device as
// one), while a bdev, and SPDK's vhost-blk, take whole blocks. Reads and
// writes go to the bdev directly where they cover whole blocks; a partial
// first or last block is read, patched and written back under a lock of
// that block (striped), so two writes to different bytes of one block do
// not undo each other. Everything the store lays out (superblock, chunk
// extents) is 4 KiB-aligned, so block-sized IO is the common case.
//
// # Discard
//
// DiscardZeroes is true when the bdev supports unmap natively and the
// controller offers WRITE_ZEROES: Discard then sends WRITE_ZEROES with the
// unmap flag, which must read back as zeros (a bare DISCARD need not), and
// costs what an unmap costs. Otherwise (an aio bdev: SPDK emulates write
// zeroes with writes) DiscardZeroes is false, the store zero-fills new
// extents itself, and Discard sends DISCARD when the controller offers it
// and does nothing when it does not (a discard is a hint).
//
// # Faults
//
// The desired state is the gateway's: when the connection to the target
// is lost, the device puts it back. A connection counts as lost when the
// initiator sees it die (the target killed or restarted: virtio reports
// gateway.ErrClosed) or when a request has no answer within
// Options.IOTimeout (a stopped or wedged target). The first call to see it
// starts a reconnect loop (reconnect.go), which closes the old connection
// and then, with a back-off from 50 ms to 2 s until Close: waits for the
// RPC socket to answer and the bdev to be there again with the same size
// and block size (the bdev is the target's configuration's or its
// operator's; the device never creates it), deletes its controller if it
// survived (SPDK refuses while the old session has requests in flight, so
// nothing sent on the old connection can land after what the new one
// writes), creates it again and dials it. sluice_device_reconnects_total
// counts the successes.
//
// Calls meanwhile wait, and a call whose connection failed under it runs
// again, whole, on the new connection: reads, writes (the same bytes to
// the same place), flushes and discards are idempotent on a block device,
// and a partial block's read-modify-write reads the block again. A flush
// is sent again on the new connection, so it covers what the target wrote
// before it died only as far as the bdev kept it (aio, NVMe: writes the
// target completed are in the file or the drive's cache; a flush that
// returned success made them durable). A call gives up once
// Options.ReconnectTimeout has passed since it first met the outage,
// failing with ErrUnreachable and gateway.ErrIO (EIO); so no call waits
// longer than about IOTimeout + ReconnectTimeout + IOTimeout. The loop
// goes on after that, and later calls work once the target is back.
package spdkbackend

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
	"github.com/sluice-storage/sluice/virtio"
)

// Options configure Open.
type Options struct {
	// Socket is the target's RPC socket (default DefaultRPCSocket).
	Socket string
	// Bdev is the bdev the store lives on.
	Bdev string
	// Controller names the vhost-user-blk controller Open creates;
	// required (ControllerName derives one from a data directory).
	Controller string
	// Queues, QueueDepth and MaxIO size the initiator (defaults 1, 64 and
	// 256 KiB): its shared memory is about Queues×QueueDepth×MaxIO bytes of
	// huge pages.
	Queues     int
	QueueDepth int
	MaxIO      int
	// RPCTimeout bounds each RPC call (default 30 s).
	RPCTimeout time.Duration
	// IOTimeout bounds one request at the target (default 30 s): a request
	// without an answer by then counts as a lost connection (a stopped or
	// wedged target), and the device reconnects (package doc, Faults).
	IOTimeout time.Duration
	// ReconnectTimeout is how long a call waits for the device to
	// reconnect after it met a lost connection before it fails with
	// ErrUnreachable and gateway.ErrIO (default 60 s). The reconnect loop
	// itself goes on until Close.
	ReconnectTimeout time.Duration
	// HugePageDir is the kernel's 2 MiB huge page pool (default
	// /sys/kernel/mm/hugepages/hugepages-2048kB).
	HugePageDir string
	Logger      *slog.Logger
}

// ControllerName is the vhost controller name of a gateway on dataDir:
// "sluice-" and 12 hex digits of a hash of its absolute path, the same
// after a restart and different for two gateways on one target.
func ControllerName(dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "sluice-" + hex.EncodeToString(sum[:6])
}

// Device is a device.Device on an SPDK bdev.
type Device struct {
	opt     Options
	log     *slog.Logger
	rc      *rpc.Client
	bdev    rpc.Bdev
	bs      int64 // the bdev's block size
	size    int64
	zeroes  bool // DiscardZeroes
	discard bool // the controller offers DISCARD
	reused  bool // the controller was there before Open
	locks   [64]sync.Mutex
	stats   stats // for the metrics (metrics.go)

	// The connection (reconnect.go). cur is nil while the device
	// reconnects; ready is closed when it is set again; gen counts
	// connections, so that of many calls failing on one connection only
	// the first starts the reconnect loop.
	mu       sync.Mutex
	cur      *virtio.Client
	gen      uint64
	ready    chan struct{}
	loopDone chan struct{} // closed when the reconnect loop has ended
	ctx      context.Context
	cancel   context.CancelFunc // ends the reconnect loop (Close)

	closeOnce sync.Once
	closeErr  error
}

var _ device.Device = (*Device)(nil)

// ErrPreflight is wrapped by every error of Open's checks (nothing was
// created).
var ErrPreflight = errors.New("SPDK device pre-flight check failed")

func (o *Options) fill() {
	o.Socket = cmp.Or(o.Socket, DefaultRPCSocket)
	o.Queues = cmp.Or(o.Queues, 1)
	o.QueueDepth = cmp.Or(o.QueueDepth, 64)
	o.MaxIO = cmp.Or(o.MaxIO, 256<<10)
	o.RPCTimeout = cmp.Or(o.RPCTimeout, 30*time.Second)
	o.IOTimeout = cmp.Or(o.IOTimeout, 30*time.Second)
	o.ReconnectTimeout = cmp.Or(o.ReconnectTimeout, 60*time.Second)
	o.HugePageDir = cmp.Or(o.HugePageDir, "/sys/kernel/mm/hugepages/hugepages-2048kB")
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Open checks the host and the target (package doc, Pre-flight), creates
// the vhost controller on the bdev and connects the initiator to it.
func Open(ctx context.Context, opt Options) (*Device, error) {
	opt.fill()
	if opt.Bdev == "" || opt.Controller == "" {
		return nil, fmt.Errorf("%w: a bdev and a controller name are required", ErrPreflight)
	}
	d := &Device{opt: opt, log: opt.Logger.With("spdk_bdev", opt.Bdev, "vhost_controller", opt.Controller),
		ready: make(chan struct{}), loopDone: make(chan struct{})}
	close(d.ready)
	close(d.loopDone)
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if err := checkHugePages(opt); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.cancel()
		}
	}()
	rc, err := rpc.Dial(ctx, opt.Socket, rpc.Options{Timeout: opt.RPCTimeout, Logger: opt.Logger})
	if err != nil {
		return nil, fmt.Errorf("%w: SPDK RPC socket %s: %w (is the SPDK target running? --spdk-launch starts one)", ErrPreflight, opt.Socket, err)
	}
	d.rc = rc
	reuse, err := d.checkTarget(ctx)
	if err != nil {
		rc.Close()
		return nil, err
	}
	d.reused = reuse
	if err := d.connect(ctx, reuse); err != nil {
		rc.Close()
		return nil, err
	}
	ok = true
	d.log.Info("SPDK device open", "size", d.size, "block_size", d.bs, "product", d.bdev.ProductName,
		"discard_zeroes", d.zeroes, "discard", d.discard, "reused_controller", reuse)
	return d, nil
}

// hugePagesNeeded is how many 2 MiB pages the initiator's shared memory
// takes: its data buffers plus a page for the rings and request slots.
func hugePagesNeeded(opt Options) int {
	data := int64(opt.Queues) * int64(opt.QueueDepth) * int64(opt.MaxIO)
	return int((data+2<<20-1)/(2<<20)) + 1
}

func checkHugePages(opt Options) error {
	need := hugePagesNeeded(opt)
	total, err := readInt(filepath.Join(opt.HugePageDir, "nr_hugepages"))
	if err != nil {
		return fmt.Errorf("%w: huge pages: %w (the kernel offers no 2 MiB huge pages?)", ErrPreflight, err)
	}
	if total == 0 {
		return fmt.Errorf("%w: no 2 MiB huge pages are reserved (%s/nr_hugepages is 0); the SPDK device needs %d for its shared memory, "+
			"and the SPDK target its own: e.g. echo 1024 > /proc/sys/vm/nr_hugepages", ErrPreflight, opt.HugePageDir, need)
	}
	free, err := readInt(filepath.Join(opt.HugePageDir, "free_hugepages"))
	if err != nil {
		return fmt.Errorf("%w: huge pages: %w", ErrPreflight, err)
	}
	resv, err := readInt(filepath.Join(opt.HugePageDir, "resv_hugepages"))
	if err != nil {
		return fmt.Errorf("%w: huge pages: %w", ErrPreflight, err)
	}
	if avail := free - resv; avail < need {
		return fmt.Errorf("%w: %d of %d reserved 2 MiB huge pages are free (%d more promised to mappings); the SPDK device needs %d "+
			"(queues %d × depth %d × max IO %d bytes): reserve more in /proc/sys/vm/nr_hugepages", ErrPreflight,
			free, total, resv, need, opt.Queues, opt.QueueDepth, opt.MaxIO)
	}
	return nil
}

// checkTarget runs the checks that ask the target. It reports whether a
// controller of our name already serves the bdev (left by a gateway that
// was killed), to be used as it is.
func (d *Device) checkTarget(ctx context.Context) (reuse bool, err error) {
	opt := d.opt
	bdevs, err := d.rc.BdevGetBdevs(ctx, rpc.GetBdevs{Name: opt.Bdev})
	if errors.Is(err, rpc.ErrNoSuchDevice) {
		return false, fmt.Errorf("%w: the SPDK target at %s has no bdev %q%s", ErrPreflight, opt.Socket, opt.Bdev, d.bdevList(ctx))
	}
	if err != nil {
		return false, fmt.Errorf("%w: bdev_get_bdevs %s: %w", ErrPreflight, opt.Bdev, err)
	}
	if len(bdevs) != 1 {
		return false, fmt.Errorf("%w: bdev_get_bdevs %s answered %d bdevs", ErrPreflight, opt.Bdev, len(bdevs))
	}
	b := bdevs[0]
	d.bdev, d.bs = b, int64(b.BlockSize)
	if b.BlockSize < 512 || b.BlockSize > store.DeviceBlockSize || bits.OnesCount32(b.BlockSize) != 1 {
		return false, fmt.Errorf("%w: bdev %s has %d-byte blocks; the store needs a power of two from 512 to %d", ErrPreflight, b.Name, b.BlockSize, store.DeviceBlockSize)
	}
	if b.Size() < store.MinDeviceSize {
		return false, fmt.Errorf("%w: bdev %s holds %d bytes (%d blocks of %d); the store needs at least %d", ErrPreflight, b.Name, b.Size(), b.NumBlocks, b.BlockSize, int64(store.MinDeviceSize))
	}
	if !b.SupportedIOTypes.Read || !b.SupportedIOTypes.Write {
		return false, fmt.Errorf("%w: bdev %s does not support both read and write", ErrPreflight, b.Name)
	}
	ctrls, err := d.rc.VhostGetControllers(ctx, "")
	if err != nil {
		return false, fmt.Errorf("%w: vhost_get_controllers: %w (does this SPDK target include the vhost subsystem? spdk_tgt and vhost do)", ErrPreflight, err)
	}
	for _, c := range ctrls {
		served := controllerBdev(c)
		switch {
		case c.Ctrlr == opt.Controller && served == b.Name:
			reuse = true
		case c.Ctrlr == opt.Controller:
			return false, fmt.Errorf("%w: vhost controller %s exists and serves bdev %q, not %q; delete it (rpc.py vhost_delete_controller %s) or pick another data directory",
				ErrPreflight, c.Ctrlr, served, b.Name, c.Ctrlr)
		case served == b.Name:
			return false, fmt.Errorf("%w: bdev %s is already served by vhost controller %s (another gateway's?); two writers would corrupt the store", ErrPreflight, b.Name, c.Ctrlr)
		}
	}
	if b.Claimed && !reuse {
		return false, fmt.Errorf("%w: bdev %s is claimed by another SPDK module (an lvol store, a RAID, ...)", ErrPreflight, b.Name)
	}
	return reuse, nil
}

// controllerBdev is the bdev a vhost controller serves ("" for a non-blk
// controller).
func controllerBdev(c rpc.VhostController) string {
	var spec struct {
		Block struct {
			Bdev string `json:"bdev"`
		} `json:"block"`
	}
	if json.Unmarshal(c.BackendSpecific, &spec) != nil {
		return ""
	}
	return spec.Block.Bdev
}

// bdevList is ": it has A, B" for an error message.
func (d *Device) bdevList(ctx context.Context) string {
	all, err := d.rc.BdevGetBdevs(ctx, rpc.GetBdevs{})
	if err != nil {
		return ""
	}
	if len(all) == 0 {
		return ": it has none"
	}
	names := make([]string, len(all))
	for i, b := range all {
		names[i] = b.Name
	}
	sort.Strings(names)
	return ": it has " + strings.Join(names, ", ")
}

// connect creates the controller (unless reused) and dials it; a failure
// deletes a controller it created.
func (d *Device) connect(ctx context.Context, reuse bool) error {
	opt := d.opt
	if !reuse {
		err := d.rc.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: opt.Controller, DevName: opt.Bdev})
		if err != nil {
			return fmt.Errorf("vhost_create_blk_controller %s on bdev %s: %w", opt.Controller, opt.Bdev, err)
		}
	}
	fail := func(err error) error {
		if !reuse {
			d.deleteController()
		}
		return err
	}
	c, err := d.dial(ctx)
	if err != nil {
		return fail(err)
	}
	if cb := int64(c.BlockSize()); cb > d.bs {
		d.bs = cb
	}
	d.size = min(c.Size(), d.bdev.Size())
	if c.ReadOnly() {
		c.Close()
		return fail(fmt.Errorf("vhost controller %s offers bdev %s read-only", opt.Controller, opt.Bdev))
	}
	d.zeroes = d.bdev.SupportedIOTypes.Unmap && c.HasWriteZeroes()
	d.discard = c.HasDiscard()
	d.cur = c
	return nil
}

func (d *Device) deleteController() error {
	ctx, cancel := context.WithTimeout(context.Background(), d.opt.RPCTimeout)
	defer cancel()
	err := d.rc.VhostDeleteController(ctx, d.opt.Controller)
	if err != nil {
		d.log.Warn("deleting the vhost controller failed", "err", err)
	}
	return err
}

// deleteClosed deletes the controller after the initiator closed: SPDK
// refuses ("Device or resource busy", "has still valid connection")
// until it has processed the disconnect, so a busy answer is retried for
// up to two seconds.
func (d *Device) deleteClosed() error {
	deadline := time.Now().Add(2 * time.Second)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), d.opt.RPCTimeout)
		err := d.rc.VhostDeleteController(ctx, d.opt.Controller)
		cancel()
		var re *rpc.Error
		if err == nil || !errors.As(err, &re) || !busy(re) || time.Now().After(deadline) {
			if err != nil && !errors.Is(err, rpc.ErrNoSuchDevice) {
				d.log.Warn("deleting the vhost controller failed", "err", err)
			}
			return err
		}
		time.Sleep(wait) // SPDK's reactor tears the session down meanwhile
	}
}

// busy reports whether SPDK refused because the controller still has a
// connection.
func busy(e *rpc.Error) bool {
	return e.Code == -16 || strings.Contains(e.Message, "busy") || strings.Contains(e.Message, "valid connection")
}

// Bdev is what the target said of the bdev when the device was opened.
func (d *Device) Bdev() rpc.Bdev { return d.bdev }

// Reused reports whether Open found the controller already serving the
// bdev (left by a gateway that was killed) and used it.
func (d *Device) Reused() bool { return d.reused }

// Controller is the vhost controller's name.
func (d *Device) Controller() string { return d.opt.Controller }

// BlockSize is the block size IO is aligned to (the bdev's).
func (d *Device) BlockSize() int64 { return d.bs }

// Size is the bdev's size in bytes.
func (d *Device) Size() int64 { return d.size }

// DiscardZeroes: see the package doc, Discard.
func (d *Device) DiscardZeroes() bool { return d.zeroes }

// Flush makes completed writes durable (virtio FLUSH, which SPDK passes to
// the bdev).
func (d *Device) Flush() error {
	end := d.stats.begin(opFlush)
	err := d.do(func(ctx context.Context, c *virtio.Client) error { return c.FlushContext(ctx) })
	end(0, err)
	return err
}

// Close ends a reconnect in progress, closes the initiator, then deletes
// the controller and closes the RPC connection. Calls waiting for a
// reconnect fail with gateway.ErrClosed. It is safe to call more than once.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.cancel()
		d.mu.Lock()
		c, loop := d.cur, d.loopDone
		d.cur = nil
		d.mu.Unlock()
		<-loop
		if c != nil {
			d.closeErr = c.Close()
		}
		if err := d.deleteClosed(); err != nil && !errors.Is(err, rpc.ErrNoSuchDevice) && d.closeErr == nil {
			d.closeErr = fmt.Errorf("delete vhost controller %s: %w", d.opt.Controller, err)
		}
		d.rc.Close()
	})
	return d.closeErr
}
