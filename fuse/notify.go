package fuse

import (
	"context"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sluice-storage/sluice/gateway"
)

// notifier keeps one mount's kernel caches true to the volume. The kernel
// keeps entries, attributes and negative lookups for cacheTimeout, far
// longer than a filesystem whose backing store can change behind it could
// afford (go-fuse's loopback uses 1 s): every change to an fs volume goes
// through its engine, which reports the changes made through anything but
// this mount (fsns.FS.Watch: another mount, the LD_PRELOAD shim, a write
// through Volume.Do). The notifier queues each report and a goroutine of
// its own tells the kernel to drop the entry (FUSE_NOTIFY_INVAL_ENTRY),
// the attributes (FUSE_NOTIFY_INVAL_INODE with a negative offset) or the
// cached pages of the range (the same with the range) — never from a
// request's goroutine: the
// kernel takes the directory's lock for an entry notification, and a
// request of this mount may hold it while it waits for the gateway.
//
// Between a change and its notification there is a window of
// microseconds in which another mount can still read the old entry,
// attributes or pages (the same holds for any cached network
// filesystem); a file opened after the change never reads stale data,
// because open drops the file's page cache.
type notifier struct {
	srv   *fuse.Server // set before run starts
	kc    *kcache      // what the kernel may hold: reports about nothing it holds are dropped
	mu    sync.Mutex
	queue []gateway.Change
	wake  chan struct{}
	// queued and told count reports in and reports passed to the kernel;
	// settle waits on told (signalled under mu). stopped: run returned.
	queued, told uint64
	stopped      bool
	toldCond     *sync.Cond
}

func newNotifier(kc *kcache) *notifier {
	nt := &notifier{wake: make(chan struct{}, 1), kc: kc}
	nt.toldCond = sync.NewCond(&nt.mu)
	return nt
}

// Changed queues a report (gateway.Watcher), unless it is only about a
// file of which the kernel holds nothing it would make stale (kcache).
func (nt *notifier) Changed(c gateway.Change) {
	if c.Parent == 0 && c.Ino != 0 && !nt.kc.holds(c.Ino, c.Data) {
		return
	}
	nt.mu.Lock()
	nt.queue = append(nt.queue, c)
	nt.queued++
	nt.mu.Unlock()
	select {
	case nt.wake <- struct{}{}:
	default:
	}
}

// run tells the kernel about queued reports until stop is closed.
func (nt *notifier) run(stop <-chan struct{}) {
	defer func() {
		nt.mu.Lock()
		nt.stopped = true
		nt.toldCond.Broadcast()
		nt.mu.Unlock()
	}()
	var batch []gateway.Change
	for {
		select {
		case <-stop:
			return
		case <-nt.wake:
		}
		nt.mu.Lock()
		batch, nt.queue = nt.queue, batch[:0]
		nt.mu.Unlock()
		for _, c := range batch {
			nt.tell(c)
		}
		nt.mu.Lock()
		nt.told += uint64(len(batch))
		nt.toldCond.Broadcast()
		nt.mu.Unlock()
	}
}

// settle returns once the kernel has been told of every report queued
// before the call (or the mount is gone): a door whose change the kernel
// must see at once (a file's new length, before a program maps it) waits
// for it.
func (nt *notifier) settle() {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	for target := nt.queued; nt.told < target && !nt.stopped; {
		nt.toldCond.Wait()
	}
}

// tell passes one report to the kernel. The mount's FUSE node IDs are
// the engine's inode numbers (fs.Options.ExternalNodeID), so a report
// names its nodes directly; the kernel answers ENOENT for a node it does
// not hold, which needs nothing dropped. Errors are ignored for that
// reason, and because a mount going away drops its caches anyway.
func (nt *notifier) tell(c gateway.Change) {
	if c.Parent != 0 {
		nt.srv.EntryNotify(c.Parent, c.Name) // drops the dentry and the directory's attributes
	}
	if c.Ino != 0 {
		nt.kc.told(c.Ino)                  // before the kernel drops them: an answer after this marks them again
		off, length := int64(-1), int64(0) // attributes only
		if c.Data {
			off, length = c.Off, c.Len
		}
		nt.srv.InodeNotify(c.Ino, off, length)
	}
}

// own marks ctx as a call of this mount, whose changes the kernel sees
// happen: the engine does not report them back.
func (m *mount) own(ctx context.Context) context.Context {
	if m.note == nil {
		return ctx
	}
	return gateway.WithOrigin(ctx, m.note)
}
