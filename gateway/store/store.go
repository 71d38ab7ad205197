// Package store keeps volumes and their chunks on one Device, with metadata
// in one badger database. It is the truth of where every byte lives.
//
// # Model
//
// A volume (tenant/name, kind, size, chunk size) is an array of chunks. The
// chunk map — (volume, inode, chunk index) → device extent — is the only
// record of allocation: free space is derived from it at start-up and kept in
// memory. Chunks are allocated on first write (thin provisioning); a plain
// chunk is then overwritten in place and later writes touch no metadata.
// A file's last chunk is stored short, in the 4 KiB units its data needs,
// and re-placed by copy-on-write when the file grows past them (short.go).
// Reads of unallocated chunks return zeros without touching the device.
//
// # Filters
//
// Each read and write carries the Filters the gateway's classify step chose
// (a filter.Chain and whether to use the volume's read cache). Under a
// plain chain (nil, or no transforms) a plain chunk takes the path above,
// in place, with no metadata and no allocation. A chunk written under a
// transforming chain (compression, encryption, checksum, noop) is
// copy-on-write (cow.go): read and undo the old chunk if the write is
// partial, merge, run the chain forward, write the stored bytes to a new
// extent of their own length (whole 4 KiB units), commit the new map entry
// with its filter record, and free the old extent through the deferred
// list. The chunk table marks transformed chunks (bit 0 of the offset); a
// read of one fetches its entry from badger and undoes exactly what its
// record says, whatever the policy is now (transformed.go). A chunk that
// fails verification reads as an error wrapping ErrIO, logged with volume,
// inode and offset. Scrub verifies every transformed chunk of a volume.
// The read cache (filter.Cache, set per volume by the gateway) is
// consulted by reads that ask for it and invalidated by every change to a
// chunk.
//
// # Ordering and durability
//
//   - Data reaches the device before the map entry that points at it is
//     committed. A crash can therefore lose a new chunk's map entry (the write
//     was not flushed yet) but never leave an entry pointing at garbage: the
//     extent was written first, and free space is discarded (reads as zeros)
//     at start-up and before reuse.
//   - An extent freed by discard, delete or copy-on-write is reused only
//     after the commit that released it is durable (a metadata sync); until
//     then it is held in a deferred list. Extents freed by copy-on-write are
//     zeroed at that point (the old entry needed their bytes until then). A
//     background loop syncs once a second while frees wait.
//   - Flush = device flush, then metadata sync. A FUA write is durable when it
//     returns: in place with RWF_DSYNC when the device offers it, otherwise by
//     a full Flush.
//
// After a crash, every write acknowledged before a completed Flush is there.
//
// # Concurrency
//
// Each volume has 64 striped RWMutexes by chunk index. Reads and in-place
// writes hold the read side of the stripes they touch (in ascending stripe
// order, so they never deadlock); allocation and unmapping hold the write
// side. Chunk lookups are atomic loads from an in-memory table (8 bytes per
// chunk), so the hot path takes no global lock and does no metadata IO.
//
// # The chunk engine and the namespace
//
// This package is the chunk engine: it owns where every byte lives.
// Allocation (alloc.go), the chunk tables and objects (table.go,
// object.go), device IO and the read/write/discard paths (io.go),
// copy-on-write and transformed chunks (cow.go, transformed.go,
// entrycache.go, scrub.go), the chunk work of files (fileobj.go), the pool
// and its volumes (store.go, volumes.go, format.go, config.go, errors.go,
// syncmark.go, metacheck.go), and fsck of the chunk maps (fsck.go). Its
// invariants:
//
//   - a chunk map entry points only at space the allocator holds, shared
//     with no other entry, and at bytes written before the entry was
//     committed (data before metadata);
//   - an extent is reused only after the commit that freed it is durable;
//   - a volume's chunk count (allocated, saved) matches its chunk maps;
//   - stripe locks order every change to a chunk; an object's table is
//     the chunk map of what is loaded;
//   - Flush and FUA make what they cover durable.
//
// An fs volume's names, attributes and file lengths are its namespace,
// package fsns, built on this one (fsns imports store, never the
// reverse). The engine does not branch on a volume's kind or an inode
// number: an object either has a fixed length (a block volume) or grows
// with its writes (a file, Object.grows), and a volume with a namespace
// gives the engine its hooks (namespace.go, the Namespace interface:
// WillWrite before a change to a file's chunks, NoteData after it, Barrier
// before a metadata sync, PurgeOrphans at open, MarkDeleted, Fsck). Making
// a volume asks the store's NamespaceMaker (Options.Namespaces: fsns.Maker)
// for an fs volume's first records and its namespace, and deleting one for
// the key prefixes of its records. A store opened without a maker holds
// block volumes only. seam_test.go keeps the engine from telling files
// apart by inode number.
//
// The namespace reaches the engine only through exported API: Volume's
// ReadAt, WriteAt, Discard, WriteZeroes and Extents (which the doors use
// too), ID, Ref, ReadOnly, ChunkSize, Size, UsedBytes, Store and
// Namespace; the chunk work of files (fileobj.go: LoadFileObject,
// NewFileObject, DropChunks, HasChunks, CountChunks, and Object's
// TrimPastEnd, Truncate, Allocate, ExtendTo); Object's CheckRange, Discard,
// Extents, Touch and its live values and data-change marks (Ino, Size,
// Mapped, Mtime, TakeDirty, SetDirty, FirstWrite, LockPersist); the
// store's DB (for its own records, under its own key prefixes), Log, Flush
// and SyncMeta; CounterKey, ChunkPrefix and ParseChunkKey;
// FsckReport.Problemf; and the error sentinels.
//
// The on-disk format is specified in docs/FORMAT.md.
package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/internal/badgerlog"
)

