package filter

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

func key(i uint64) CacheKey { return CacheKey{Volume: 1, Inode: 0, Chunk: i} }

func TestCacheLRUEviction(t *testing.T) {
	const item = 1000
	c := NewCache(3 * (item + cacheEntryOverhead)) // room for three
	for i := uint64(0); i < 3; i++ {
		_, ok, tk := c.Get(key(i), nil)
		if ok || !c.Put(key(i), bytes.Repeat([]byte{byte(i)}, item), tk) {
			t.Fatalf("put %d", i)
		}
	}
	// Touch 0 so that 1 is the least recently used.
	if got, ok, _ := c.Get(key(0), []byte("x")); !ok || len(got) != item+1 || got[0] != 'x' || got[1] != 0 {
		t.Fatal("get 0")
	}
	_, _, tk := c.Get(key(3), nil)
	c.Put(key(3), bytes.Repeat([]byte{3}, item), tk)
	if _, ok, _ := c.Get(key(1), nil); ok {
		t.Fatal("1 should have been evicted")
	}
	for _, i := range []uint64{0, 2, 3} {
		if got, ok, _ := c.Get(key(i), nil); !ok || got[0] != byte(i) {
			t.Fatalf("%d missing", i)
		}
	}
	s := c.Stats()
	if s.Entries != 3 || s.Evictions != 1 || s.Bytes != 3*(item+cacheEntryOverhead) || s.Hits != 4 || s.Misses != 5 || s.Puts != 4 {
		t.Fatalf("stats %+v", s)
	}
	// Shrinking evicts the oldest.
	c.SetCapacity(item + cacheEntryOverhead)
	if s := c.Stats(); s.Entries != 1 {
		t.Fatalf("after shrink %+v", s)
	}
	if _, ok, _ := c.Get(key(3), nil); !ok {
		t.Fatal("most recent entry evicted by shrink")
	}
	// An entry larger than the cache is not stored.
	_, _, tk = c.Get(key(9), nil)
	if c.Put(key(9), make([]byte, 2*item), tk) {
		t.Fatal("oversized entry stored")
	}
}

func TestCacheInvalidateAndStaleFill(t *testing.T) {
	c := NewCache(1 << 20)
	_, _, tk := c.Get(key(1), nil)
	c.Put(key(1), []byte("old"), tk)
	c.Invalidate(key(1))
	if _, ok, _ := c.Get(key(1), nil); ok {
		t.Fatal("invalidated entry still there")
	}
	// A read misses, a write changes the chunk and invalidates, then the
	// read's fill arrives with old bytes: refused.
	_, _, tk = c.Get(key(2), nil)
	c.Invalidate(key(2))
	if c.Put(key(2), []byte("stale"), tk) {
		t.Fatal("stale fill accepted")
	}
	_, _, tk = c.Get(key(2), nil)
	if !c.Put(key(2), []byte("fresh"), tk) {
		t.Fatal("fresh fill refused")
	}
	// Put copies: the caller may reuse its buffer.
	buf := []byte("abc")
	_, _, tk = c.Get(key(3), nil)
	c.Put(key(3), buf, tk)
	buf[0] = 'X'
	if got, _, _ := c.Get(key(3), nil); string(got) != "abc" {
		t.Fatalf("cache aliases the caller's buffer: %q", got)
	}
	other := CacheKey{Volume: 2, Chunk: 3}
	_, _, tk = c.Get(other, nil)
	c.Put(other, []byte("v2"), tk)
	inode := uint64(0)
	c.InvalidateVolume(1, &inode)
	if s := c.Stats(); s.Entries != 1 {
		t.Fatalf("InvalidateVolume left %d entries", s.Entries)
	}
	if _, ok, _ := c.Get(other, nil); !ok {
		t.Fatal("other volume dropped")
	}
	c.Clear()
	if s := c.Stats(); s.Entries != 0 || s.Bytes != 0 || s.Stale != 1 {
		t.Fatalf("after clear %+v", s)
	}
}

func TestCacheConcurrent(t *testing.T) {
	c := NewCache(64 << 10)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				k := key(uint64((i * (g + 1)) % 100))
				want := []byte(fmt.Sprintf("chunk %d", k.Chunk))
				if got, ok, tk := c.Get(k, nil); ok {
					if !bytes.Equal(got, want) {
						t.Errorf("key %v: %q", k, got)
						return
					}
				} else {
					c.Put(k, want, tk)
				}
				if i%37 == 0 {
					c.Invalidate(k)
				}
			}
		}(g)
	}
	wg.Wait()
	s := c.Stats()
	if s.Bytes > 64<<10 || s.Hits == 0 {
		t.Fatalf("stats %+v", s)
	}
}
