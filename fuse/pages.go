package fuse

import "sync"

// pages tracks the files whose pages the kernel may hold for this mount:
// a file counts from the first read or write through one of its open
// handles until that handle is released. A file no handle holds may still
// have pages cached, but nothing reads them: the next open drops the
// file's page cache (no FOPEN_KEEP_CACHE), and a mapping holds its handle
// until it is unmapped.
//
// The shim door asks (Mount.PageCached) so that its writes to such a file
// wait until the notifier has dropped the pages they made stale, and
// writes to any other file do not wait at all.
type pages struct {
	mu sync.Mutex
	n  map[uint64]int // inode → handles that read or wrote through the kernel
}

func (p *pages) add(ino uint64) {
	p.mu.Lock()
	if p.n == nil {
		p.n = make(map[uint64]int)
	}
	p.n[ino]++
	p.mu.Unlock()
}

func (p *pages) drop(ino uint64) {
	p.mu.Lock()
	if p.n[ino] <= 1 {
		delete(p.n, ino)
	} else {
		p.n[ino]--
	}
	p.mu.Unlock()
}

func (p *pages) has(ino uint64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n[ino] > 0
}
