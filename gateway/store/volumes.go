package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Volume kinds.
const (
	KindBlock = "block"
	KindFS    = "fs"
)

// Chunk size limits. Chunk sizes are powers of two.
const (
	DefaultChunkSize = 64 << 10
	minChunkSize     = 4 << 10
	maxChunkSize     = 4 << 20
	// SizeAlign is the granularity of volume sizes.
	SizeAlign = 4096
	// MaxVolumeSize bounds the in-memory chunk table's top level (at most
	// 32 MiB, at 4 KiB chunks).
	MaxVolumeSize = 64 << 40
)

const stateDeleting = "deleting"

// VolumeInfo is a volume's record, stored as JSON under 'v' id.
type VolumeInfo struct {
	ID        uint64            `json:"id"`
	Tenant    string            `json:"tenant"`
	Name      string            `json:"name"`
	Kind      string            `json:"kind"`
	Size      int64             `json:"size"`
	ChunkSize int64             `json:"chunk_size"`
	ReadOnly  bool              `json:"read_only,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Created   time.Time         `json:"created"`
	State     string            `json:"state,omitempty"` // "" or "deleting"
}

// Ref is the volume's name everywhere after creation: "tenant/name".
func (i VolumeInfo) Ref() string { return i.Tenant + "/" + i.Name }

// CreateOptions describe a new volume.
type CreateOptions struct {
	Tenant, Name string
	Kind         string // default KindBlock
	Size         int64
	ChunkSize    int64 // default DefaultChunkSize
	ReadOnly     bool
	Labels       map[string]string
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidName reports whether s is a valid tenant or volume name: 1-63
// characters of letters, digits, '.', '_' and '-', starting with a letter or
// digit.
func ValidName(s string) bool { return namePattern.MatchString(s) }

func (o *CreateOptions) validate() error {
	if o.Kind == "" {
		o.Kind = KindBlock
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultChunkSize
	}
	switch {
	case !ValidName(o.Tenant):
		return fmt.Errorf("tenant %q: %w: use 1-63 letters, digits, '.', '_' or '-'", o.Tenant, ErrInvalid)
	case !ValidName(o.Name):
		return fmt.Errorf("volume name %q: %w: use 1-63 letters, digits, '.', '_' or '-'", o.Name, ErrInvalid)
	case o.Kind != KindBlock && o.Kind != KindFS:
		return fmt.Errorf("kind %q: %w: want %q or %q", o.Kind, ErrInvalid, KindBlock, KindFS)
	case o.ChunkSize < minChunkSize || o.ChunkSize > maxChunkSize || bits.OnesCount64(uint64(o.ChunkSize)) != 1:
		return fmt.Errorf("chunk size %s: %w: want a power of two from 4 KiB to 4 MiB", sizeText(o.ChunkSize), ErrInvalid)
	}
	if err := validLabels(o.Labels); err != nil {
		return err
	}
	return validSize(o.Size)
}

// Label limits: at most maxLabels labels; a key is 1-63 letters, digits,
// '.', '_', '-' or '/', starting with a letter or digit (as Kubernetes
// label names are); a value is at most 255 bytes of printable UTF-8.
const (
	maxLabels        = 64
	maxLabelKeyLen   = 63
	maxLabelValueLen = 255
)

var labelKeyPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]*$`)

func validLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("%d labels: %w: at most %d", len(labels), ErrInvalid, maxLabels)
	}
	for k, v := range labels {
		if len(k) > maxLabelKeyLen || !labelKeyPattern.MatchString(k) {
			return fmt.Errorf("label key %.70q: %w: use 1-%d letters, digits, '.', '_', '-' or '/', starting with a letter or digit",
				k, ErrInvalid, maxLabelKeyLen)
		}
		if len(v) > maxLabelValueLen || !utf8.ValidString(v) || strings.IndexFunc(v, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			return fmt.Errorf("label %s: %w: a value is at most %d bytes of printable UTF-8 (no control characters)", k, ErrInvalid, maxLabelValueLen)
		}
	}
	return nil
}

func validSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("size %s: %w: must be positive", sizeText(size), ErrInvalid)
	case size%SizeAlign != 0:
		return fmt.Errorf("size %s: %w: must be a multiple of %d bytes", sizeText(size), ErrInvalid, SizeAlign)
	case size > MaxVolumeSize:
		return fmt.Errorf("size %s: %w: larger than %s", sizeText(size), ErrInvalid, sizeText(MaxVolumeSize))
	}
	return nil
}

// sizeText is a byte count for error messages: in the largest binary unit
// with the exact count after it, "100 TiB (109951162777600 bytes)", or
// "1000 bytes" below 1 KiB.
func sizeText(n int64) string {
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n)/1024, 0
	for (f >= 1024 || f <= -1024) && i < len(units)-1 {
		f /= 1024
		i++
	}
	num := strconv.FormatFloat(f, 'f', 1, 64)
	if f == float64(int64(f)) {
		num = strconv.FormatInt(int64(f), 10)
	}
	return fmt.Sprintf("%s %s (%d bytes)", num, units[i], n)
}

// CreateVolume creates a volume and makes its record durable.
func (s *Store) CreateVolume(ctx context.Context, o CreateOptions) (*Volume, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Kind == KindFS && s.namespaces == nil {
		return nil, fmt.Errorf("create volume %s/%s: %w: fs volumes need a namespace (Options.Namespaces)", o.Tenant, o.Name, ErrUnsupported)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	ref := o.Tenant + "/" + o.Name
	if s.byName[ref] != nil {
		return nil, fmt.Errorf("volume %s: %w", ref, ErrExists)
	}
	info := VolumeInfo{
		Tenant: o.Tenant, Name: o.Name, Kind: o.Kind, Size: o.Size, ChunkSize: o.ChunkSize,
		ReadOnly: o.ReadOnly, Labels: o.Labels, Created: time.Now().UTC().Truncate(time.Second),
	}
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(nameKey(o.Tenant, o.Name)); err == nil {
			return fmt.Errorf("volume %s: %w", ref, ErrExists)
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		id, err := nextID(txn)
		if err != nil {
			return err
		}
		info.ID = id
		b, err := json.Marshal(info)
		if err != nil {
			return err
		}
		if err := txn.Set(volumeKey(id), b); err != nil {
			return err
		}
		if o.Kind == KindFS {
			if err := s.namespaces.Create(txn, id); err != nil {
				return err
			}
		}
		return txn.Set(nameKey(o.Tenant, o.Name), volumeKey(id)[1:])
	})
	if err != nil {
		return nil, fmt.Errorf("create volume %s: %w", ref, err)
	}
	if err := s.db.Sync(); err != nil {
		return nil, fmt.Errorf("create volume %s: sync: %w", ref, err)
	}
	v := newVolume(s, info)
	s.byID[info.ID] = v
	s.byName[ref] = v
	return v, nil
}

// ResizeVolume grows a volume. Shrinking is refused: it would silently drop
// data a client wrote.
func (s *Store) ResizeVolume(ctx context.Context, tenant, name string, size int64) error {
	v, err := s.Volume(tenant, name)
	if err != nil {
		return err
	}
	if err := validSize(size); err != nil {
		return err
	}
	if o := v.obj0; o != nil {
		o.lockAll()
		defer o.unlockAll()
		if o.deleted {
			return fmt.Errorf("volume %s: %w", v.ref, ErrNotFound)
		}
	}
	old := v.Info()
	switch {
	case size < old.Size:
		return fmt.Errorf("volume %s: %w: cannot shrink from %s to %s", old.Ref(), ErrInvalid, sizeText(old.Size), sizeText(size))
	case size == old.Size:
		return nil
	}
	info := old
	info.Size = size
	if err := s.putJSON(volumeKey(info.ID), info); err != nil {
		return err
	}
	v.setInfo(info)
	if o := v.obj0; o != nil {
		o.table.Store(o.table.Load().resized(numChunks(size, info.ChunkSize)))
		o.size.Store(size)
	}
	return nil
}

