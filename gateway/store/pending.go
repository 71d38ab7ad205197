package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Pending records: copy-on-write without a write-through per rewrite.
//
// A copy-on-write rewrite of a chunk that holds data writes the new bytes
// to a new extent and commits the new map entry. Badger's log and the
// pool both sit in the page cache until synced, and the kernel may write
// the log back first: after a power loss the entry would name an extent
// that never got its bytes, while the old ones, which a flush may have
// promised, are unreachable. Instead of writing every such extent through
// to the device (FUA: a device flush per 4 KiB write into a filtered
// chunk), the rewrite's transaction also sets a pending record under
// 'p' VOL INO INDEX:
//
//	0      version (1)
//	1..8   flush token: the first device flush that makes the new bytes
//	       durable is this one or a later one (tokens count the flushes
//	       started; one read after the data write, plus one)
//	9..16  device offset of the new extent
//	17..20 its stored length
//	21..24 crc32c of its stored bytes
//	25..   the chunk's last entry whose bytes were durable (the fallback)
//
// (in version 2, nothing after byte 24: the fallback is a hole), and the
// replaced extent is freed only after a device flush (then a metadata
// sync, as every free). A write under a transforming chain into a hole
// commits a version 2 record: its new extent may be dirty space holding
// another chunk's old bytes (allocReuse takes such space first), and an
// entry durable without its bytes would read EIO, or stale bytes under a
// chain with no crc, where zeros are due.
//
// Reuse. A record is trusted (taken over by a later rewrite, or at open)
// only while its chunk's entry names the extent it names, so an extent a
// live record names must not be reused before the record is stale:
// every extent of a transformed chunk that is freed (rewritten, patched
// over, unmapped) waits for a device flush, whether or not a record
// names it now. Each metadata sync records under `s`
// `dflush` the token of the last device flush completed before it. At
// open, a pending record whose token is above the recorded one may name
// bytes that never reached the device: the new extent is read and its
// crc32c compared; on a mismatch the chunk's entry becomes the fallback
// again (the write was not flushed, so its loss is allowed; the fallback's
// extent was not reused, its free waiting for a device flush). Either way
// the record is deleted, as are records whose chunk entry has moved on.
// Records at or below the recorded token are stale and just deleted.
// While the store runs, the sync loop deletes records once their device
// flush has completed (dropStale), so open reads only those since.

const prefixPending = 'p'

func pendingKey(id, inode, index uint64) []byte {
	k := chunkKey(id, inode, index)
	k[0] = prefixPending
	return k
}

func dflushKey() []byte { return CounterKey("dflush") }

// pendingRec is a decoded pending record.
type pendingRec struct {
	token  int64
	devOff int64
	stored uint32
	crc    uint32
	prev   chunkEntry // the fallback (unless hole)
	hole   bool       // the fallback is a hole (version 2)
}

const pendingHeaderLen = 25

func (p pendingRec) encode() []byte {
	b := make([]byte, pendingHeaderLen, pendingHeaderLen+chunkEntryLen+len(p.prev.record))
	b[0] = 1
	if p.hole {
		b[0] = 2
	}
	binary.BigEndian.PutUint64(b[1:], uint64(p.token))
	binary.BigEndian.PutUint64(b[9:], uint64(p.devOff))
	binary.BigEndian.PutUint32(b[17:], p.stored)
	binary.BigEndian.PutUint32(b[21:], p.crc)
	if p.hole {
		return b
	}
	return append(b, p.prev.encode()...)
}

func decodePending(b []byte) (pendingRec, error) {
	hole := len(b) == pendingHeaderLen && b[0] == 2
	if !hole && (len(b) < pendingHeaderLen+chunkEntryLen || b[0] != 1) {
		return pendingRec{}, fmt.Errorf("pending record: bad version or length %d: %w", len(b), ErrIO)
	}
	p := pendingRec{
		token:  int64(binary.BigEndian.Uint64(b[1:])),
		devOff: int64(binary.BigEndian.Uint64(b[9:])),
		stored: binary.BigEndian.Uint32(b[17:]),
		crc:    binary.BigEndian.Uint32(b[21:]),
		hole:   hole,
	}
	if hole {
		return p, nil
	}
	var err error
	p.prev, err = decodeChunkEntry(b[pendingHeaderLen:])
	return p, err
}

