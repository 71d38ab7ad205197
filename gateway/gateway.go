// Package gateway is Sluice's per-host data plane. A Gateway owns one store
// (one device, one badger database) and serves its volumes to the doors
// (nbd, fuse, virtio, shim), which stay thin: each turns what it receives into
// a Request and calls Volume.Do.
//
// Every data change enters Volume.Do: reads and writes, flush, discard and
// write-zeroes from every door, and for fs files also allocate, set length
// and sync (fallocate, truncate and fsync in the file doors). The file doors
// get the rest of an fs volume, its names and attributes, as a Namespace
// (namespace.go), which changes no file data.
//
// Volume.Do is the request path of DESIGN.md:
//
//  1. classify: compiled policy rules pick a route (queue + filter chain),
//     cached per volume and invalidated by a policy epoch;
//  2. queue: admission by the route's queue limits and the scheduler;
//  3. store: map to chunks, run the filter chain per chunk, device IO;
//  4. account: counters per volume, door and operation.
//
// Step 1 has two halves, each a per-volume decision cached in an atomic
// pointer and recomputed whenever its rules change. The QoS half (rules.go)
// picks the queue: a volume no QoS rule matches has a nil route and its
// requests skip step 2 entirely. The filter half (filters.go) picks the
// filter chain from the policies in force (policy.go; package policy
// compiles them, policy.Resolve picks the most specific): a volume no policy
// matches has a nil pointer and its requests go to the store's plain path.
// Policies with WHEN are switched on and off by automation controllers that
// watch one-second workload metrics (automation.go). Step 2 is the IOFlow
// queue of the winning rule in the gateway's one mClock scheduler (package
// qos). In step 3 the store runs the request's chain on each chunk a write
// touches (copy-on-write of transformed chunks), undoes each chunk's
// recorded chain on read, and serves reads through the volume's read cache
// when the chain has the cache filter (package store, cow.go and
// transformed.go). Encryption keys come from the keyring given at start
// (Config.Keyring) and never leave the filter package.
//
// A request with FUA (any write-like op) is durable when Do returns: the
// store writes a FUA write through, and Do flushes the store (device flush,
// then metadata sync) after any other FUA op.
//
// Panics: Do recovers a panic anywhere below it (classify, queue, filters,
// store) and fails that request with ErrIO; the panic is logged at ERROR
// with its stack and counted per volume, door and op
// (sluice_volume_panics_total, OpStats.Panics). It is the one place every
// door's data requests pass, so each door recovers only its own code, with
// the same outcome: that request fails with an IO error and the door keeps
// serving (see the nbd, virtio and fuse package docs). State the panicking
// code held (a chunk stripe lock, say) may stay held; requests that need it
// then wait, the rest of the gateway serves on.
//
// Nothing in gateway imports a door.
package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/gateway/qos"
	"github.com/sluice-storage/sluice/gateway/store"
	"github.com/sluice-storage/sluice/gateway/store/fsns"
	"github.com/sluice-storage/sluice/internal/bufpool"
)

// Config is everything a Gateway needs, in one plain struct.
type Config struct {
	// DataDir holds the metadata (DataDir/meta) and, by default, the pool
	// file (DataDir/pool).
	DataDir string
	// Device is a pool file or block device that exists; default
	// DataDir/pool, created on first start.
	Device string
	// Dev, when set, is the device itself, already open (the SPDK
	// device); Device and PoolSize are then ignored. The gateway owns it
	// from Open on: it is closed by Close, or by Open when Open fails.
	Dev device.Device
	// PoolSize is the size of the default pool file created on first
	// start (sparse: it takes no space until written; 0: DefaultPoolSize).
	// A larger size grows an existing pool file; block devices keep theirs.
	PoolSize int64
	// QoSSlots is how many requests routed by QoS rules the scheduler lets
	// run at once (mClock's device queue depth). Reservations and weights
	// act only when more requests than this are waiting; limits act
	// always. Default 16.
	QoSSlots int
	// QoSCapacityIOPS is the device's capacity for QoS-routed IO, in 8 KiB
	// units per second; 0 = unknown. With it, reservations and weights
	// divide that capacity even when the pool is a page-cached file that is
	// never busy (see qos.Options.CapacityIOPS).
	QoSCapacityIOPS float64
	// QoSCostUnit is the IO size that costs one unit (default 8 KiB): IOPS
	// limits, reservations and weights count max(1, ceil(bytes/unit)).
	QoSCostUnit int64
	// AutomationInterval is how often automation controllers evaluate
	// their WHEN conditions (default 1s; negative: never, for tests that
	// step them by hand).
	AutomationInterval time.Duration
	// Keyring holds the tenants' encryption keys (nil: no tenant has one,
	// and no policy can set encryption).
	Keyring *filter.Keyring
	Logger  *slog.Logger
	// KeepOrphans: store.Options.KeepOrphans (inodes a planned handover's
	// FUSE mounts still hold open, by volume ref).
	KeepOrphans map[string]map[uint64]bool
}

