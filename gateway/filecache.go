package gateway

import (
	"sync"
	"sync/atomic"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// The file half of QoS classification (see rules.go). A volume with file
// rules matches each file's path against their globs once per inode, path
// and rule epoch, and keeps the result in its file cache: a concurrent map
// from inode to the path it was classified by and the file rules whose glob
// matches that path. A request reads the entry without a lock; a request
// that carries another path for the inode (a rename, another hard link)
// classifies again and replaces the entry. A rule change bumps the epoch,
// and the first request after it replaces the whole cache: nothing is
// scanned, and files created after the rule are classified under it.

// maxCachedFiles bounds one volume's file cache; a full cache starts over.
const maxCachedFiles = 1 << 16

// fileCache is one volume's file classification under one rule epoch.
type fileCache struct {
	epoch uint64
	n     atomic.Int64 // entries stored
	m     sync.Map     // inode (uint64) → *fileClass
}

// fileClass is one inode's entry.
type fileClass struct {
	path  string
	rules []*ruleQueue // the file rules matching path, in resolution order (into route.files)
}

// queueFor classifies one request on a volume with route r: the queue of
// the first rule in resolution order that matches it, or nil. File rules
// are more specific than any other rule, so a matching one wins.
func (v *Volume) queueFor(r *route, req *Request, c qos.Class) *qos.Queue {
	if len(r.files) > 0 && req.Path != "" {
		for _, rq := range v.fileRules(r, req.Inode, req.Path) {
			if rq.rule.matchesIO(c, req.Door) {
				return rq.queue
			}
		}
	}
	return r.queues[req.Door][c]
}

// fileRules returns the file rules of r whose glob matches p, the path of
// inode ino.
func (v *Volume) fileRules(r *route, ino uint64, p string) []*ruleQueue {
	fc := v.fileCache(r.epoch)
	if fc != nil {
		if e, ok := fc.m.Load(ino); ok && e.(*fileClass).path == p {
			return e.(*fileClass).rules
		}
	}
	var rules []*ruleQueue
	for i := range r.files {
		if r.files[i].rule.matchesFile(p) {
			rules = append(rules, &r.files[i])
		}
	}
	if fc != nil {
		if _, loaded := fc.m.Swap(ino, &fileClass{path: p, rules: rules}); !loaded {
			fc.n.Add(1)
		}
	}
	return rules
}

// fileCache returns the volume's file cache of epoch, replacing one of an
// older epoch or a full one. It returns nil when the cache is newer than
// epoch: the request loaded its route just before a rule change and is
// classified without the cache.
func (v *Volume) fileCache(epoch uint64) *fileCache {
	for {
		fc := v.files.Load()
		switch {
		case fc != nil && fc.epoch > epoch:
			return nil
		case fc != nil && fc.epoch == epoch && fc.n.Load() < maxCachedFiles:
			return fc
		}
		if nfc := (&fileCache{epoch: epoch}); v.files.CompareAndSwap(fc, nfc) {
			return nfc
		}
	}
}