// devFlush flushes the device and advances the completed-flush token.
func (s *Store) devFlush() error {
	tok := s.flushStarted.Add(1)
	s.flushes.Add(1)
	if err := s.dev.Flush(); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	for {
		done := s.flushDone.Load()
		if done >= tok || s.flushDone.CompareAndSwap(done, tok) {
			return nil
		}
	}
}

// setPending adds the pending records of a copy-on-write window's durable
// rewrites to its transaction (token: the flush token after their data
// writes). A chunk whose current entry is itself pending (its flush has
// not completed) keeps that record's fallback: its bytes may not be
// durable either.
func (o *Object) setPending(txn *badger.Txn, chunks []cowChunk, token int64) error {
	v := o.v
	for _, c := range chunks {
		if !c.durable {
			continue
		}
		key := pendingKey(v.id, o.ino, uint64(c.idx))
		rec := pendingRec{token: token, devOff: c.e.devOff, stored: c.e.storedLen, crc: c.crc, prev: c.oldE, hole: c.old == 0}
		if rec.hole {
			// A record left from before the chunk was unmapped is not
			// taken over: the unmap is committed, so the hole is the
			// fallback.
			if err := txn.Set(key, rec.encode()); err != nil {
				return err
			}
			continue
		}
		item, err := txn.Get(key)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			var p pendingRec
			err := item.Value(func(b []byte) (err error) { p, err = decodePending(b); return err })
			if err == nil && p.token > v.s.flushDone.Load() && p.devOff == c.oldE.devOff {
				if p.token < token {
					// Device flush p.token has started and not
					// completed: whether the fallback is the record's
					// or the current entry depends on it (errFlushRace).
					return errFlushRace
				}
				rec.prev, rec.hole = p.prev, p.hole
				if c.patched {
					rec.crc = p.crc // the base is the one that record checks
				}
			}
		}
		if err := txn.Set(key, rec.encode()); err != nil {
			return err
		}
	}
	return nil
}

// errFlushRace: a copy-on-write commit met a live pending record of its
// chunk whose device flush is running. Taking over the record's fallback
// would be wrong once that flush completes (the sync that follows it
// releases the fallback's extents, as the rewrite the record covers is
// durable), and the current entry is wrong if it does not. The commit
// flushes the device itself and tries again: the record is then stale
// and the current entry, durable, is the fallback.
var errFlushRace = errors.New("store: a pending record's device flush is running")

// oldEntry is the map entry of a chunk with table entry dev and
// transformed entry e (used when dev is marked).
func (v *Volume) oldEntry(dev int64, e chunkEntry) chunkEntry {
	switch {
	case dev&markTransformed != 0:
		return e
	case isShort(dev):
		return chunkEntry{flags: flagShort, storedLen: uint32(shortLen(dev)), devOff: entryAddr(dev)}
	}
	return chunkEntry{storedLen: uint32(v.chunkSize), devOff: dev}
}

