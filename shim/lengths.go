package shim

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// The length table: every registered file's length, published in memory
// the client maps read-only, so lseek(SEEK_END) needs no round trip
// (PostgreSQL sizes its relations that way far more often than it
// writes them, and the kernel's cached length cannot be trusted for a
// file the shim extends: docs/SHIM.md).
//
// Each channel has a table of MaxHandles+1 little-endian u64 words in a
// memfd the gateway creates, maps, seals (no grow, no shrink, no future
// writes: the client's mapping is read-only) and sends with HELLO_OK.
// REGISTERED carries a file's word index (0: none). The word is set at
// registration and rewritten, before the change's request returns to
// any door, on every change the volume's engine reports for the inode
// (a Watcher per namespace): the shim's own writes and truncates, the
// FUSE door's, another mount's.

// lengthTable is one channel's table.
type lengthTable struct {
	fd   int // the memfd; sent with HELLO_OK, closed with the table
	mem  []byte
	mu   sync.Mutex // free, next
	free []uint32
	next uint32 // words [1, next) were handed out; 0 is "none"
	n    uint32 // words in the table
}

func newLengthTable(words int) (*lengthTable, error) {
	fd, err := unix.MemfdCreate("sluice-shim-lengths", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("length table: %w", err)
	}
	size := (words*8 + pageSize - 1) &^ (pageSize - 1)
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("length table: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("length table: %w", err)
	}
	// Sealed after our mapping: FUTURE_WRITE refuses the client a
	// writable mapping (and write(2)), ours keeps working.
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Munmap(mem)
		unix.Close(fd)
		return nil, fmt.Errorf("length table: seal: %w", err)
	}
	return &lengthTable{fd: fd, mem: mem, next: 1, n: uint32(size / 8)}, nil
}

// alloc hands out a word, or 0 when the table is full.
func (t *lengthTable) alloc() uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if k := len(t.free); k > 0 {
		i := t.free[k-1]
		t.free = t.free[:k-1]
		return i
	}
	if t.next >= t.n {
		return 0
	}
	t.next++
	return t.next - 1
}

func (t *lengthTable) release(i uint32) {
	if i == 0 {
		return
	}
	t.mu.Lock()
	t.free = append(t.free, i)
	t.mu.Unlock()
}

func (t *lengthTable) set(i uint32, n int64) {
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&t.mem[8*int(i)])), uint64(n))
}

func (t *lengthTable) get(i uint32) int64 {
	return int64(atomic.LoadUint64((*uint64)(unsafe.Pointer(&t.mem[8*int(i)]))))
}

func (t *lengthTable) close() {
	unix.Munmap(t.mem)
	unix.Close(t.fd)
}

// lengthRef is one registered file's word.
type lengthRef struct {
	t *lengthTable
	i uint32
}

// get is the length the word holds.
func (r *lengthRef) get() int64 { return r.t.get(r.i) }

// lengthWatch keeps the words of one namespace's registered files
// current (a gateway.Watcher).
type lengthWatch struct {
	ns    gateway.Namespace
	stop  func()
	mu    sync.RWMutex
	byIno map[uint64]map[*lengthRef]struct{}
}

// Changed rewrites the words of c.Ino's registered files. It runs in the
// goroutine that made the change, before that request returns. A change
// of bytes inside the published length (an overwrite, a punched hole)
// leaves the length as it is and costs one read of a word; any other
// change takes the length again under the watch's lock, so two changes'
// rewrites cannot land in the wrong order.
func (w *lengthWatch) Changed(c gateway.Change) {
	if c.Ino == 0 {
		return
	}
	w.mu.RLock()
	refs := w.byIno[c.Ino]
	inside := false
	for r := range refs {
		inside = c.Data && c.Len > 0 && c.Off+c.Len <= r.get()
		break // every word of an inode holds the same length
	}
	w.mu.RUnlock()
	if len(refs) == 0 || inside {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	refs = w.byIno[c.Ino]
	if len(refs) == 0 {
		return
	}
	n, err := w.ns.Length(context.Background(), c.Ino)
	if err != nil {
		return // removed: its handles go stale
	}
	for r := range refs {
		r.t.set(r.i, n)
	}
}

// lengths is the server's watches, one per namespace with registered files.
type lengths struct {
	mu      sync.Mutex
	watches map[gateway.Namespace]*lengthWatch
}

// add publishes ino's length in t's word i and keeps it current.
// Registrations are not a hot path: add and remove hold l.mu throughout
// (then a watch's lock; Changed takes only the watch's).
func (l *lengths) add(ns gateway.Namespace, ino uint64, r *lengthRef) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.watches[ns]
	if w == nil {
		w = &lengthWatch{ns: ns, byIno: make(map[uint64]map[*lengthRef]struct{})}
		w.stop = ns.Watch(w)
		if l.watches == nil {
			l.watches = make(map[gateway.Namespace]*lengthWatch)
		}
		l.watches[ns] = w
	}
	// Watching first, then the length under the watch's lock: a change
	// reported before the lock is taken is already visible to Length, one
	// reported after it writes the word again.
	w.mu.Lock()
	n, err := ns.Length(context.Background(), ino)
	if err == nil {
		if w.byIno[ino] == nil {
			w.byIno[ino] = make(map[*lengthRef]struct{})
		}
		w.byIno[ino][r] = struct{}{}
		r.t.set(r.i, n)
	}
	empty := len(w.byIno) == 0
	w.mu.Unlock()
	if empty {
		w.stop()
		delete(l.watches, ns)
	}
	return err
}

// remove stops keeping r current; a namespace without registered files
// is no longer watched.
func (l *lengths) remove(ns gateway.Namespace, ino uint64, r *lengthRef) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.watches[ns]
	if w == nil {
		return
	}
	w.mu.Lock()
	delete(w.byIno[ino], r)
	if len(w.byIno[ino]) == 0 {
		delete(w.byIno, ino)
	}
	empty := len(w.byIno) == 0
	w.mu.Unlock()
	if empty {
		w.stop()
		delete(l.watches, ns)
	}
}
