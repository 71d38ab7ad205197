// Package gateway is Sluice's per-host data plane. A Gateway owns one store
// (one device, one badger database) and serves its volumes to the doors
// (nbd, fuse, virtio, shim), which stay thin: each turns what it receives into
// a Request and calls Volume.Do.
//
// Volume.Do is the request path of DESIGN.md:
//
//  1. classify: compiled policy rules pick a route (queue + filter chain),
//     cached per volume and invalidated by a policy epoch;
//  2. queue: admission by the route's queue limits and the scheduler;
//  3. store: map to chunks, run the filter chain per chunk, device IO;
//  4. account: counters per volume, door and operation.
//
// Queues (IOFlow) and filters (Crystal) are separate issues; until they land,
// no rule exists, every request takes the unrouted fast path, and steps 1
// and 2 cost one atomic pointer load. The seam is Volume.route.
//
// Nothing in gateway imports a door.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

// Config is everything a Gateway needs, in one plain struct.
type Config struct {
	// DataDir holds the metadata (DataDir/meta) and, by default, the pool
	// file (DataDir/pool).
	DataDir string
	// Device is a pool file or block device; default DataDir/pool.
	Device string
	// PoolSize is the size of a pool file created on first start (sparse:
	// it takes no space until written). Ignored for existing pools and block
	// devices, except that a larger size grows a pool file.
	PoolSize int64
	Logger   *slog.Logger
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
}

// Open opens or creates the gateway's store.
func Open(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("gateway: no data directory: %w", ErrInvalid)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if cfg.Device == "" {
		cfg.Device = filepath.Join(cfg.DataDir, "pool")
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	dev, err := device.OpenFile(cfg.Device, cfg.PoolSize)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	st, err := store.Open(ctx, filepath.Join(cfg.DataDir, "meta"), dev, store.Options{Logger: cfg.Logger})
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	return &Gateway{log: cfg.Logger, dev: dev, store: st, vols: make(map[uint64]*Volume)}, nil
}

// Close flushes everything and closes the store and device.
func (g *Gateway) Close() error {
	err := g.store.Close()
	if cerr := g.dev.Close(); err == nil {
		err = cerr
	}
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
	id := sv.Info().ID
	g.mu.Lock()
	defer g.mu.Unlock()
	v := g.vols[id]
	if v == nil || v.sv != sv {
		v = newVolume(g, sv)
		g.vols[id] = v
	}
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

// IsNotFound and friends are conveniences for callers that map errors.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