// Options configure a Store. The zero value is usable.
type Options struct {
	Logger *slog.Logger
	// SyncInterval is how often deferred frees are made reusable by a
	// metadata sync when nobody flushes. Default 1s.
	SyncInterval time.Duration
	// InMemoryMeta keeps metadata in memory only (tests).
	InMemoryMeta bool
	// Namespaces makes the namespaces of fs volumes (NamespaceMaker:
	// fsns.Maker). Without one, the store holds block volumes only: it
	// refuses to create an fs volume, and to open if it has one.
	Namespaces NamespaceMaker
	// Filters undoes transformed chunks on read (decoders and the
	// keyring) and serves the chains writes bring. Default: an Env without
	// keys, closed with the store; a caller's Env is the caller's to close.
	Filters *filter.Env
	// KeepOrphans names, by volume ref, inodes that are still open in
	// another door after a planned handover (FUSE handles the new process
	// adopts): their orphan records are kept at open, and such an inode is
	// purged at its last Release instead. Inode 0 in a volume's set
	// keeps every orphan of the volume (a FUSE session resumed after a
	// crash: which inodes the kernel still holds open is not known);
	// those not released meanwhile are purged at the next open without.
	KeepOrphans map[string]map[uint64]bool
}

// Store is one pool: a device plus its metadata.
type Store struct {
	db    *badger.DB
	dev   device.Device
	alloc *allocator
	// entries caches transformed chunks' map entries (entrycache.go).
	entries *entryCache
	// namespaces makes the namespaces of fs volumes (namespace.go).
	namespaces NamespaceMaker
	// keepOrphans: Options.KeepOrphans, used once by load.
	keepOrphans map[string]map[uint64]bool
	log         *slog.Logger
	zeros       []byte // maxChunkSize zero bytes, never written
	uuid        string // the pool's identity
	env         *filter.Env
	// ownEnv: the store made env and closes it.
	ownEnv bool
	bufs   sync.Pool // *[]byte scratch for transformed chunks
	// flushes counts device flushes issued (Flush, FUA writes): a short
	// chunk re-placed by copy-on-write in a file created after the last
	// one holds nothing a flush promised (short.go, growDurably).
	flushes atomic.Int64
	// flushStarted and flushDone are device flush tokens: flushes started,
	// and the highest whose flush completed (pending.go).
	flushStarted, flushDone atomic.Int64
	// records: the pending records committed since the sync loop last
	// deleted the stale ones (pending.go, dropStale).
	records liveRecords

	mu     sync.RWMutex
	byID   map[uint64]*Volume
	byName map[string]*Volume // "tenant/name"

	syncMu  sync.Mutex // one metadata sync + release at a time
	syncSeq uint64     // the last sync number committed, under syncMu (syncmark.go)
	// syncedTs is badger's last commit timestamp covered by the last
	// metadata sync, under syncMu: a sync that finds no commit after it
	// (and nothing to release) has nothing to make durable.
	syncedTs uint64
	stop     chan struct{}
	done     chan struct{}
	closed   bool
}

