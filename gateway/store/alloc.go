package store

import (
	"fmt"
	"math/bits"
	"sync"
)

// allocator hands out device extents. It is derived state: at start-up it is
// rebuilt from the chunk maps, and nothing on disk records it.
//
// Space is a bitmap of allocation units (unitSize bytes). Requests are rounded
// up to a power of two units and placed at an offset aligned to that size
// (a buddy-like placement without the buddy merging), which keeps the search
// to a few word operations: a 64 KiB chunk is 16 units, four slots in one
// 64-bit word; a 1 MiB chunk is four whole words.
//
// Freed extents are not reusable at once. DESIGN.md: an extent freed by
// copy-on-write, discard or delete is reused only after the commit that
// released it is durable. Callers pass freed extents to deferFree after the
// commit; the store calls releaseDeferred after a metadata sync.
type allocator struct {
	mu       sync.Mutex
	base     int64    // device offset of unit 0
	units    int64    // number of units
	words    []uint64 // bit set = unit in use
	used     int64    // units in use, including deferred frees
	cursor   int      // next-fit: word index to start searching at
	deferred []extent // freed, waiting for a durable commit
}

type extent struct{ off, length int64 }

const unitSize = 4096

func newAllocator(base, size int64) *allocator {
	units := size / unitSize
	a := &allocator{base: base, units: units, words: make([]uint64, (units+63)/64)}
	// Units past the end of the device in the last word are marked used.
	if rem := units % 64; rem != 0 {
		a.words[len(a.words)-1] = ^uint64(0) << rem
	}
	return a
}

// unitsFor rounds length up to a power of two count of units.
func unitsFor(length int64) int64 {
	n := (length + unitSize - 1) / unitSize
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len64(uint64(n-1))
}

// alloc returns the device offset of a free extent of at least length bytes.
func (a *allocator) alloc(length int64) (int64, error) {
	n := unitsFor(length)
	a.mu.Lock()
	defer a.mu.Unlock()
	nw := len(a.words)
	for i := 0; i < nw; i++ {
		w := (a.cursor + i) % nw
		if n >= 64 {
			span := int(n / 64)
			if w%span != 0 || w+span > nw {
				continue
			}
			if a.wordsFree(w, span) {
				for j := w; j < w+span; j++ {
					a.words[j] = ^uint64(0)
				}
				a.cursor = (w + span) % nw
				a.used += n
				return a.base + int64(w)*64*unitSize, nil
			}
			continue
		}
		word := a.words[w]
		if word == ^uint64(0) {
			continue
		}
		mask := uint64(1)<<n - 1
		for s := 0; s < 64; s += int(n) {
			if word&(mask<<s) == 0 {
				a.words[w] |= mask << s
				a.cursor = w
				a.used += n
				return a.base + (int64(w)*64+int64(s))*unitSize, nil
			}
		}
	}
	return 0, fmt.Errorf("allocate %d bytes: %w (pool of %d bytes is full)", length, ErrNoSpace, a.units*unitSize)
}

func (a *allocator) wordsFree(w, span int) bool {
	for j := w; j < w+span; j++ {
		if a.words[j] != 0 {
			return false
		}
	}
	return true
}

// mark records an extent found in a chunk map at start-up as in use. It
// reports false if any unit was already in use: two map entries share space.
func (a *allocator) mark(off, length int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	ok := true
	first, n := (off-a.base)/unitSize, unitsFor(length)
	for u := first; u < first+n; u++ {
		if a.words[u/64]&(1<<(u%64)) != 0 {
			ok = false
		}
		a.words[u/64] |= 1 << (u % 64)
	}
	if ok {
		a.used += n
	}
	return ok
}

// contains reports whether [off, off+length) lies inside the allocator's space.
func (a *allocator) contains(off, length int64) bool {
	return off >= a.base && length > 0 && (off-a.base)%unitSize == 0 &&
		(off-a.base)/unitSize+unitsFor(length) <= a.units
}

// free returns an extent for immediate reuse. Only for extents that no
// committed map entry ever pointed at (a write whose commit failed).
func (a *allocator) free(off, length int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.clear(off, length)
}

func (a *allocator) clear(off, length int64) {
	first, n := (off-a.base)/unitSize, unitsFor(length)
	for u := first; u < first+n; u++ {
		a.words[u/64] &^= 1 << (u % 64)
	}
	a.used -= n
}

// deferFree queues extents whose releasing commit has completed but may not
// be durable yet.
func (a *allocator) deferFree(exts []extent) {
	if len(exts) == 0 {
		return
	}
	a.mu.Lock()
	a.deferred = append(a.deferred, exts...)
	a.mu.Unlock()
}

// takeDeferred removes and returns the queued frees; the caller syncs the
// metadata and then calls release with them.
func (a *allocator) takeDeferred() []extent {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.deferred
	a.deferred = nil
	return d
}

func (a *allocator) release(exts []extent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range exts {
		a.clear(e.off, e.length)
	}
}

func (a *allocator) pendingFrees() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.deferred)
}

// usedBytes is the pool space in use, deferred frees included.
func (a *allocator) usedBytes() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used * unitSize
}

// freeRuns calls fn for every maximal run of free units (used at start-up to
// discard space that a crash may have left written but unreferenced).
func (a *allocator) freeRuns(fn func(off, length int64) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var start int64 = -1
	for u := int64(0); u <= a.units; u++ {
		free := u < a.units && a.words[u/64]&(1<<(u%64)) == 0
		if free && start < 0 {
			start = u
		}
		if !free && start >= 0 {
			if err := fn(a.base+start*unitSize, (u-start)*unitSize); err != nil {
				return err
			}
			start = -1
		}
		if u < a.units && u%64 == 0 && a.words[u/64] == ^uint64(0) && start < 0 {
			u += 63 // skip a full word
		}
	}
	return nil
}