// DeleteVolume deletes a volume; its space returns to the pool once the
// deletion is durable. In-flight IO on it fails with ErrNotFound.
func (s *Store) DeleteVolume(ctx context.Context, tenant, name string) error {
	s.mu.Lock()
	v := s.byName[tenant+"/"+name]
	if v == nil {
		s.mu.Unlock()
		return fmt.Errorf("volume %s/%s: %w", tenant, name, ErrNotFound)
	}
	delete(s.byName, v.ref)
	delete(s.byID, v.id)
	s.mu.Unlock()

	v.markDeleted()

	// Step 1, durable: the name is free and the record says "deleting", so a
	// crash from here on resumes the purge at start-up.
	info := v.Info()
	info.State = stateDeleting
	b, _ := json.Marshal(info)
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Delete(nameKey(info.Tenant, info.Name)); err != nil {
			return err
		}
		return txn.Set(volumeKey(info.ID), b)
	})
	if err == nil {
		err = s.db.Sync()
	}
	if err != nil {
		return fmt.Errorf("delete volume %s: %w", info.Ref(), err)
	}
	return s.purge(ctx, v)
}

// purge removes a deleting volume's chunks in batches, then its record.
func (s *Store) purge(ctx context.Context, v *Volume) error {
	freed, err := s.volumeExtents(v.id)
	if err != nil {
		return err
	}
	// Discard first: the bytes are going away, and a crash before the
	// commits below leaves map entries pointing at zeros, never garbage.
	for i, e := range freed {
		if err := s.dev.Discard(e.off, e.length); err != nil {
			s.log.Warn("discard of deleted volume's extent failed", "volume", v.ref, "err", err)
			freed[i].zero = true // freed dirty: zeroed when reused
		}
	}
	// Chunks, then the namespace's records (of any volume: a block
	// volume has none).
	prefixes := [][]byte{ChunkPrefix(v.id, 0)[:9]}
	if s.namespaces != nil {
		prefixes = append(prefixes, s.namespaces.Prefixes(v.id)...)
	}
	for _, p := range prefixes {
		if err := s.deletePrefix(p); err != nil {
			return fmt.Errorf("drop metadata: %w", err)
		}
	}
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(volumeKey(v.id)) }); err != nil {
		return err
	}
	s.alloc.deferFree(s.zeroedFrees(freed))
	return s.syncMeta()
}

// deletePrefix deletes every key under prefix, in batches of
// transactions. Not badger's DropPrefix, which blocks every write of the
// store while it runs: a commit of another volume meanwhile failed
// ("Writes are blocked"), so a write elsewhere got EIO during a volume
// delete (TestDeleteVolumeBesideWrites), and one that passed the check
// just before the block landed in the write channel after the drain and
// waited there while DropPrefix's read waited for it: both hung for good
// (seen once in TestCleanFreeZeroed, the sync loop's commit beside a
// delete). A 1 TiB volume of 64 KiB chunks is 16M deletes.
func (s *Store) deletePrefix(prefix []byte) error {
	const batch = 16384
	for {
		var keys [][]byte
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Rewind(); it.Valid() && len(keys) < batch; it.Next() {
				keys = append(keys, it.Item().KeyCopy(nil))
			}
			return nil
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		if _, err := s.batchUpdate(len(keys), func(txn *badger.Txn, i int) error { return txn.Delete(keys[i]) }); err != nil {
			return err
		}
	}
}

// Volume is one volume of a store. Its methods are safe for concurrent use.
type Volume struct {
	s *Store
	// Immutable after creation; the hot path reads these without locks.
	id        uint64
	ref       string // tenant/name
	tenant    string
	readOnly  bool
	chunkSize int64
	chunkBits uint
	obj0      *Object   // block volumes: the volume's data; nil for fs volumes
	ns        Namespace // fs volumes: the namespace; nil for block volumes

	infoMu sync.RWMutex
	info   VolumeInfo
	size   atomic.Int64

	allocated atomic.Int64 // mapped chunks, every inode
	// saved is the pool space transformed and short chunks do not take
	// compared with full plain ones: the sum of chunkSize − their extent's
	// size (negative for a chunk that grew, e.g. by an encryption tag).
	saved atomic.Int64
	// cache is the volume's read cache (the cache filter), nil when no
	// policy sets one. Every change to a chunk invalidates it; reads use
	// it only when their Filters say so.
	cache atomic.Pointer[filter.Cache]
}