// Open opens (or creates) the store whose metadata lives in metaDir and whose
// data lives on dev. A new store writes a superblock to the device; an
// existing one must find its own superblock there.
func Open(ctx context.Context, metaDir string, dev device.Device, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = time.Second
	}
	if dev.Size() < MinDeviceSize {
		return nil, fmt.Errorf("store: device of %d bytes is too small (need at least %d): %w", dev.Size(), MinDeviceSize, ErrInvalid)
	}
	if !opts.InMemoryMeta {
		if err := checkTableFooters(metaDir, badgerOptions(metaDir, opts)); err != nil {
			return nil, fmt.Errorf("store: %w (restore %s from a backup)", err, metaDir)
		}
	}
	db, err := badger.Open(badgerOptions(metaDir, opts))
	if err != nil {
		return nil, fmt.Errorf("store: open metadata in %s: %w", metaDir, err)
	}
	if err := verifyBlocks(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w (restore it from a backup)", metaDir, err)
	}
	s := &Store{
		db: db, dev: dev, log: opts.Logger, env: opts.Filters, namespaces: opts.Namespaces, keepOrphans: opts.KeepOrphans,
		zeros: make([]byte, maxChunkSize),
		byID:  make(map[uint64]*Volume), byName: make(map[string]*Volume),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if s.env == nil {
		s.env, s.ownEnv = filter.NewEnv(nil), true
	}
	if err := s.load(ctx); err != nil {
		db.Close()
		if s.ownEnv {
			s.env.Close()
		}
		return nil, err
	}
	go s.syncLoop(opts.SyncInterval)
	return s, nil
}

func badgerOptions(dir string, opts Options) badger.Options {
	o := badger.DefaultOptions(dir)
	if opts.InMemoryMeta {
		o = badger.DefaultOptions("").WithInMemory(true)
	}
	// Small footprint: metadata is a few bytes per chunk and the gateway
	// must stay well under 200 MiB RSS.
	return o.WithSyncWrites(false).
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithIndexCacheSize(8 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithLogger(badgerlog.New(opts.Logger)).
		WithLoggingLevel(badger.WARNING).
		// Metadata is the truth about where data lives: every table is
		// verified at open (metacheck.go), and each block read later is
		// verified too (badger checks neither unless asked).
		WithChecksumVerificationMode(options.OnBlockRead). // tables: metacheck.go
		WithVerifyValueChecksum(true)
}

// load checks the store's identity, then rebuilds volumes, chunk tables and
// free space from the chunk maps, and finishes interrupted deletions.
func (s *Store) load(ctx context.Context) error {
	if err := s.checkIdentity(); err != nil {
		return err
	}
	if err := s.checkSyncMark(); err != nil {
		return err
	}
	s.alloc = newAllocator(dataStart, s.dev.Size()-dataStart)
	s.entries = newEntryCache(s.dev.Size())
	if n, err := s.recoverPending(); err != nil {
		return fmt.Errorf("store: load: %w", err)
	} else if n > 0 {
		s.log.Warn("copy-on-write rewrites lost in a crash (never flushed): chunks read their flushed bytes", "chunks", n)
	}
	var deleting []*Volume
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixVolume}, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var info VolumeInfo
			if err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, &info) }); err != nil {
				return fmt.Errorf("volume record %x: %w", it.Item().Key(), err)
			}
			if info.Kind == KindFS && s.namespaces == nil {
				return fmt.Errorf("volume %s is an fs volume: %w: opened without a namespace for fs volumes (Options.Namespaces)", info.Ref(), ErrUnsupported)
			}
			v := newVolume(s, info)
			if info.State == stateDeleting {
				deleting = append(deleting, v)
			} else {
				s.byID[info.ID] = v
				s.byName[info.Ref()] = v
			}
			if err := s.loadChunks(txn, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: load: %w", err)
	}
	for _, v := range s.byID {
		if v.ns != nil {
			if err := v.ns.PurgeOrphans(s.keepOrphans[v.ref]); err != nil {
				return fmt.Errorf("store: volume %s: %w", v.ref, err)
			}
		}
	}
	for _, v := range deleting {
		s.log.Info("finishing interrupted volume delete", "volume", v.ref)
		if err := s.purge(ctx, v); err != nil {
			return fmt.Errorf("store: finish deleting %s: %w", v.ref, err)
		}
	}
	// Space no map entry points at may hold data a crash left behind
	// (written, never committed), or the old bytes of extents freed by
	// copy-on-write. Discard it so new extents read as zeros, and flush:
	// the allocator hands it out as clean, and a power loss must not
	// undo the discard under a later commit (TestOpenDiscardFlushed).
	if s.dev.DiscardZeroes() {
		if err := s.alloc.freeRuns(s.dev.Discard); err != nil {
			return fmt.Errorf("store: discard free space: %w", err)
		}
		if err := s.devFlush(); err != nil {
			return fmt.Errorf("store: discard free space: %w", err)
		}
	}
	return nil
}