// recoverPending settles every pending record at open, before the chunk
// maps are loaded (see above). It returns how many chunks went back to
// their fallback.
func (s *Store) recoverPending() (int, error) {
	var done int64
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(dflushKey())
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error {
			if len(b) == 8 {
				done = int64(binary.BigEndian.Uint64(b))
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("read flush token: %w", err)
	}
	s.flushStarted.Store(done)
	s.flushDone.Store(done)
	type fix struct {
		pkey, ckey []byte
		revert     *pendingRec // go back to its fallback
	}
	var fixes []fix
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{prefixPending}, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			pkey := it.Item().KeyCopy(nil)
			ckey := append([]byte(nil), pkey...)
			ckey[0] = prefixChunk
			f := fix{pkey: pkey, ckey: ckey}
			var p pendingRec
			if err := it.Item().Value(func(b []byte) (err error) { p, err = decodePending(b); return err }); err != nil {
				s.log.Error("pending record unreadable; dropped", "key", fmt.Sprintf("%x", pkey), "err", err)
				fixes = append(fixes, f)
				continue
			}
			if p.token > done {
				rev, err := s.checkPending(txn, ckey, p)
				if err != nil {
					return err
				}
				f.revert = rev
			}
			fixes = append(fixes, f)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read pending records: %w", err)
	}
	reverted := 0
	_, err = s.batchUpdate(len(fixes), func(txn *badger.Txn, j int) error {
		f := fixes[j]
		switch {
		case f.revert == nil:
		case f.revert.hole:
			if err := txn.Delete(f.ckey); err != nil {
				return err
			}
		default:
			if err := txn.Set(f.ckey, f.revert.prev.encode()); err != nil {
				return err
			}
		}
		return txn.Delete(f.pkey)
	})
	if err != nil {
		return 0, fmt.Errorf("settle pending records: %w", err)
	}
	for _, f := range fixes {
		if f.revert != nil {
			reverted++
		}
	}
	return reverted, nil
}

// checkPending decides one live pending record: nil if the chunk's entry
// stands (its new bytes are on the device, or it has moved on), else the
// record, whose fallback (an entry, or a hole) the chunk goes back to.
func (s *Store) checkPending(txn *badger.Txn, ckey []byte, p pendingRec) (*pendingRec, error) {
	item, err := txn.Get(ckey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil // unmapped since
	}
	if err != nil {
		return nil, err
	}
	var e chunkEntry
	if err := item.Value(func(b []byte) (err error) { e, err = decodeChunkEntry(b); return err }); err != nil {
		return nil, nil // fsck reports it
	}
	if e.devOff != p.devOff || e.storedLen != p.stored || !s.alloc.contains(e.devOff, int64(e.storedLen)) {
		return nil, nil
	}
	if bad := s.unwritten(e, p); bad >= 0 {
		s.log.Warn("an unflushed copy-on-write rewrite did not reach the device before the crash; the chunk reads its flushed bytes",
			"key", fmt.Sprintf("%x", ckey), "device_offset", bad)
		return &p, nil
	}
	return nil, nil
}

// unwritten returns the device offset of the first thing chunk entry e
// names that was written since pending record p's fallback and does not
// hold its bytes (-1 if all do): the extent, when it is not the
// fallback's (checked against the record's crc32c), and each patch the
// fallback does not have (checked against its own).
func (s *Store) unwritten(e chunkEntry, p pendingRec) int64 {
	if p.hole || e.devOff != p.prev.devOff {
		buf := make([]byte, e.storedLen)
		if _, err := s.dev.ReadAt(buf, e.devOff); err != nil || filter.Checksum(buf) != p.crc {
			return e.devOff
		}
	}
	buf := make([]byte, unitSize)
	for _, pt := range e.patches {
		if old, ok := p.prev.patchAt(int64(pt.sector)); ok && old.devOff == pt.devOff && old.crc == pt.crc {
			continue
		}
		if !s.alloc.contains(pt.devOff, unitSize) {
			return pt.devOff
		}
		if _, err := s.dev.ReadAt(buf, pt.devOff); err != nil || filter.Checksum(buf) != pt.crc {
			return pt.devOff
		}
	}
	return -1
}

// maxFlushTok is the highest device flush token extents wait for.
func maxFlushTok(exts []extent) int64 {
	m := int64(0)
	for _, e := range exts {
		m = max(m, e.flushTok)
	}
	return m
}

