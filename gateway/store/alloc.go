package store

import (
	"fmt"
	"math/bits"
	"sync"
)

// allocator hands out device extents. It is derived state: at start-up it is
// rebuilt from the chunk maps, and nothing on disk records it.
//
// Space is a bitmap of allocation units (unitSize bytes). An extent takes
// exactly the units its length needs (rounded up to a whole unit). Extents
// of a power of two units — every plain chunk — are placed at an offset
// aligned to their size (a buddy-like placement without the buddy merging),
// which keeps the search to a few word operations: a 64 KiB chunk is 16
// units, four slots in one 64-bit word; a 1 MiB chunk is four whole words.
// Other extents — the stored bytes of transformed chunks, whose length is
// whatever compression or encryption made of them — take the first run of
// free units that fits: inside one word when shorter than 64 units,
// otherwise from a word boundary on. So a 64 KiB chunk that compresses to
// 9 KiB holds 3 units, and one encrypted to 64 KiB + 16 bytes holds 17.
//
// Freed extents are not reusable at once. DESIGN.md: an extent freed by
// copy-on-write, discard or delete is reused only after the commit that
// released it is durable. Callers pass freed extents to deferFree after the
// commit; the store calls releaseDeferred after a metadata sync.
type allocator struct {
	mu    sync.Mutex
	base  int64    // device offset of unit 0
	units int64    // number of units
	words []uint64 // bit set = unit in use
	// dirty: bit set = a free unit that may hold old bytes (released by
	// releaseDirty without zeroing); alloc reports extents that take one.
	dirty    []uint64
	used     int64    // units in use, including deferred frees
	cursor   int      // next-fit: word index to start searching at
	ndirty   int64    // dirty units (every dirty unit is free)
	dcursor  int      // allocReuse's next-fit cursor over dirty
	deferred []extent // freed, waiting for a durable commit
	defBytes int64    // bytes in deferred
	// nudge gets a token when deferred frees pile up (see deferFree); the
	// store's sync loop then syncs at once instead of at its next tick.
	nudge chan struct{}
}

// extent is a run of device bytes. zero: the extent still holds the bytes
// of a chunk that copy-on-write replaced (or of an unmapped transformed
// chunk); when its free becomes durable it is released dirty
// (releaseDirty), and zeroed only if an allocation that needs zeros takes
// it (other frees are zeroed before their commit).
type extent struct {
	off, length int64
	zero        bool
	// flushTok > 0: reused only after device flush flushTok has completed
	// (the extent is a pending record's fallback, pending.go).
	flushTok int64
}

const unitSize = 4096

func newAllocator(base, size int64) *allocator {
	units := size / unitSize
	a := &allocator{base: base, units: units, words: make([]uint64, (units+63)/64), dirty: make([]uint64, (units+63)/64), nudge: make(chan struct{}, 1)}
	// Units past the end of the device in the last word are marked used.
	if rem := units % 64; rem != 0 {
		a.words[len(a.words)-1] = ^uint64(0) << rem
	}
	return a
}

// unitsFor is the number of units an extent of length bytes holds.
func unitsFor(length int64) int64 {
	n := (length + unitSize - 1) / unitSize
	return max(n, 1)
}

// alloc returns the device offset of a free extent of length bytes, and
// whether any of its units may hold old bytes (a dirty unit: see
// releaseDirty); a caller that needs the extent to read as zeros must
// zero it then.
func (a *allocator) alloc(length int64) (int64, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.allocLocked(length)
}

// allocLocked is alloc with mu held.
func (a *allocator) allocLocked(length int64) (int64, bool, error) {
	n := unitsFor(length)
	var u int64
	var ok bool
	switch {
	case n&(n-1) == 0:
		u, ok = a.findAligned(n)
	case n < 64:
		u, ok = a.findInWord(n)
	default:
		u, ok = a.findWords(n)
	}
	if !ok {
		return 0, false, fmt.Errorf("allocate %d bytes: %w (pool of %d bytes is full)", length, ErrNoSpace, a.units*unitSize)
	}
	return a.take(u, n)
}

// take marks units [u, u+n) in use and returns their device offset and
// whether any was dirty (mu held).
func (a *allocator) take(u, n int64) (int64, bool, error) {
	a.set(u, n)
	a.used += n
	dirty := false
	for k := u; k < u+n; k++ {
		if a.dirty[k/64]&(1<<(k%64)) != 0 {
			a.dirty[k/64] &^= 1 << (k % 64)
			a.ndirty--
			dirty = true
		}
	}
	return a.base + u*unitSize, dirty, nil
}

// reuseScan bounds allocReuse's search: at most this many words of the
// dirty bitmap (256 MiB of pool) per allocation, then it falls back to
// alloc.
const reuseScan = 1024

// allocReuse is alloc for an extent that will be written whole before
// anything reads it (copy-on-write): it takes dirty units first, the
// space earlier copy-on-write released, next-fit from a cursor of its own
// and within reuseScan words, and otherwise what alloc takes. Next-fit
// alone walks the whole pool before it comes back to freed space, so
// every rewrite landed on space the pool had never written: on a sparse
// pool file each one made the host filesystem allocate blocks (the
// first pass over an 8 GiB pool ran at a tenth of the speed of the
// passes after it), and the file grew toward the pool's size whatever
// the volumes held. Reusing dirty units keeps rewriting the blocks the
// host has already given.
func (a *allocator) allocReuse(length int64) (int64, bool, error) {
	n := unitsFor(length)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ndirty >= n {
		if u, ok := a.findDirty(n); ok {
			return a.take(u, n)
		}
	}
	return a.allocLocked(length)
}