// loadChunks marks the space of every chunk of v as used and counts it. For
// a block volume it also fills the chunk table; files load theirs when they
// are opened (memory follows open files, not the namespace).
func (s *Store) loadChunks(txn *badger.Txn, v *Volume) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(v.id, 0)[:9], PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		_, ino, idx, ok := ParseChunkKey(it.Item().Key())
		if !ok {
			continue
		}
		var e chunkEntry
		err := it.Item().Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err })
		if err != nil {
			return err
		}
		switch {
		case ino == 0 && v.obj0 == nil, ino != 0 && v.obj0 != nil:
			s.log.Error("chunk of an inode the volume cannot have; ignored (run fsck)", "volume", v.ref, "inode", ino, "chunk", idx)
		case ino == 0 && idx >= uint64(v.obj0.table.Load().n):
			s.log.Error("chunk past the end of its volume; ignored (run fsck)", "volume", v.ref, "chunk", idx)
		case !s.alloc.contains(e.devOff, int64(e.storedLen)):
			s.log.Error("chunk points outside the pool; treated as a hole (run fsck)", "volume", v.ref, "inode", ino, "chunk", idx, "offset", e.devOff)
		case e.short() && int64(e.storedLen) >= v.chunkSize:
			s.log.Error("short chunk longer than a chunk; treated as a hole (run fsck)", "volume", v.ref, "inode", ino, "chunk", idx, "length", e.storedLen)
		default:
			if !s.alloc.mark(e.devOff, int64(e.storedLen)) {
				s.log.Error("chunk shares space with another chunk (run fsck)", "volume", v.ref, "inode", ino, "chunk", idx, "offset", e.devOff)
			}
			for _, p := range e.patches {
				if !s.alloc.contains(p.devOff, unitSize) || !s.alloc.mark(p.devOff, unitSize) {
					s.log.Error("patch outside the pool or sharing space with another chunk (run fsck)", "volume", v.ref, "inode", ino, "chunk", idx, "offset", p.devOff)
				}
			}
			if ino == 0 {
				v.obj0.table.Load().set(int64(idx), tableEntry(e))
			}
			v.allocated.Add(1)
			v.saved.Add(v.savedBy(e))
		}
	}
	return nil
}

