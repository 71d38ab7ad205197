package store

// The sync mark: catching metadata that lost durable commits.
//
// badger replays its write-ahead log after a crash and stops at the first
// entry whose checksum fails, taking it for a write torn by the crash. A
// log damaged in the middle therefore loses commits that were synced,
// silently: chunk maps shrink and their data reads as zeros. So each
// metadata sync is numbered: syncMeta commits the number to badger
// (counterKey "sync"), syncs, and then writes it to the device's sync
// mark, a 24-byte record at syncMarkOffset. At open, metadata whose number
// is below the device's mark has lost synced commits and is refused.
//
// The mark is written without a device flush of its own: the next data
// flush makes it durable. A lost mark only weakens the check (the last
// sync before a crash goes unchecked); a mark can never be ahead of
// badger's synced number.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/dgraph-io/badger/v4"
)

const (
	syncMarkOffset = superblockSize // in the reserved area before dataStart
	syncMarkLen    = 24
	syncMarkMagic  = "SLUICESYNC\x00\x01"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func syncSeqKey() []byte { return CounterKey("sync") }

// sync mark bytes: magic (12) | sequence uint64 | crc32c of bytes 0..19.
func encodeSyncMark(seq uint64) []byte {
	b := make([]byte, syncMarkLen)
	copy(b, syncMarkMagic)
	binary.BigEndian.PutUint64(b[12:], seq)
	binary.BigEndian.PutUint32(b[20:], crc32.Checksum(b[:20], castagnoli))
	return b
}

// decodeSyncMark returns the mark's sequence; ok is false for a device
// without a valid mark (a store from before marks, or a torn write).
func decodeSyncMark(b []byte) (seq uint64, ok bool) {
	if len(b) < syncMarkLen || string(b[:12]) != syncMarkMagic ||
		binary.BigEndian.Uint32(b[20:]) != crc32.Checksum(b[:20], castagnoli) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[12:]), true
}

// checkSyncMark compares the metadata's sync number with the device's
// mark at open, and sets s.syncSeq to continue from the larger.
func (s *Store) checkSyncMark() error {
	b := make([]byte, syncMarkLen)
	if _, err := s.dev.ReadAt(b, syncMarkOffset); err != nil {
		return fmt.Errorf("store: read sync mark: %w", err)
	}
	mark, marked := decodeSyncMark(b)
	var meta uint64
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(syncSeqKey())
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("sync number of %d bytes: %w", len(v), ErrCorrupt)
			}
			meta = binary.BigEndian.Uint64(v)
			return nil
		})
	})
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("store: read sync number: %w", err)
	}
	if marked && meta < mark {
		return fmt.Errorf("store: %w: the metadata ends at sync %d but the device recorded sync %d: "+
			"badger's write-ahead log lost synced changes (damaged?); refusing to serve volumes whose chunk maps may have shrunk",
			ErrCorrupt, meta, mark)
	}
	s.syncSeq = max(meta, mark)
	return nil
}

// commitSyncSeq commits the next sync number to badger before a sync; the
// caller holds syncMu and writes the mark after the sync succeeded.
func (s *Store) commitSyncSeq() (uint64, error) {
	seq := s.syncSeq + 1
	done := s.flushDone.Load() // completed before this commit (pending.go)
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(dflushKey(), binary.BigEndian.AppendUint64(nil, uint64(done))); err != nil {
			return err
		}
		return txn.Set(syncSeqKey(), binary.BigEndian.AppendUint64(nil, seq))
	})
	if err != nil {
		return 0, err
	}
	s.syncSeq = seq
	return seq, nil
}

// writeSyncMark records on the device that sync seq is durable in badger.
func (s *Store) writeSyncMark(seq uint64) error {
	if _, err := s.dev.WriteAt(encodeSyncMark(seq), syncMarkOffset); err != nil {
		return fmt.Errorf("%w: write sync mark: %w", ErrIO, err)
	}
	return nil
}
