package gateway

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/gateway/store"
	"github.com/sluice-storage/sluice/gateway/store/fsns"
)

// Extent is one run of a volume's address space.
type Extent = store.Extent

// VolumeInfo is a volume's record.
type VolumeInfo = store.VolumeInfo

// CreateOptions describe a new volume.
type CreateOptions = store.CreateOptions

// The types of an fs volume's namespace (see Namespace), shared by the file
// doors (FUSE, the shim). File data goes through Do with the file's inode
// and path.
type (
	Attr       = fsns.Attr
	NewInode   = fsns.NewInode
	SetAttr    = fsns.SetAttr
	DirEntry   = fsns.DirEntry
	FSStats    = fsns.FSStats
	FsckReport = store.FsckReport
	Change     = fsns.Change  // a change reported to a Watcher
	Watcher    = fsns.Watcher // a door that caches (FS.Watch)
)

// WithOrigin marks ctx as a call on behalf of w: FS does not report the
// changes it makes back to w.
func WithOrigin(ctx context.Context, w Watcher) context.Context { return fsns.WithOrigin(ctx, w) }

// Volume kinds.
const (
	KindBlock = store.KindBlock
	KindFS    = store.KindFS
)

// RootIno is the inode of an fs volume's root directory.
const RootIno = fsns.RootIno

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
	// testFault, set only by tests before any IO, runs at the start of
	// Do's store step with the caller's request: a test makes it panic
	// to check the panic policy, or changes its Buf as a client changes
	// shared memory during a write (Request.Shared).
	testFault func(*Request)
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

// AllocatedBytes is the pool space the volume holds.
func (v *Volume) AllocatedBytes() int64 { return v.sv.AllocatedBytes() }

// Queued reports whether a QoS rule routes the volume: its requests
// may wait in a queue inside Do for as long as their limits say. A door
// that runs quick requests on a thread other requests need (the shim's
// poller) runs such a volume's elsewhere.
func (v *Volume) Queued() bool { return v.route.Load() != nil }

// Do runs one request through the pipeline (see the package doc).
//
// A FUA write, write-zeroes or discard is durable when Do returns. A panic
// anywhere below Do (classify, queue, filters, store) fails that request
// with ErrIO: it is logged with its stack at ERROR and counted
// (sluice_volume_panics_total), and the gateway carries on.
func (v *Volume) Do(ctx context.Context, req *Request) (err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = v.recovered(req, start, p)
		}
	}()
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
	// 1c. a write from shared memory is copied when filters compute
	// over its bytes (Request.Shared).
	run := req
	if req.Op == OpWrite && req.Shared && (!f.Chain.Plain() || f.Cache) {
		b := v.g.bufs.Get(len(req.Buf))
		defer v.g.bufs.Put(b)
		copy(b.B, req.Buf)
		own := *req
		own.Buf = b.B
		run = &own
	}
	// 3. store.
	if v.testFault != nil {
		v.testFault(req) // the caller's request: a test may change its Buf as a client could
	}
	n, err := v.exec(ctx, run, f)
	// 4. account.
	v.counters.record(req.Door, req.Op, n, time.Since(start), err)
	return err
}

// exec is Do's store step: it runs req with the filters f and returns the
// bytes it counts for. FUA makes every write-like op durable before it
// returns (by a flush where the store has no cheaper way).
func (v *Volume) exec(ctx context.Context, req *Request, f store.Filters) (int64, error) {
	var err error
	switch req.Op {
	case OpRead:
		return int64(len(req.Buf)), v.sv.ReadAtWith(ctx, req.Inode, req.Buf, req.Offset, f)
	case OpWrite:
		return int64(len(req.Buf)), v.sv.WriteAtWith(ctx, req.Inode, req.Buf, req.Offset, req.FUA, f)
	case OpFlush:
		return 0, v.sv.Flush(ctx)
	case OpSync:
		if req.Inode == 0 {
			return 0, v.sv.Flush(ctx)
		}
		fs, ferr := v.fileOp(req)
		if ferr != nil {
			return 0, ferr
		}
		return 0, fs.Fsync(ctx, req.Inode, req.DataOnly)
	case OpDiscard:
		err = v.sv.Discard(ctx, req.Inode, req.Offset, req.Length)
	case OpWriteZeroes:
		err = v.writeZeroes(ctx, req, f)
	case OpAllocate:
		err = v.fallocate(ctx, req, 0)
	case OpSetLength:
		fs, ferr := v.fileOp(req)
		if ferr != nil {
			return 0, ferr
		}
		_, err = fs.SetAttr(ctx, req.Inode, fsns.SetAttr{Size: &req.Length})
	default:
		return 0, fmt.Errorf("op %v: %w", req.Op, ErrUnsupported)
	}
	if err == nil && req.FUA {
		err = v.sv.Flush(ctx)
	}
	return req.Length, err
}

// writeZeroes is OpWriteZeroes: on a block volume the store's write-zeroes;
// on a file without NoHole, fallocate's ZERO_RANGE (which may grow the file).
func (v *Volume) writeZeroes(ctx context.Context, req *Request, f store.Filters) error {
	if req.Inode == 0 || req.NoHole {
		return v.sv.WriteZeroesWith(ctx, req.Inode, req.Offset, req.Length, req.NoHole, f)
	}
	return v.fallocate(ctx, req, fsns.FallocZeroRange)
}

// fallocate runs fallocate(2)'s mode on an fs file, with KEEP_SIZE from req.
func (v *Volume) fallocate(ctx context.Context, req *Request, mode uint32) error {
	fs, err := v.fileOp(req)
	if err != nil {
		return err
	}
	if req.KeepSize {
		mode |= fsns.FallocKeepSize
	}
	return fs.Fallocate(ctx, req.Inode, req.Offset, req.Length, mode)
}

// fileOp returns the namespace for an op that applies to fs files only.
func (v *Volume) fileOp(req *Request) (*fsns.FS, error) {
	fs := fsns.Of(v.sv)
	if fs == nil || req.Inode == 0 {
		return nil, fmt.Errorf("volume %s: %v on inode %d: %w (fs files only)", v.Ref(), req.Op, req.Inode, ErrUnsupported)
	}
	return fs, nil
}

// recovered turns a panic in Do into the request's error. The panicking
// code may have left state it held behind (a stripe lock, say); requests
// that need it fail or wait, the rest of the gateway keeps serving.
func (v *Volume) recovered(req *Request, start time.Time, p any) error {
	err := fmt.Errorf("%w: panic in %v: %v", ErrIO, req.Op, p)
	v.g.log.Error("request panicked; failed with an IO error", "volume", v.Ref(), "door", req.Door,
		"op", req.Op, "inode", req.Inode, "offset", req.Offset, "panic", p, "stack", string(debug.Stack()))
	v.counters.panicked(req.Door, req.Op)
	v.counters.record(req.Door, req.Op, 0, time.Since(start), err)
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