// checkIdentity creates the store on first use, or checks that metadata and
// device belong together.
func (s *Store) checkIdentity() error {
	sb := make([]byte, superblockSize)
	if _, err := s.dev.ReadAt(sb, 0); err != nil {
		return fmt.Errorf("store: read superblock: %w", err)
	}
	devUUID, devFormat, devOK := decodeSuperblock(sb)
	var h header
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(headerKey())
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error { return json.Unmarshal(b, &h) })
	})
	switch {
	case errors.Is(err, badger.ErrKeyNotFound) && devOK:
		return fmt.Errorf("store: device holds pool %s but the metadata directory is empty; refusing to reinitialise it (wrong --data-dir?)", devUUID)
	case errors.Is(err, badger.ErrKeyNotFound):
		return s.create()
	case err != nil:
		return fmt.Errorf("store: read header: %w", err)
	}
	if h.Format > FormatVersion || devFormat > FormatVersion {
		return fmt.Errorf("store: format %d is newer than this sluice (%d); upgrade sluice", max(h.Format, devFormat), FormatVersion)
	}
	s.uuid = h.UUID
	if !devOK || devUUID != h.UUID {
		return fmt.Errorf("store: device does not belong to this metadata (want pool %s, device has %q); wrong --device?", h.UUID, devUUID)
	}
	if s.dev.Size() < h.DeviceSize {
		return fmt.Errorf("store: device shrank from %d to %d bytes; refusing to open", h.DeviceSize, s.dev.Size())
	}
	if s.dev.Size() > h.DeviceSize {
		s.log.Info("pool device grew", "from", h.DeviceSize, "to", s.dev.Size())
		h.DeviceSize = s.dev.Size()
		return s.putJSON(headerKey(), h)
	}
	return nil
}

func (s *Store) create() error {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return err
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := header{
		Format:     FormatVersion,
		UUID:       fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:]),
		DeviceSize: s.dev.Size(),
		DataStart:  dataStart,
		UnitSize:   unitSize,
	}
	// Superblock first, durable, then the header that names it.
	if _, err := s.dev.WriteAt(encodeSuperblock(h), 0); err != nil {
		return fmt.Errorf("store: write superblock: %w", err)
	}
	if err := s.dev.Flush(); err != nil {
		return err
	}
	s.uuid = h.UUID
	s.log.Info("created pool", "uuid", h.UUID, "size", h.DeviceSize)
	return s.putJSON(headerKey(), h)
}

func (s *Store) putJSON(key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(key, b) }); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return s.db.Sync()
}

// DB is the store's metadata database. A volume's namespace keeps its own
// records there, under its own key prefixes (NamespaceMaker.Prefixes).
func (s *Store) DB() *badger.DB { return s.db }

// Log is the store's logger.
func (s *Store) Log() *slog.Logger { return s.log }

// SyncMeta makes committed metadata durable and lets the space its frees
// released be reused (no device flush).
func (s *Store) SyncMeta() error { return s.syncMeta() }

// Flush makes every completed write to every volume durable: device flush,
// then metadata sync (which also lets deferred frees be reused).
func (s *Store) Flush(ctx context.Context) error {
	if err := s.devFlush(); err != nil {
		return err
	}
	return s.syncMeta()
}

// syncMeta makes committed metadata durable and releases the extents whose
// frees were committed before the sync began.
func (s *Store) syncMeta() error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	freed := s.alloc.takeDeferred()
	if need := maxFlushTok(freed); need > s.flushDone.Load() {
		// Fallbacks of pending records (pending.go): their replacements
		// must be on the device before they are reused.
		if err := s.devFlush(); err != nil {
			s.alloc.deferFree(freed)
			return err
		}
	}
	// Namespace changes return before their group is committed, and
	// their commits before they are written (fsns, FS.update): Barrier
	// commits every open group, then a transaction's start waits for
	// every commit handed to badger before it, so the sync covers them.
	for _, ns := range s.liveNamespaces() {
		ns.Barrier()
	}
	if ts := s.committedTs(); ts == s.syncedTs && ts != 0 && len(freed) == 0 {
		// Nothing committed since the last sync covered it: every
		// fdatasync of a file overwritten in place (a database's WAL
		// segment) lands here and costs only the device's flush.
		return nil
	}
	seq, err := s.commitSyncSeq()
	var ts uint64
	if err == nil {
		ts = s.committedTs() // the sync below covers every commit up to it
		err = s.db.Sync()
	}
	if err != nil {
		s.alloc.deferFree(freed)
		return fmt.Errorf("%w: metadata sync: %w", ErrIO, err)
	}
	if err := s.writeSyncMark(seq); err != nil {
		s.alloc.deferFree(freed)
		return err
	}
	s.syncedTs = ts
	s.releaseFreed(freed)
	return nil
}

