package fsns

// Change reports. A door that caches what FS told it (the FUSE door: the
// kernel's dentries, attributes and page cache of a mount) registers a
// Watcher with FS.Watch and marks the contexts of its own calls with
// WithOrigin. Every change made through anything else (another mount of
// the volume, the LD_PRELOAD shim, a block-style write through Volume.Do)
// is then reported to it, so it can drop what it cached and keep its
// caches for as long as it likes. A door's own changes are not reported
// back to it: its cache saw them happen.
//
// Reports are made by the goroutine that made the change, after the
// change joined the open group (it is visible to every later read) and
// outside FS's locks. Changed must not block: a FUSE mount queues the
// report for its own goroutine, because telling the kernel can wait on a
// directory lock held by a request that waits on the gateway.

import (
	"context"
	"slices"
)

// Change is one report: Ino's attributes changed (Ino != 0); the entry
// Name of directory Parent was added, removed or replaced (Parent != 0);
// and, with Data, Ino's bytes in [Off, Off+Len) changed (Len 0: from Off
// to the end). One Change may carry an entry and an inode.
type Change struct {
	Ino      uint64
	Parent   uint64
	Name     string
	Data     bool
	Off, Len int64
}

// A Watcher receives the changes made to an FS by others (see WithOrigin).
type Watcher interface {
	Changed(Change)
}

type originKey struct{}

// WithOrigin marks ctx as a call made on behalf of w: the changes it makes
// are not reported to w.
func WithOrigin(ctx context.Context, w Watcher) context.Context {
	return context.WithValue(ctx, originKey{}, w)
}

// Watch reports every later change not made on w's behalf to w, until
// the returned function is called.
func (f *FS) Watch(w Watcher) (stop func()) {
	f.objMu.Lock()
	ws := append(slices.Clone(f.watchersOf()), w)
	f.watchers.Store(&ws)
	f.objMu.Unlock()
	return func() {
		f.objMu.Lock()
		defer f.objMu.Unlock()
		ws := slices.DeleteFunc(slices.Clone(f.watchersOf()), func(x Watcher) bool { return x == w })
		f.watchers.Store(&ws)
	}
}

func (f *FS) watchersOf() []Watcher {
	if p := f.watchers.Load(); p != nil {
		return *p
	}
	return nil
}

// others returns the watchers a change made with ctx must be reported
// to: nil (without looking at ctx) when nobody watches.
func (f *FS) others(ctx context.Context) []Watcher {
	ws := f.watchersOf()
	if len(ws) == 0 {
		return nil
	}
	origin, _ := ctx.Value(originKey{}).(Watcher)
	if len(ws) == 1 && ws[0] == origin {
		return nil
	}
	return ws
}

// report sends cs to every watcher but ctx's origin.
func (f *FS) report(ctx context.Context, ws []Watcher, cs []Change) {
	origin, _ := ctx.Value(originKey{}).(Watcher)
	for _, w := range ws {
		if w == origin {
			continue
		}
		for _, c := range cs {
			w.Changed(c)
		}
	}
}

// noteData reports a change to ino's data in [off, off+length).
func (f *FS) noteData(ctx context.Context, ino uint64, off, length int64) {
	if ws := f.others(ctx); ws != nil {
		f.report(ctx, ws, []Change{{Ino: ino, Data: true, Off: off, Len: length}})
	}
}

// changesOf turns the records a namespace transaction wrote (attrMods)
// into reports: each inode record written or dropped, each entry written
// or deleted.
func changesOf(mods []attrChange) []Change {
	cs := make([]Change, 0, len(mods))
	for _, m := range mods {
		switch {
		case m.newDir:
			// Only its own record and its entry, reported as those.
		case m.dent != nil:
			cs = append(cs, Change{Parent: m.dent.parent, Name: m.dent.name})
		default:
			cs = append(cs, Change{Ino: m.a.Ino})
		}
	}
	return cs
}