func numChunks(size, chunkSize int64) int64 { return (size + chunkSize - 1) / chunkSize }

func newVolume(s *Store, info VolumeInfo) *Volume {
	v := &Volume{
		s: s, info: info, id: info.ID, ref: info.Ref(), tenant: info.Tenant, readOnly: info.ReadOnly,
		chunkSize: info.ChunkSize, chunkBits: uint(bits.TrailingZeros64(uint64(info.ChunkSize))),
	}
	v.size.Store(info.Size)
	if info.Kind == KindFS {
		v.ns = s.namespaces.Attach(v)
	} else {
		v.obj0 = newObject(v, 0, info.Size, numChunks(info.Size, info.ChunkSize))
	}
	return v
}

// Info returns a copy of the volume's record.
func (v *Volume) Info() VolumeInfo {
	v.infoMu.RLock()
	defer v.infoMu.RUnlock()
	return v.info
}

func (v *Volume) setInfo(i VolumeInfo) {
	v.infoMu.Lock()
	v.info = i
	v.infoMu.Unlock()
	v.size.Store(i.Size)
}

// ID is the volume's number (in every metadata key of its own).
func (v *Volume) ID() uint64 { return v.id }

// Ref is the volume's name, tenant/name.
func (v *Volume) Ref() string { return v.ref }

// ReadOnly reports whether the volume refuses changes.
func (v *Volume) ReadOnly() bool { return v.readOnly }

// ChunkSize is the volume's chunk size in bytes.
func (v *Volume) ChunkSize() int64 { return v.chunkSize }

// Store is the store the volume belongs to.
func (v *Volume) Store() *Store { return v.s }

// Size is the volume's size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// Kind is KindBlock or KindFS.
func (v *Volume) Kind() string {
	if v.obj0 == nil {
		return KindFS
	}
	return KindBlock
}

// AllocatedBytes is the pool space the volume's chunks hold (transformed
// chunks count what they take, not their plain size).
func (v *Volume) AllocatedBytes() int64 { return v.allocated.Load()*v.chunkSize - v.saved.Load() }

// savedBy is what a chunk with entry e takes less than a full plain
// chunk: a transformed chunk's or a short chunk's extent is what its
// stored length needs.
func (v *Volume) savedBy(e chunkEntry) int64 {
	if !e.transformed() && !e.short() {
		return 0
	}
	return v.chunkSize - unitsFor(int64(e.storedLen))*unitSize - int64(len(e.patches))*unitSize
}

// SetCache gives the volume a read cache, or takes it away (nil). The
// gateway calls it when the policies in force change.
func (v *Volume) SetCache(c *filter.Cache) { v.cache.Store(c) }

// Cache returns the volume's read cache, nil if it has none.
func (v *Volume) Cache() *filter.Cache { return v.cache.Load() }

// objects returns every data object of the volume that is in memory.
func (v *Volume) objects() []*Object {
	if v.obj0 != nil {
		return []*Object{v.obj0}
	}
	return v.ns.LoadedObjects()
}

// markDeleted fails in-flight and later IO on every object of the volume.
func (v *Volume) markDeleted() {
	if v.ns != nil {
		v.ns.MarkDeleted()
	}
	for _, o := range v.objects() {
		o.lockAll()
		o.deleted = true
		o.unlockAll()
	}
}

// volumeExtents lists the device extents of every chunk of volume id, from
// the chunk map.
func (s *Store) volumeExtents(id uint64) ([]extent, error) {
	var out []extent
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: ChunkPrefix(id, 0)[:9], PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var e chunkEntry
			err := it.Item().Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err })
			if err != nil {
				return err
			}
			out = s.appendExtents(out, e, false, 0)
		}
		return nil
	})
	return out, err
}