// findDirty finds n dirty (so free) units: inside one word when n < 64,
// otherwise n/64 whole dirty words and the rest in the low bits of the
// next, next-fit from dcursor over at most reuseScan words (mu held).
func (a *allocator) findDirty(n int64) (int64, bool) {
	nw := len(a.words)
	full, rest := int(n/64), uint(n%64)
	for i := 0; i < min(nw, reuseScan); i++ {
		w := (a.dcursor + i) % nw
		if a.dirty[w] == 0 {
			continue
		}
		if n < 64 {
			if run := runStarts(a.dirty[w], n); run != 0 {
				a.dcursor = w
				return int64(w)*64 + int64(bits.TrailingZeros64(run)), true
			}
			continue
		}
		if w+full > nw || (rest > 0 && w+full >= nw) {
			continue
		}
		ok := true
		for j := w; j < w+full && ok; j++ {
			ok = a.dirty[j] == ^uint64(0)
		}
		if ok && (rest == 0 || a.dirty[w+full]&(uint64(1)<<rest-1) == uint64(1)<<rest-1) {
			a.dcursor = (w + full) % nw
			return int64(w) * 64, true
		}
	}
	return 0, false
}

// findAligned finds n (a power of two) free units at an offset aligned to n,
// next-fit from the cursor.
func (a *allocator) findAligned(n int64) (int64, bool) {
	nw := len(a.words)
	for i := 0; i < nw; i++ {
		w := (a.cursor + i) % nw
		if n >= 64 {
			span := int(n / 64)
			if w%span != 0 || w+span > nw || !a.wordsFree(w, span) {
				continue
			}
			a.cursor = (w + span) % nw
			return int64(w) * 64, true
		}
		word := a.words[w]
		if word == ^uint64(0) {
			continue
		}
		mask := uint64(1)<<n - 1
		for s := 0; s < 64; s += int(n) {
			if word&(mask<<s) == 0 {
				a.cursor = w
				return int64(w)*64 + int64(s), true
			}
		}
	}
	return 0, false
}

// findInWord finds n < 64 consecutive free units inside one word.
func (a *allocator) findInWord(n int64) (int64, bool) {
	nw := len(a.words)
	for i := 0; i < nw; i++ {
		w := (a.cursor + i) % nw
		if run := runStarts(^a.words[w], n); run != 0 {
			a.cursor = w
			return int64(w)*64 + int64(bits.TrailingZeros64(run)), true
		}
	}
	return 0, false
}

// runStarts returns the bits s of word whose units s..s+n-1 (n < 64) are
// all set and inside the word: where a run of n units can start.
func runStarts(word uint64, n int64) uint64 {
	run := word
	for k := int64(1); k < n && run != 0; k++ {
		run &= word >> k
	}
	return run & (uint64(1)<<(64-n) - 1)
}

// findWords finds n >= 64 free units starting at a word boundary: n/64
// free words, then the rest in the low bits of the next word.
func (a *allocator) findWords(n int64) (int64, bool) {
	nw := len(a.words)
	full, rest := int(n/64), uint(n%64)
	for i := 0; i < nw; i++ {
		w := (a.cursor + i) % nw
		if w+full > nw || (rest > 0 && w+full >= nw) || !a.wordsFree(w, full) {
			continue
		}
		if rest > 0 && a.words[w+full]&(uint64(1)<<rest-1) != 0 {
			continue
		}
		a.cursor = (w + full) % nw
		return int64(w) * 64, true
	}
	return 0, false
}

// set marks units [u, u+n) in use. Callers hold mu.
func (a *allocator) set(u, n int64) {
	for ; n > 0 && u%64 != 0; u, n = u+1, n-1 {
		a.words[u/64] |= 1 << (u % 64)
	}
	for ; n >= 64; u, n = u+64, n-64 {
		a.words[u/64] = ^uint64(0)
	}
	for ; n > 0; u, n = u+1, n-1 {
		a.words[u/64] |= 1 << (u % 64)
	}
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

// inUse reports whether every unit of [off, off+length) is marked in use
// (fsck: a chunk map entry must point at allocated space).
func (a *allocator) inUse(off, length int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	first, n := (off-a.base)/unitSize, unitsFor(length)
	for u := first; u < first+n; u++ {
		if a.words[u/64]&(1<<(u%64)) == 0 {
			return false
		}
	}
	return true
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
	for _, e := range exts {
		a.defBytes += e.length
	}
	// Copy-on-write frees an extent per chunk rewritten: under a fast
	// overwrite load they can outgrow what is still free well within the
	// sync loop's interval, and every allocation would then stall on a
	// sync of its own. Ask for a sync once they reach a quarter of the
	// free space.
	pressure := a.defBytes*4 >= (a.units-a.used)*unitSize
	a.mu.Unlock()
	if pressure {
		select {
		case a.nudge <- struct{}{}:
		default:
		}
	}
}

// takeDeferred removes and returns the queued frees; the caller syncs the
// metadata and then calls release with them.
func (a *allocator) takeDeferred() []extent {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := a.deferred
	a.deferred, a.defBytes = nil, 0
	return d
}

func (a *allocator) release(exts []extent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range exts {
		a.clear(e.off, e.length)
	}
}

// releaseDirty releases extents that still hold old bytes: they are free
// and marked dirty, so that an allocation needing zeros zeroes them
// (alloc's report) and one that overwrites them whole does not.
func (a *allocator) releaseDirty(exts []extent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range exts {
		a.clear(e.off, e.length)
		first, n := (e.off-a.base)/unitSize, unitsFor(e.length)
		for u := first; u < first+n; u++ {
			if a.dirty[u/64]&(1<<(u%64)) == 0 {
				a.dirty[u/64] |= 1 << (u % 64)
				a.ndirty++
			}
		}
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
