package store

import (
	"encoding/binary"
	"fmt"
)

// Metadata key layout (docs/FORMAT.md is the spec; keep them in step).
// One-byte prefixes, big-endian integers, so that a prefix scan walks a
// volume's chunks in order.
const (
	prefixHeader  = 'h' // 'h' → header JSON
	prefixName    = 'n' // 'n' tenant 0x00 name → volume id (8 bytes BE)
	prefixVolume  = 'v' // 'v' id → volume record JSON
	prefixChunk   = 'c' // 'c' id inode index → chunk entry
	prefixCounter = 's' // 's' name → uint64 BE
)

// FormatVersion is the on-disk format this code writes. Stores of a newer
// version are refused; older versions are read (there are none yet).
const FormatVersion = 1

// Device layout: the first superblockSize bytes hold the superblock; chunk
// extents start at dataStart.
const (
	superblockSize  = 4096
	dataStart       = 1 << 20
	superblockMagic = "SLUICEPOOL\x00\x01"
)

// MinDeviceSize is the smallest device a store opens on: the reserved area
// before dataStart and room for one chunk of the largest size.
const MinDeviceSize = dataStart + maxChunkSize

// DeviceBlockSize is the largest device block size the store's layout
// keeps whole: the superblock, the sync mark's area and every chunk extent
// (chunks are at least 4 KiB, powers of two, at aligned device offsets)
// are multiples of it. Smaller writes (a file's few bytes) still reach the
// device: a device with blocks must read-modify-write.
const DeviceBlockSize = minChunkSize

func headerKey() []byte { return []byte{prefixHeader} }

func nameKey(tenant, name string) []byte {
	k := make([]byte, 0, 2+len(tenant)+len(name))
	k = append(k, prefixName)
	k = append(k, tenant...)
	k = append(k, 0)
	return append(k, name...)
}

func volumeKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixVolume}, id)
}

// CounterKey is the key of a named counter (a namespace's inode counter
// among them).
func CounterKey(name string) []byte { return append([]byte{prefixCounter}, name...) }

// ChunkPrefix is the key prefix of every chunk of one volume and inode.
func ChunkPrefix(id, inode uint64) []byte {
	k := make([]byte, 17, 25)
	k[0] = prefixChunk
	binary.BigEndian.PutUint64(k[1:], id)
	binary.BigEndian.PutUint64(k[9:], inode)
	return k
}

func chunkKey(id, inode, index uint64) []byte {
	return binary.BigEndian.AppendUint64(ChunkPrefix(id, inode), index)
}

// ParseChunkKey splits a chunk key into volume, inode and chunk index.
func ParseChunkKey(k []byte) (id, inode, index uint64, ok bool) {
	if len(k) != 25 || k[0] != prefixChunk {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), binary.BigEndian.Uint64(k[9:]), binary.BigEndian.Uint64(k[17:]), true
}

// chunkEntry is one chunk map value: where the chunk's bytes are on the
// device and how they were stored. Version 1 layout, 24 bytes, then the
// filter record when flagRecord is set:
//
//	0      version (1)
//	1      flags: 0 = plain chunk, stored as written; flagRecord = the
//	       chunk was transformed and its filter record follows byte 24;
//	       flagShort = a plain chunk whose extent holds only its first
//	       stored-length bytes (the rest of the chunk reads as zeros)
//	2..3   reserved, zero
//	4..7   stored length (bytes on the device)
//	8..15  device offset
//	16..19 crc32c of the stored bytes when the record ends in a checksum
//	       step (0 otherwise; a mirror of the record's own crc)
//	20..23 reserved, zero
//	24..   filter record (gateway/filter record.go), flagRecord only
//
// Readers refuse flags they do not know, a plain entry longer than 24 bytes
// and a flagged one without a record, rather than return bytes they cannot
// undo.
type chunkEntry struct {
	flags     uint8
	storedLen uint32
	devOff    int64
	checksum  uint32
	record    []byte  // the filter record (flagRecord); nil for a plain chunk
	patches   []patch // sectors stored on their own (flagPatches, patch.go), by sector
}

const chunkEntryLen = 24

// Chunk entry flags.
const (
	flagRecord = 1 << 0 // a filter record follows byte 24
	// flagShort: a plain chunk stored in fewer units than the chunk size
	// (short.go). Its stored length is a whole number of units below the
	// chunk size; bytes past it read as zeros. Binaries from before it
	// refuse the entry (an unknown flag), and with it the store.
	flagShort = 1 << 1
	// flagPatches: a transformed chunk with patches (patch.go). Bytes 2..3
	// hold the record's length, and the patch list follows the record.
	// Binaries from before it refuse the entry.
	flagPatches = 1 << 2
	knownFlags  = flagRecord | flagShort | flagPatches
)

