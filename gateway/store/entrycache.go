package store

import (
	"sync"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// entryCache keeps the chunk entries of recently read transformed chunks,
// so that reading one does not start with a badger lookup (a transaction's
// read timestamp alone costs a channel round trip to badger's watermark
// goroutine: ~10 µs of a ~45 µs 4 KiB encrypted read, BenchmarkRead4K).
//
// It is direct-mapped: a power of two of slots, one per 64 KiB of the pool
// between 64 Ki and 256 Ki slots (newEntryCache), each chunk hashed to one,
// a newer chunk evicting an older one. Consistency comes from the chunk's stripe
// lock: entries are filled by readers under the read lock and replaced or
// dropped by the writers that change the chunk map (copy-on-write commit,
// unmap) under the write lock, before they unlock. As a second guard a
// cached entry is used only while its device offset is the one the chunk
// table holds.
type entryCache struct {
	slots []entrySlot // len is a power of two
}

// A slot takes ~100 bytes, and its memory is touched only once a
// transformed chunk lands in it: 64 Ki slots (4 GiB of 64 KiB chunks) is
// ~6 MiB at most, 256 Ki slots (16 GiB) ~24 MiB.
const (
	minEntrySlots = 1 << 16
	maxEntrySlots = 1 << 18
)

// newEntryCache sizes the cache for a pool of poolBytes: a slot per
// 64 KiB chunk the pool can hold, within [minEntrySlots, maxEntrySlots].
func newEntryCache(poolBytes int64) *entryCache {
	n := minEntrySlots
	for n < maxEntrySlots && int64(n)*64<<10 < poolBytes {
		n *= 2
	}
	return &entryCache{slots: make([]entrySlot, n)}
}

type entrySlot struct {
	mu      sync.Mutex
	key     entryKey
	e       chunkEntry
	sectors filter.Sectors // e's layout for partial reads (filter.PartialLayout)
	partial bool
}

type entryKey struct {
	vol, ino uint64
	idx      int64
	valid    bool
}

// slot is k's place: the chunk index plus a hash of its object, modulo
// the slot count, so the chunks of one object of up to len(c.slots) chunks
// never collide with each other (a 1 GiB volume is 16 Ki chunks) and
// different objects start at unrelated places. (A hash of the whole key,
// as an earlier version used, made one in eight chunks of a 1 GiB volume
// collide and go to badger on every read.)
func (c *entryCache) slot(k entryKey) *entrySlot {
	h := k.vol*0x9e3779b97f4a7c15 ^ k.ino*0xbf58476d1ce4e5b9
	h ^= h >> 31
	return &c.slots[(h+uint64(k.idx))&uint64(len(c.slots)-1)]
}

// cachedEntry is a chunk entry with its record's layout, parsed once.
type cachedEntry struct {
	e       chunkEntry
	sectors filter.Sectors
	partial bool // the chunk can be read by the sector
}

func newCachedEntry(e chunkEntry) cachedEntry {
	l, ok := filter.PartialLayout(e.record)
	return cachedEntry{e: e, sectors: l, partial: ok}
}

// get returns the cached entry of chunk idx if it is there and still at
// devOff.
func (c *entryCache) get(vol, ino uint64, idx, devOff int64) (cachedEntry, bool) {
	k := entryKey{vol: vol, ino: ino, idx: idx, valid: true}
	s := c.slot(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.key != k || s.e.devOff != devOff {
		return cachedEntry{}, false
	}
	return cachedEntry{e: s.e, sectors: s.sectors, partial: s.partial}, true
}

// put caches e for chunk idx. The entry's record is never modified after
// (a replacement is a new slice), so readers may keep what get returned.
func (c *entryCache) put(vol, ino uint64, idx int64, ce cachedEntry) {
	k := entryKey{vol: vol, ino: ino, idx: idx, valid: true}
	s := c.slot(k)
	s.mu.Lock()
	s.key, s.e, s.sectors, s.partial = k, ce.e, ce.sectors, ce.partial
	s.mu.Unlock()
}

// drop forgets chunk idx.
func (c *entryCache) drop(vol, ino uint64, idx int64) {
	k := entryKey{vol: vol, ino: ino, idx: idx, valid: true}
	s := c.slot(k)
	s.mu.Lock()
	if s.key == k {
		s.key, s.e, s.sectors, s.partial = entryKey{}, chunkEntry{}, filter.Sectors{}, false
	}
	s.mu.Unlock()
}