// committedTs is the timestamp of badger's last commit: a transaction's
// start waits for every commit handed to badger before it, and reads at
// the last one's timestamp.
func (s *Store) committedTs() uint64 {
	txn := s.db.NewTransaction(false)
	defer txn.Discard()
	return txn.ReadTs()
}

// releaseFreed makes the extents of a durable free reusable. Those
// marked zero (freed by copy-on-write, or unmapped transformed chunks:
// they still hold the old bytes, which the old map entry needed until the
// sync that made their free durable) are not zeroed now: they become
// dirty free space, which an allocation that overwrites its extent whole
// (copy-on-write) takes as it is and one that must read zeros (a new
// plain chunk) zeroes first (allocZeroed). Zeroing them here cost a hole
// punch per rewrite, which on a pool file also blocks the writes beside
// it.
func (s *Store) releaseFreed(freed []extent) {
	var clean, dirty []extent
	for _, e := range freed {
		if e.zero {
			dirty = append(dirty, e)
		} else {
			clean = append(clean, e)
		}
	}
	s.alloc.release(clean)
	s.alloc.releaseDirty(dirty)
}

func (s *Store) syncLoop(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	nudge := s.alloc.nudge
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			nudge = s.alloc.nudge // a failed sync waits for the tick
		case <-nudge:
		}
		if s.alloc.pendingFrees() > 0 {
			if err := s.syncMeta(); err != nil {
				s.log.Error("background metadata sync failed", "err", err)
				nudge = nil
			}
		}
		s.dropStale()
	}
}

// Close flushes and closes the store. Volumes must not be used afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	err := s.Flush(context.Background())
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if s.ownEnv {
		s.env.Close()
	}
	return err
}

// PoolStats describes the pool as a whole.
type PoolStats struct {
	UUID      string `json:"uuid"`
	Size      int64  `json:"size"`        // bytes available for chunks
	Used      int64  `json:"used"`        // bytes held by chunks (and frees not yet durable)
	Volumes   int    `json:"volumes"`     // live volumes
	Provision int64  `json:"provisioned"` // sum of volume sizes (may exceed Size: thin)
}

// Stats reports pool usage.
func (s *Store) Stats() PoolStats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := PoolStats{Size: s.alloc.units * unitSize, Used: s.alloc.usedBytes(), Volumes: len(s.byID)}
	for _, v := range s.byID {
		st.Provision += v.Size()
	}
	st.UUID = s.uuid
	return st
}

// nextID allocates a volume id inside txn.
func nextID(txn *badger.Txn) (uint64, error) {
	var id uint64
	item, err := txn.Get(CounterKey("volume_id"))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
	case err != nil:
		return 0, err
	default:
		if err := item.Value(func(b []byte) error { id = binary.BigEndian.Uint64(b); return nil }); err != nil {
			return 0, err
		}
	}
	id++
	return id, txn.Set(CounterKey("volume_id"), binary.BigEndian.AppendUint64(nil, id))
}

// Volumes lists live volumes sorted by tenant/name.
func (s *Store) Volumes() []*Volume {
	s.mu.RLock()
	vs := make([]*Volume, 0, len(s.byName))
	for _, v := range s.byName {
		vs = append(vs, v)
	}
	s.mu.RUnlock()
	sort.Slice(vs, func(i, j int) bool { return vs[i].ref < vs[j].ref })
	return vs
}

// Volume finds a volume by tenant and name.
func (s *Store) Volume(tenant, name string) (*Volume, error) {
	s.mu.RLock()
	v := s.byName[tenant+"/"+name]
	s.mu.RUnlock()
	if v == nil {
		return nil, fmt.Errorf("volume %s/%s: %w", tenant, name, ErrNotFound)
	}
	return v, nil
}