// DefaultPoolSize is the sparse pool file created by default.
const DefaultPoolSize = 64 << 30

// Gateway is one host's data plane.
type Gateway struct {
	log   *slog.Logger
	dev   device.Device
	store *store.Store

	mu   sync.Mutex
	vols map[uint64]*Volume // by store id, so counters outlive lookups

	rules  rules
	access access // tenant grants (access.go)

	env       *filter.Env // filter codecs and the keyring
	keyringMu sync.Mutex  // serialises keyring reloads
	policies  policies
	auto      automation   // the automation controllers' state between ticks
	bufs      bufpool.Pool // copies of shared write buffers (Request.Shared)
	stop      chan struct{}
	done      chan struct{}
}

// Open opens or creates the gateway's store.
func Open(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DataDir == "" {
		if cfg.Dev != nil {
			cfg.Dev.Close()
		}
		return nil, fmt.Errorf("gateway: no data directory: %w", ErrInvalid)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		if cfg.Dev != nil {
			cfg.Dev.Close()
		}
		return nil, fmt.Errorf("gateway: %w", err)
	}
	dev, err := openDevice(cfg)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if cfg.Keyring != nil {
		cfg.Logger.Info("keyring loaded", "keyring", cfg.Keyring) // tenants only, never keys
	}
	env := filter.NewEnv(cfg.Keyring)
	st, err := store.Open(ctx, filepath.Join(cfg.DataDir, "meta"), dev, store.Options{Logger: cfg.Logger, Filters: env, Namespaces: fsns.Maker{},
		KeepOrphans: cfg.KeepOrphans})
	if err != nil {
		dev.Close()
		env.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if cfg.QoSSlots == 0 {
		cfg.QoSSlots = 16
	}
	g := &Gateway{log: cfg.Logger, dev: dev, store: st, vols: make(map[uint64]*Volume), env: env}
	g.rules = rules{sched: qos.NewScheduler(qos.Options{MaxInFlight: cfg.QoSSlots, CapacityIOPS: cfg.QoSCapacityIOPS, CostUnit: cfg.QoSCostUnit}), byID: make(map[uint64]*ruleQueue)}
	if err := g.loadRules(); err != nil {
		g.Close()
		return nil, fmt.Errorf("gateway: load QoS rules: %w", err)
	}
	if err := g.loadPolicies(); err != nil {
		g.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := g.loadGrants(); err != nil {
		g.Close()
		return nil, fmt.Errorf("gateway: load tenant grants: %w", err)
	}
	if cfg.AutomationInterval == 0 {
		cfg.AutomationInterval = time.Second
	}
	if cfg.AutomationInterval > 0 {
		g.stop, g.done = make(chan struct{}), make(chan struct{})
		go g.automate(cfg.AutomationInterval, g.stop, g.done)
	}
	return g, nil
}

// openDevice returns cfg.Dev, or opens the pool file or block device: the
// default pool file is created (with DefaultPoolSize if no size is given);
// a device named in the config must exist, and is grown only to a size
// given explicitly.
func openDevice(cfg Config) (device.Device, error) {
	if cfg.Dev != nil {
		return cfg.Dev, nil
	}
	devOpts := device.FileOptions{Size: cfg.PoolSize}
	if cfg.Device == "" {
		cfg.Device = filepath.Join(cfg.DataDir, "pool")
		devOpts.Create = true
		if devOpts.Size == 0 {
			devOpts.Size = DefaultPoolSize
		}
	}
	return device.OpenFileWith(cfg.Device, devOpts)
}

// Close flushes everything and closes the store and device.
func (g *Gateway) Close() error {
	if g.stop != nil {
		close(g.stop)
		<-g.done
		g.stop = nil
	}
	err := g.store.Close()
	if cerr := g.dev.Close(); err == nil {
		err = cerr
	}
	g.env.Close()
	return err
}

// Flush makes every acknowledged write on every volume durable.
func (g *Gateway) Flush(ctx context.Context) error { return g.store.Flush(ctx) }

// SplitRef splits "tenant/name".
func SplitRef(ref string) (tenant, name string, err error) {
	tenant, name, ok := strings.Cut(ref, "/")
	if !ok || !store.ValidName(tenant) || !store.ValidName(name) {
		return "", "", fmt.Errorf("volume %q: %w: want TENANT/NAME", ref, ErrInvalid)
	}
	return tenant, name, nil
}

// RefFileName is volume ref as one file name, for the sockets and
// directories doors make per volume: "tenant@name". The mapping is
// injective: '@' is not allowed in tenant or volume names (with '.', both
// "x.y/z" and "x/y.z" were "x.y.z").
func RefFileName(ref string) string { return strings.Replace(ref, "/", "@", 1) }

// Volume finds a volume by "tenant/name".
func (g *Gateway) Volume(ref string) (*Volume, error) {
	tenant, name, err := SplitRef(ref)
	if err != nil {
		return nil, err
	}
	sv, err := g.store.Volume(tenant, name)
	if err != nil {
		return nil, err
	}
	return g.wrap(sv), nil
}

// Volumes lists every volume, sorted by tenant/name.
func (g *Gateway) Volumes() []*Volume {
	svs := g.store.Volumes()
	out := make([]*Volume, len(svs))
	for i, sv := range svs {
		out[i] = g.wrap(sv)
	}
	return out
}

func (g *Gateway) wrap(sv *store.Volume) *Volume {
	info := sv.Info()
	g.mu.Lock()
	v := g.vols[info.ID]
	if v != nil && v.sv == sv {
		g.mu.Unlock()
		return v
	}
	v = newVolume(g, sv)
	g.vols[info.ID] = v
	g.mu.Unlock()
	// Classify outside g.mu (reroute and refilter take rules.mu or
	// policies.mu, then g.mu).
	g.rules.mu.Lock()
	v.route.Store(g.routeFor(info.Tenant, info.Name, g.ruleOrder()))
	g.rules.mu.Unlock()
	g.policies.mu.Lock()
	v.filt.Store(g.classifyFilters(v))
	g.policies.mu.Unlock()
	return v
}

// CreateVolume creates a volume.
func (g *Gateway) CreateVolume(ctx context.Context, o store.CreateOptions) (*Volume, error) {
	sv, err := g.store.CreateVolume(ctx, o)
	if err != nil {
		return nil, err
	}
	g.log.Info("volume created", "volume", sv.Info().Ref(), "size", o.Size)
	return g.wrap(sv), nil
}

// ResizeVolume grows a volume.
func (g *Gateway) ResizeVolume(ctx context.Context, ref string, size int64) error {
	tenant, name, err := SplitRef(ref)
	if err != nil {
		return err
	}
	if err := g.store.ResizeVolume(ctx, tenant, name, size); err != nil {
		return err
	}
	g.log.Info("volume resized", "volume", ref, "size", size)
	return nil
}

// DeleteVolume deletes a volume and returns its space to the pool.
func (g *Gateway) DeleteVolume(ctx context.Context, ref string) error {
	tenant, name, err := SplitRef(ref)
	if err != nil {
		return err
	}
	sv, err := g.store.Volume(tenant, name)
	if err != nil {
		return err
	}
	if err := g.store.DeleteVolume(ctx, tenant, name); err != nil {
		return err
	}
	g.mu.Lock()
	delete(g.vols, sv.Info().ID)
	g.mu.Unlock()
	g.log.Info("volume deleted", "volume", ref)
	return nil
}

// PoolStats reports pool usage.
func (g *Gateway) PoolStats() store.PoolStats { return g.store.Stats() }
