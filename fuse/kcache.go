package fuse

import (
	"sync"
	"sync/atomic"
)

// kcache is what the kernel may cache of each file of one mount, as far
// as the notifier needs to know: a change made behind the mount (the
// shim, another mount) is told to the kernel only when the kernel may
// hold something it makes stale. A shim writing a file nobody reads or
// stats through the kernel then costs no notification at all, where each
// write used to wake the notifier and make a system call.
//
//   - Attributes: from the moment the mount answers with a file's
//     attributes (lookup, getattr, setattr, create and the like) until the
//     notifier invalidates them. A report skipped while such an answer was
//     being made may have been about that file: the answer's file is then
//     invalidated at once (skips counts skipped reports; an answer
//     compares it before and after).
//   - Pages: from a handle's first read or write through the kernel until
//     that handle is released. A file no handle holds may still have pages
//     cached, but nothing reads them: the next open drops the file's page
//     cache (the mount never sets FOPEN_KEEP_CACHE), and a mapping holds
//     its handle until it is unmapped.
type kcache struct {
	mu    sync.Mutex
	attrs map[uint64]struct{} // inode → the kernel may hold its attributes
	pages map[uint64]int      // inode → handles that read or wrote through the kernel
	skips atomic.Uint64       // reports not told to the kernel
}

func newKcache() *kcache {
	return &kcache{attrs: make(map[uint64]struct{}), pages: make(map[uint64]int)}
}

// gave notes that the kernel was given ino's attributes by an answer
// that started when skips was s0; it reports whether a report skipped
// meanwhile must be told after all.
func (k *kcache) gave(ino, s0 uint64) (tell bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.attrs[ino] = struct{}{}
	return k.skips.Load() != s0 // under mu: a skip is either before (counted) or after (sees the mark)
}

// begin is an answer's start, for gave.
func (k *kcache) begin() uint64 { return k.skips.Load() }

// holds reports whether the kernel may hold anything a change of ino
// makes stale: its attributes, or (for a change of its bytes) its pages.
// When it does not, the report is counted as skipped.
func (k *kcache) holds(ino uint64, data bool) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, attrs := k.attrs[ino]
	held := attrs || (data && k.pages[ino] > 0)
	if !held {
		k.skips.Add(1)
	}
	return held
}

// told notes that the kernel dropped ino's attributes; its next answer
// gives them again.
func (k *kcache) told(ino uint64) {
	k.mu.Lock()
	delete(k.attrs, ino)
	k.mu.Unlock()
}

func (k *kcache) addPages(ino uint64) {
	k.mu.Lock()
	k.pages[ino]++
	k.mu.Unlock()
}

func (k *kcache) dropPages(ino uint64) {
	k.mu.Lock()
	if k.pages[ino] <= 1 {
		delete(k.pages, ino)
	} else {
		k.pages[ino]--
	}
	k.mu.Unlock()
}

func (k *kcache) hasPages(ino uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.pages[ino] > 0
}
