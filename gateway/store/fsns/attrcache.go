package fsns

import "sync"

// attrCache keeps inodes' attributes and directory entries in memory, so
// that a GETATTR (the kernel sends one for a directory after each create or
// unlink in it, and one per stat of a file) or a LOOKUP of an existing name
// is answered without a badger transaction: a read transaction's timestamp
// alone is a round trip to badger's watermark goroutine, ~18 µs of a
// loaded gateway's time against ~1 µs here. Only names that exist are
// cached; a lookup of a missing name reads badger, unless its directory
// was made (empty) since the entries started to be cached: then every
// entry it has went through the cache, and a miss is an answer (a create
// looks its new name up first).
//
// The cache holds the state of the changes that joined the open group
// (group.go) or were committed before it:
//
//   - Namespace changes run in FS.update under FS.mu. putAttr, dropLink,
//     the length writers and setDentry/deleteDentry note the inodes and
//     names the change writes or deletes, and update applies the notes
//     once the change joined the group; every read of badger outside a
//     change commits the group first (FS.view), and any transaction that
//     begins after a commit waits for its write to land, so what a reader
//     finds in badger is never older than the cache. If the write then
//     fails, the cache is disabled (see FS.update).
//     Applying means: a directory's (or
//     device node's, FIFO's, socket's) new record replaces the cached one;
//     a regular file or symlink is dropped (its size lives in another
//     record).
//   - A regular file's length and blocks change only through a loaded
//     object. While one is loaded, its live length, mtime and blocks
//     overlay the cached record, and readers do not fill the cache; when
//     it is unloaded, the cached record takes the object's final values
//     first (a new generation), then the object goes. A reader that found
//     the record and then no object checks that the generation it read at
//     is still current: if not, the object may have gone between its two
//     reads, and the record it holds is the older one (FS.overlayCached).
//     A new file or symlink is cached as created (nothing else is in its
//     record); other changes to their records drop them.
//   - Readers fill the cache from their own transaction only if nothing was
//     applied or dropped since they took the generation before it, so a
//     snapshot older than a change cannot overwrite what the change applied.
type attrCache struct {
	mu    sync.Mutex
	m     map[uint64]Attr
	dents map[dentName]uint64 // name → inode
	// complete holds directories whose every entry is in dents: made
	// empty by a committed mkdir while dents has not started over since.
	// A name missing from a complete directory does not exist.
	complete map[uint64]bool
	gen      uint64
	off      bool // disabled for good: a commit the cache applied failed
}

type dentName struct {
	parent uint64
	name   string
}

// maxCachedAttrs bounds the cache (~150 bytes an entry with the map's
// overhead); beyond it, a fill clears the map and starts over.
const maxCachedAttrs = 1 << 16

func (c *attrCache) get(ino uint64) (Attr, bool) {
	a, _, ok := c.getAt(ino)
	return a, ok
}

// getAt is get with the generation the entry was read at (see
// FS.overlayCached).
func (c *attrCache) getAt(ino uint64) (Attr, uint64, bool) {
	c.mu.Lock()
	a, ok := c.m[ino]
	gen := c.gen
	c.mu.Unlock()
	return a, gen, ok
}

func (c *attrCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// fill caches what a reader found in a transaction that began after
// generation gen: attributes a (unless nil) and the name dent → a.Ino
// (unless nil). A full map starts over.
func (c *attrCache) fill(gen uint64, a *Attr, dent *dentName, ino uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.off {
		return
	}
	if a != nil {
		if c.m == nil || len(c.m) >= maxCachedAttrs {
			c.m = make(map[uint64]Attr)
		}
		c.m[a.Ino] = *a
	}
	if dent != nil {
		if c.dents == nil || len(c.dents) >= maxCachedAttrs {
			c.dents = make(map[dentName]uint64)
			c.complete = nil // entries are gone: no directory is whole any more
		}
		c.dents[*dent] = ino
	}
}

// attrChange is one inode record written or deleted by a transaction:
// keep is the record to cache once committed (false: drop the inode). With
// dent set it is a directory entry instead: name → a.Ino, or removed. With
// newDir set, a.Ino is a directory the transaction created, empty.
type attrChange struct {
	a      Attr
	keep   bool
	dent   *dentName
	newDir bool
}

// lookup returns name's attributes when both the name and its inode are
// cached; absent reports that the name is known not to exist (parent is
// complete).
func (c *attrCache) lookup(parent uint64, name string) (a Attr, ok, absent bool) {
	a, _, ok, absent = c.lookupAt(parent, name)
	return a, ok, absent
}

// lookupAt is lookup with the generation it read at.
func (c *attrCache) lookupAt(parent uint64, name string) (a Attr, gen uint64, ok, absent bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ino, named := c.dents[dentName{parent, name}]
	if !named {
		return Attr{}, c.gen, false, c.complete[parent]
	}
	a, ok = c.m[ino]
	return a, c.gen, ok, false
}

// apply records the changes of a transaction: committed (the new records)
// or not (the inodes are dropped, to be read again).
func (c *attrCache) apply(changes []attrChange, committed bool) {
	if len(changes) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if c.off {
		return
	}
	if c.m == nil {
		c.m = make(map[uint64]Attr)
	}
	if c.dents == nil {
		c.dents = make(map[dentName]uint64)
	}
	for _, ch := range changes {
		if ch.newDir {
			if committed && len(c.dents) < maxCachedAttrs {
				if c.complete == nil {
					c.complete = make(map[uint64]bool)
				}
				c.complete[ch.a.Ino] = true
			}
			continue
		}
		if ch.dent != nil {
			switch {
			case !committed:
				// The name may still exist: its directory can no
				// longer answer misses.
				delete(c.dents, *ch.dent)
				delete(c.complete, ch.dent.parent)
			case ch.keep:
				c.dents[*ch.dent] = ch.a.Ino
			default:
				delete(c.dents, *ch.dent)
			}
			continue
		}
		if committed && ch.keep {
			c.m[ch.a.Ino] = ch.a
		} else {
			delete(c.m, ch.a.Ino)
			delete(c.complete, ch.a.Ino) // a removed directory
		}
	}
}

// refresh changes ino's cached attributes with fn, if it has any, and
// turns away fills in flight.
func (c *attrCache) refresh(ino uint64, fn func(*Attr)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if a, ok := c.m[ino]; ok {
		fn(&a)
		c.m[ino] = a
	}
}

// disable empties the cache for good: a transaction whose changes it
// applied failed to commit, so it may hold state badger does not. Every
// later get and lookup misses, and fills and applies do nothing.
func (c *attrCache) disable() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.off = true
	c.m, c.dents, c.complete = nil, nil, nil
}