// transformed reports whether the chunk's stored bytes must be undone by
// its filter record.
func (e chunkEntry) transformed() bool { return e.flags&flagRecord != 0 }

// short reports whether the chunk is a short plain chunk (short.go).
func (e chunkEntry) short() bool { return e.flags&flagShort != 0 }

// extentLen is the length of the chunk's extent: its stored length in whole
// allocation units (what freeing it must zero and release).
func (e chunkEntry) extentLen() int64 { return unitsFor(int64(e.storedLen)) * unitSize }

func (e chunkEntry) encode() []byte {
	b := make([]byte, chunkEntryLen, chunkEntryLen+len(e.record)+1+len(e.patches)*patchLen)
	b[0] = 1
	b[1] = e.flags
	binary.BigEndian.PutUint32(b[4:], e.storedLen)
	binary.BigEndian.PutUint64(b[8:], uint64(e.devOff))
	binary.BigEndian.PutUint32(b[16:], e.checksum)
	if e.flags&flagRecord != 0 {
		b = append(b, e.record...)
	}
	if e.flags&flagPatches != 0 {
		binary.BigEndian.PutUint16(b[2:], uint16(len(e.record)))
		b = appendPatches(b, e.patches)
	}
	return b
}

// decodeChunkEntry decodes a chunk entry. The record is a copy: b may be a
// badger value that is valid only inside its callback.
func decodeChunkEntry(b []byte) (chunkEntry, error) {
	if len(b) < chunkEntryLen || b[0] != 1 {
		return chunkEntry{}, fmt.Errorf("chunk entry: bad version or length %d: %w", len(b), ErrIO)
	}
	e := chunkEntry{
		flags:     b[1],
		storedLen: binary.BigEndian.Uint32(b[4:]),
		devOff:    int64(binary.BigEndian.Uint64(b[8:])),
		checksum:  binary.BigEndian.Uint32(b[16:]),
	}
	switch {
	case e.flags&^knownFlags != 0:
		return chunkEntry{}, fmt.Errorf("chunk entry: unknown flags %#x (written by a newer sluice?): %w", e.flags, ErrIO)
	case e.flags&flagRecord != 0 && len(b) == chunkEntryLen:
		return chunkEntry{}, fmt.Errorf("chunk entry: flagged as transformed but has no filter record: %w", ErrIO)
	case e.flags&flagRecord == 0 && len(b) != chunkEntryLen:
		return chunkEntry{}, fmt.Errorf("chunk entry: plain entry of %d bytes: %w", len(b), ErrIO)
	case e.flags&flagShort != 0 && e.flags&flagRecord != 0:
		return chunkEntry{}, fmt.Errorf("chunk entry: flagged both short and transformed: %w", ErrIO)
	case e.flags&flagPatches != 0 && e.flags&flagRecord == 0:
		return chunkEntry{}, fmt.Errorf("chunk entry: patches on a chunk that is not transformed: %w", ErrIO)
	case e.flags&flagShort != 0 && (e.storedLen == 0 || e.storedLen%unitSize != 0 || e.storedLen >= maxChunkSize):
		return chunkEntry{}, fmt.Errorf("chunk entry: short chunk of %d bytes (want whole units of %d below a chunk): %w", e.storedLen, unitSize, ErrIO)
	}
	rec := b[chunkEntryLen:]
	if e.flags&flagPatches != 0 {
		n := int(binary.BigEndian.Uint16(b[2:]))
		if n == 0 || n >= len(rec) {
			return chunkEntry{}, fmt.Errorf("chunk entry: record of %d bytes before its patches, %d bytes follow the header: %w", n, len(rec), ErrIO)
		}
		var err error
		if e.patches, err = decodePatches(rec[n:]); err != nil {
			return chunkEntry{}, err
		}
		rec = rec[:n]
	}
	if e.flags&flagRecord != 0 {
		e.record = append([]byte(nil), rec...)
	}
	return e, nil
}

// header is the store's identity, in badger under 'h' and mirrored in the
// device superblock, so metadata is never opened against the wrong device.
type header struct {
	Format     int    `json:"format"`
	UUID       string `json:"uuid"`
	DeviceSize int64  `json:"device_size"`
	DataStart  int64  `json:"data_start"`
	UnitSize   int64  `json:"unit_size"`
}

// superblock bytes: magic (12) | format uint32 | uuid (36 ASCII) | zero pad.
func encodeSuperblock(h header) []byte {
	b := make([]byte, superblockSize)
	copy(b, superblockMagic)
	binary.BigEndian.PutUint32(b[12:], uint32(h.Format))
	copy(b[16:52], h.UUID)
	return b
}

func decodeSuperblock(b []byte) (uuid string, format int, ok bool) {
	if len(b) < 52 || string(b[:12]) != superblockMagic {
		return "", 0, false
	}
	return string(b[16:52]), int(binary.BigEndian.Uint32(b[12:])), true
}
