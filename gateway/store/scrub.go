package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// ScrubReport is the result of verifying a volume's transformed chunks.
type ScrubReport struct {
	Volume      string `json:"volume"`
	Chunks      int    `json:"chunks"`      // chunk entries seen
	Transformed int    `json:"transformed"` // verified by undoing their filter record
	Checksummed int    `json:"checksummed"` // of those, chunks with a crc32c
	// Short is the short plain chunks (short.go) read: their entries
	// checked against the chunk size and the pool, their stored bytes
	// read from the device (plain bytes carry no checksum).
	Short int        `json:"short"`
	Bad   []BadChunk `json:"bad"`
}

// BadChunk is a chunk that failed verification.
type BadChunk struct {
	Inode        uint64 `json:"inode"` // 0 for a block volume
	Chunk        uint64 `json:"chunk"`
	Offset       int64  `json:"offset"` // of the chunk in the volume or file
	DeviceOffset int64  `json:"device_offset"`
	Record       string `json:"record"`
	Error        string `json:"error"`
}

// Clean reports whether every chunk verified.
func (r ScrubReport) Clean() bool { return len(r.Bad) == 0 }

const scrubBatch = 256

type scrubItem struct {
	ino, idx uint64
	key, val []byte
	e        chunkEntry
}

// Scrub reads every transformed chunk of the volume (every inode) and
// undoes its filter record, which verifies its crc32c, its AES-GCM tag and
// its compressed frame: a chunk that fails is listed (and logged with
// volume, inode and offset). Full plain chunks carry nothing to verify;
// short ones are checked for shape and read (scrubShort). Scrub
// runs beside normal IO, takes no locks and changes nothing: a chunk that
// fails but whose entry changed meanwhile (rewritten by copy-on-write) is
// not reported.
func (v *Volume) Scrub(ctx context.Context) (ScrubReport, error) {
	r := ScrubReport{Volume: v.ref, Bad: []BadChunk{}}
	start := ChunkPrefix(v.id, 0)[:9]
	prefix := start
	for {
		var batch []scrubItem
		err := v.s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
			defer it.Close()
			for it.Seek(start); it.Valid() && len(batch) < scrubBatch; it.Next() {
				k := it.Item().KeyCopy(nil)
				start = append(k, 0) // the next key after k
				_, ino, idx, ok := ParseChunkKey(k)
				if !ok {
					continue
				}
				r.Chunks++
				val, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				e, err := decodeChunkEntry(val)
				if err != nil {
					r.Bad = append(r.Bad, BadChunk{Inode: ino, Chunk: idx, Offset: int64(idx) * v.chunkSize, Error: err.Error()})
					continue
				}
				if e.transformed() || e.short() {
					batch = append(batch, scrubItem{ino: ino, idx: idx, key: k, val: val, e: e})
				}
			}
			if !it.Valid() {
				start = nil
			}
			return nil
		})
		if err != nil {
			return r, fmt.Errorf("scrub %s: %w", v.ref, err)
		}
		for _, it := range batch {
			if err := ctx.Err(); err != nil {
				return r, err
			}
			v.scrubChunk(it, &r)
		}
		if start == nil {
			return r, nil
		}
	}
}

func (v *Volume) scrubChunk(it scrubItem, r *ScrubReport) {
	if it.e.short() {
		v.scrubShort(it, r)
		return
	}
	r.Transformed++
	rec, perr := filter.ParseRecord(it.e.record)
	if perr == nil {
		if _, ok := rec.Checksum(); ok {
			r.Checksummed++
		}
	}
	err := v.verify(it)
	if err == nil || v.entryChanged(it) {
		return
	}
	desc := rec.String()
	if perr != nil {
		desc = "unreadable record"
	}
	v.s.log.Error("scrub: chunk failed verification", "volume", v.ref, "inode", it.ino,
		"offset", int64(it.idx)*v.chunkSize, "chunk", it.idx, "device_offset", it.e.devOff, "err", err)
	r.Bad = append(r.Bad, BadChunk{Inode: it.ino, Chunk: it.idx, Offset: int64(it.idx) * v.chunkSize,
		DeviceOffset: it.e.devOff, Record: desc, Error: err.Error()})
}

// scrubShort checks a short plain chunk: its entry fits a chunk and the
// pool, and its stored bytes read from the device.
func (v *Volume) scrubShort(it scrubItem, r *ScrubReport) {
	r.Short++
	e := it.e
	var err error
	if !v.s.alloc.contains(e.devOff, int64(e.storedLen)) || int64(e.storedLen) >= v.chunkSize {
		err = fmt.Errorf("short chunk entry does not fit (offset %d length %d, chunk size %d)", e.devOff, e.storedLen, v.chunkSize)
	} else {
		sb := v.s.getBuf(int(e.storedLen))
		_, err = v.s.dev.ReadAt((*sb)[:e.storedLen], e.devOff)
		v.s.putBuf(sb)
		if err != nil {
			err = fmt.Errorf("device read: %w", err)
		}
	}
	if err == nil || v.entryChanged(it) {
		return
	}
	v.s.log.Error("scrub: short chunk failed", "volume", v.ref, "inode", it.ino,
		"offset", int64(it.idx)*v.chunkSize, "chunk", it.idx, "device_offset", e.devOff, "err", err)
	r.Bad = append(r.Bad, BadChunk{Inode: it.ino, Chunk: it.idx, Offset: int64(it.idx) * v.chunkSize,
		DeviceOffset: e.devOff, Record: "short plain", Error: err.Error()})
}

// verify reads a transformed chunk's stored bytes and undoes its record.
func (v *Volume) verify(it scrubItem) error {
	e := it.e
	if !v.s.alloc.contains(e.devOff, int64(e.storedLen)) || int64(e.storedLen) > int64(filter.MaxStored(int(v.chunkSize))) {
		return fmt.Errorf("entry points outside the pool (offset %d length %d)", e.devOff, e.storedLen)
	}
	sb := v.s.getBuf(int(e.storedLen))
	defer v.s.putBuf(sb)
	stored := (*sb)[:e.storedLen]
	if _, err := v.s.dev.ReadAt(stored, e.devOff); err != nil {
		return fmt.Errorf("device read: %w", err)
	}
	pb := v.s.getBuf(int(v.chunkSize))
	defer v.s.putBuf(pb)
	cc := filter.ChunkContext{VolumeID: v.id, Inode: it.ino, ChunkIndex: it.idx, Tenant: v.tenant}
	out, err := v.s.env.Reverse(cc, (*pb)[:0], stored, e.record)
	if err != nil {
		return err
	}
	*pb = out[:0]
	if int64(len(out)) != v.chunkSize {
		return fmt.Errorf("undone chunk has %d bytes, chunk size is %d: %w", len(out), v.chunkSize, filter.ErrCorrupt)
	}
	for _, p := range e.patches {
		if int64(p.sector)*filter.SectorSize >= v.chunkSize || !v.s.alloc.contains(p.devOff, unitSize) {
			return fmt.Errorf("patch of sector %d at offset %d does not fit", p.sector, p.devOff)
		}
		if _, err := v.s.openPatch(cc, p, out[:0]); err != nil {
			return err
		}
	}
	return nil
}

// entryChanged reports whether the chunk's map entry is no longer the one
// scrub read.
func (v *Volume) entryChanged(it scrubItem) bool {
	changed := true
	v.s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(it.key)
		if errors.Is(err, badger.ErrKeyNotFound) || err != nil {
			return nil
		}
		return item.Value(func(b []byte) error { changed = !bytes.Equal(b, it.val); return nil })
	})
	return changed
}
