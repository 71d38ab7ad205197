package filter

import (
	"sync"
)

// CacheKey names one chunk: volume id, inode (0 for block volumes) and
// chunk index.
type CacheKey struct {
	Volume, Inode, Chunk uint64
}

// Ticket is what a cache miss hands out and Put takes back: proof that the
// key was not invalidated between the miss and the fill.
type Ticket uint64

// CacheStats are a cache's counters.
type CacheStats struct {
	Hits      uint64 `json:"hits"`
	Misses    uint64 `json:"misses"`
	Puts      uint64 `json:"puts"`
	Stale     uint64 `json:"stale"` // fills refused because the key was invalidated meanwhile
	Evictions uint64 `json:"evictions"`
	Entries   int    `json:"entries"`
	Bytes     int64  `json:"bytes"` // charged bytes (data plus per-entry overhead)
	Capacity  int64  `json:"capacity"`
}

// Cache is the `cache` filter's LRU read cache of plain chunk bytes in RAM,
// bounded in bytes. It is safe for concurrent use (one mutex; copies happen
// outside it).
//
// Protocol for the store. On read: out, ok, t := Get(k, dst); on a miss read
// the chunk, then Put(k, bytes, t). On write, discard or anything else that
// changes a chunk: Invalidate(k) after the change is visible to readers
// (after its map commit). A Put whose ticket predates an invalidation of
// its key is refused, so a read that raced with a write cannot leave stale
// bytes behind. (Invalidations are counted in 64 stripes; an invalidation
// of another key in the same stripe also refuses the fill, harmlessly.)
type Cache struct {
	mu       sync.Mutex
	capacity int64
	used     int64
	items    map[CacheKey]*cacheEntry
	lru      cacheEntry // sentinel: lru.next is the most recent
	inval    [cacheStripes]uint64
	stats    CacheStats
}

type cacheEntry struct {
	key        CacheKey
	data       []byte // never modified once cached
	prev, next *cacheEntry
}

// cacheEntryOverhead is charged per entry on top of its bytes: the map slot,
// the entry and the slice header, roughly.
const cacheEntryOverhead = 96

const cacheStripes = 64

// NewCache makes a cache of capacity bytes.
func NewCache(capacity int64) *Cache {
	c := &Cache{capacity: capacity, items: map[CacheKey]*cacheEntry{}}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c
}

func stripe(k CacheKey) int {
	h := k.Volume*0x9E3779B97F4A7C15 ^ k.Inode*0xC2B2AE3D27D4EB4F ^ k.Chunk*0x165667B19E3779F9
	return int(h>>58) & (cacheStripes - 1)
}

// Get appends the cached bytes of k to dst. On a miss it returns dst, false
// and a ticket for Put.
func (c *Cache) Get(k CacheKey, dst []byte) ([]byte, bool, Ticket) {
	c.mu.Lock()
	e := c.items[k]
	if e == nil {
		c.stats.Misses++
		t := Ticket(c.inval[stripe(k)])
		c.mu.Unlock()
		return dst, false, t
	}
	c.unlink(e)
	c.pushFront(e)
	c.stats.Hits++
	data := e.data
	c.mu.Unlock()
	return append(dst, data...), true, 0
}

// Put stores a copy of data under k, evicting least recently used entries
// to make room, unless k was invalidated since the miss that gave t, or the
// entry alone is larger than the cache. It reports whether it stored.
func (c *Cache) Put(k CacheKey, data []byte, t Ticket) bool {
	size := int64(len(data)) + cacheEntryOverhead
	cp := append([]byte(nil), data...) // copy outside the lock
	c.mu.Lock()
	defer c.mu.Unlock()
	if Ticket(c.inval[stripe(k)]) != t {
		c.stats.Stale++
		return false
	}
	if size > c.capacity {
		return false
	}
	if old := c.items[k]; old != nil {
		c.remove(old)
	}
	e := &cacheEntry{key: k, data: cp}
	c.items[k] = e
	c.pushFront(e)
	c.used += size
	c.stats.Puts++
	c.evict()
	return true
}

// Invalidate drops k and refuses fills of k that started before.
func (c *Cache) Invalidate(k CacheKey) {
	c.mu.Lock()
	c.inval[stripe(k)]++
	if e := c.items[k]; e != nil {
		c.remove(e)
	}
	c.mu.Unlock()
}

// InvalidateVolume drops every chunk of a volume (all inodes when inode is
// nil, else one inode) and refuses fills that started before. It scans the
// whole cache.
func (c *Cache) InvalidateVolume(volume uint64, inode *uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.inval {
		c.inval[i]++
	}
	for k, e := range c.items {
		if k.Volume == volume && (inode == nil || k.Inode == *inode) {
			c.remove(e)
		}
	}
}

// SetCapacity changes the size; shrinking evicts at once.
func (c *Cache) SetCapacity(capacity int64) {
	c.mu.Lock()
	c.capacity = capacity
	c.evict()
	c.mu.Unlock()
}

// Clear drops everything (counters are kept).
func (c *Cache) Clear() {
	c.mu.Lock()
	for i := range c.inval {
		c.inval[i]++
	}
	clear(c.items)
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	c.used = 0
	c.mu.Unlock()
}

// Stats returns the counters.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries, s.Bytes, s.Capacity = len(c.items), c.used, c.capacity
	return s
}

// evict drops least recently used entries until the cache fits. Callers
// hold mu.
func (c *Cache) evict() {
	for c.used > c.capacity && c.lru.prev != &c.lru {
		c.remove(c.lru.prev)
		c.stats.Evictions++
	}
}

func (c *Cache) remove(e *cacheEntry) {
	c.unlink(e)
	delete(c.items, e.key)
	c.used -= int64(len(e.data)) + cacheEntryOverhead
}

func (c *Cache) unlink(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *Cache) pushFront(e *cacheEntry) {
	e.prev, e.next = &c.lru, c.lru.next
	c.lru.next.prev = e
	c.lru.next = e
}