// fsckPending checks v's pending records: each decodes, and the fallback
// of each live one (its flush not completed) lies in the pool and is
// still held by the allocator (its free waits for that flush).
func (s *Store) fsckPending(txn *badger.Txn, v *Volume, r *FsckReport) {
	prefix := ChunkPrefix(v.id, 0)[:9]
	prefix[0] = prefixPending
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	// No sync may release a fallback between reading the completed flush
	// and checking the allocator: a record live by an older token would
	// be reported for space a later flush freed rightly.
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	done := s.flushDone.Load()
	for it.Rewind(); it.Valid(); it.Next() {
		var p pendingRec
		if err := it.Item().Value(func(b []byte) (err error) { p, err = decodePending(b); return err }); err != nil {
			r.Problemf("pending record %x: %v", it.Item().Key(), err)
			continue
		}
		if p.token <= done {
			continue // stale: deleted at the next open
		}
		r.Pending++
		if p.hole {
			continue
		}
		if !s.alloc.contains(p.prev.devOff, int64(p.prev.storedLen)) || !s.alloc.inUse(p.prev.devOff, int64(p.prev.storedLen)) {
			r.Problemf("pending record %x: its fallback (offset %d length %d) is not held in the pool", it.Item().Key(), p.prev.devOff, p.prev.storedLen)
		}
		for _, pt := range p.prev.patches {
			if !s.alloc.contains(pt.devOff, unitSize) || !s.alloc.inUse(pt.devOff, unitSize) {
				r.Problemf("pending record %x: its fallback's patch of sector %d (offset %d) is not held in the pool", it.Item().Key(), pt.sector, pt.devOff)
			}
		}
	}
}

// liveRecords are the keys of the pending records committed since the
// sync loop last looked, with their flush tokens. A record whose device
// flush has completed covers bytes that are on the device: nothing reads
// it again but the next open, which deletes it. Every transformed chunk
// written since the last open has one (a hole's too), so the sync loop
// deletes them once stale (dropStale) rather than leave them all to the
// next open.
type liveRecords struct {
	mu sync.Mutex
	m  map[string]int64 // key -> the highest token committed under it
}

// add notes the pending records of a committed copy-on-write window.
func (l *liveRecords) add(v *Volume, ino uint64, chunks []cowChunk, token int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range chunks {
		if !c.durable {
			continue
		}
		if l.m == nil {
			l.m = make(map[string]int64)
		}
		l.m[string(pendingKey(v.id, ino, uint64(c.idx)))] = token
	}
}

// take removes and returns the records whose tokens are at or below done.
func (l *liveRecords) take(done int64) map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	stale := make(map[string]int64)
	for k, tok := range l.m {
		if tok <= done {
			stale[k] = tok
			delete(l.m, k)
		}
	}
	return stale
}

// putBack returns records a failed deletion took, unless newer ones were
// added meanwhile.
func (l *liveRecords) putBack(stale map[string]int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, tok := range stale {
		if _, ok := l.m[k]; !ok {
			l.m[k] = tok
		}
	}
}

func (l *liveRecords) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// maxLiveRecords bounds the records the sync loop keeps in memory: past
// it (a load that writes GiBs and never flushes), it flushes the device
// itself so that they are stale.
const maxLiveRecords = 1 << 16

// dropStale deletes the pending records whose device flush has completed
// (each read again in the deleting transaction: a rewrite may have
// committed a newer one under its key). Deleting one is safe whether or
// not the metadata sync that records the flush has happened: the bytes it
// covers are on the device. A copy-on-write commit that read a record
// this deletes conflicts and commits again (commitCow); a deletion that
// conflicts is tried again at the next tick.
func (s *Store) dropStale() {
	if s.records.len() > maxLiveRecords {
		if err := s.devFlush(); err != nil {
			s.log.Error("device flush for stale pending records failed", "err", err)
		}
	}
	done := s.flushDone.Load()
	stale := s.records.take(done)
	if len(stale) == 0 {
		return
	}
	keys := make([][]byte, 0, len(stale))
	for k := range stale {
		keys = append(keys, []byte(k))
	}
	_, err := s.batchUpdate(len(keys), func(txn *badger.Txn, i int) error {
		item, err := txn.Get(keys[i])
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var p pendingRec
		if err := item.Value(func(b []byte) (err error) { p, err = decodePending(b); return err }); err != nil || p.token > done {
			return nil
		}
		return txn.Delete(keys[i])
	})
	if err != nil {
		s.log.Debug("stale pending records not deleted; trying again", "records", len(keys), "err", err)
		s.records.putBack(stale)
	}
}
