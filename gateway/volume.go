package gateway

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Extent is one run of a volume's address space.
type Extent = store.Extent

// VolumeInfo is a volume's record.
type VolumeInfo = store.VolumeInfo

// CreateOptions describe a new volume.
type CreateOptions = store.CreateOptions

// The filesystem engine of fs volumes, shared by the file doors (FUSE, the
// shim). Namespace calls go straight to it; file data goes through Do with
// the file's inode and path.
type (
	FS         = store.FS
	Attr       = store.Attr
	NewInode   = store.NewInode
	SetAttr    = store.SetAttr
	DirEntry   = store.DirEntry
	FSStats    = store.FSStats
	FsckReport = store.FsckReport
	Change     = store.Change  // a change reported to a Watcher
	Watcher    = store.Watcher // a door that caches (FS.Watch)
)

// WithOrigin marks ctx as a call on behalf of w: FS does not report the
// changes it makes back to w.
func WithOrigin(ctx context.Context, w Watcher) context.Context { return store.WithOrigin(ctx, w) }

// Volume kinds.
const (
	KindBlock = store.KindBlock
	KindFS    = store.KindFS
)

// RootIno is the inode of an fs volume's root directory.
const RootIno = store.RootIno

// Volume is a volume as the doors see it: the store volume plus the request
// pipeline and its counters.
type Volume struct {
	g  *Gateway
	sv *store.Volume
	// route is the classify step's cached result: nil means no rule
	// matches this volume and its requests take the fast path.
	route atomic.Pointer[route]
	// files caches the file rules matching each file (filecache.go).
	files atomic.Pointer[fileCache]
	// filt is the filter half of classify (filters.go): nil means no
	// policy in force matches this volume and its IO is plain.
	filt     atomic.Pointer[volFilters]
	counters counters
}

func newVolume(g *Gateway, sv *store.Volume) *Volume { return &Volume{g: g, sv: sv} }

// Ref is "tenant/name".
func (v *Volume) Ref() string { return v.sv.Info().Ref() }

// Info returns the volume's record.
func (v *Volume) Info() VolumeInfo { return v.sv.Info() }

// Size is the volume's current size in bytes.
func (v *Volume) Size() int64 { return v.sv.Size() }

// ReadOnly reports whether the volume refuses writes.
func (v *Volume) ReadOnly() bool { return v.sv.Info().ReadOnly }

// Kind is KindBlock or KindFS.
func (v *Volume) Kind() string { return v.sv.Kind() }

// FS is an fs volume's namespace (nil for a block volume).
func (v *Volume) FS() *FS { return v.sv.FS() }

// AllocatedBytes is the pool space the volume holds.
func (v *Volume) AllocatedBytes() int64 { return v.sv.AllocatedBytes() }

// Do runs one request through the pipeline (see the package doc).
func (v *Volume) Do(ctx context.Context, req *Request) error {
	start := time.Now()
	// 1+2. classify and queue: only when a rule routes this volume.
	if r := v.route.Load(); r != nil && req.Door < numDoors {
		c := classOf(req.Op)
		if q := v.queueFor(r, req, c); q != nil {
			done, err := v.g.rules.sched.Admit(ctx, q, c, int64(len(req.Buf)))
			if err != nil {
				v.counters.record(req.Door, req.Op, 0, time.Since(start), err)
				return err
			}
			defer done()
		}
	}
	// 1b. classify: the filter chain, only when a policy matches.
	var f store.Filters
	if vf := v.filt.Load(); vf != nil {
		f = v.filtersFor(ctx, vf, req)
	}
	// 3. store.
	var err error
	var n int64
	switch req.Op {
	case OpRead:
		n = int64(len(req.Buf))
		err = v.sv.ReadAtWith(ctx, req.Inode, req.Buf, req.Offset, f)
	case OpWrite:
		n = int64(len(req.Buf))
		err = v.sv.WriteAtWith(ctx, req.Inode, req.Buf, req.Offset, req.FUA, f)
	case OpFlush:
		err = v.sv.Flush(ctx)
	case OpDiscard:
		n = req.Length
		err = v.sv.Discard(ctx, req.Inode, req.Offset, req.Length)
	case OpWriteZeroes:
		n = req.Length
		err = v.sv.WriteZeroesWith(ctx, req.Inode, req.Offset, req.Length, req.NoHole, f)
		if err == nil && req.FUA {
			err = v.sv.Flush(ctx)
		}
	default:
		err = fmt.Errorf("op %v: %w", req.Op, ErrUnsupported)
	}
	// 4. account.
	v.counters.record(req.Door, req.Op, n, time.Since(start), err)
	return err
}

// Fsck checks the volume's metadata (see store.Store.Fsck).
func (v *Volume) Fsck(ctx context.Context) (FsckReport, error) {
	info := v.sv.Info()
	return v.g.store.Fsck(ctx, info.Tenant, info.Name)
}

// ScrubReport is the result of Scrub.
type ScrubReport = store.ScrubReport

// Scrub reads and verifies every transformed chunk of the volume (crc32c,
// AES-GCM tags, compressed frames) and lists the ones that fail.
func (v *Volume) Scrub(ctx context.Context) (ScrubReport, error) { return v.sv.Scrub(ctx) }

// Extents describes [off, off+length) of a block volume as data and holes.
func (v *Volume) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	return v.sv.Extents(ctx, 0, off, length)
}
