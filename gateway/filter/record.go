package filter

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// Chain record format, version 1. The store appends it to a chunk's map
// entry after byte 24; an entry of exactly 24 bytes is a plain chunk (no
// record). All integers are big-endian.
//
//	offset  size  field
//	0       1     record version (1)
//	1       1     n: number of steps, 1..8
//	2       4     plain length: bytes of the chunk before the first step
//	6       ...   n steps, in the order they ran on write; a read undoes
//	              them last to first. Each step:
//	                0  1  filter id
//	                1  1  a: length of the arguments, 0..255
//	                2  a  arguments, defined by the filter id
//
// Filter ids and their arguments (the exact sizes are checked):
//
//	1 compression  5 bytes: algo (0 = none: the bytes did not shrink and are
//	               stored as they were; 1 = zstd frame; 2 = lz4 block),
//	               then the step's input length (uint32)
//	2 encryption   17 bytes: algo, key id (4 bytes: the first 4 bytes of
//	               SHA-256("sluice key id v1\x00" || key)), nonce (12 bytes,
//	               fresh random per write). Algo 1 = AES-256-GCM over the
//	               whole input: the stored bytes are ciphertext || 16-byte
//	               tag; the additional data is "sluice chunk v1\x00" ||
//	               volume id (8) || inode (8) || chunk index (8). Algo 2 =
//	               AES-256-GCM per 4096-byte sector (what this version
//	               writes): the input is cut into sectors of 4096 bytes (the
//	               last may be shorter), each sealed on its own and stored
//	               as ciphertext || 16-byte tag, one after the other (sector
//	               i at offset i*4112); sector i's nonce is the recorded
//	               nonce with its last 4 bytes XORed with i (big-endian), its
//	               additional data "sluice sector v1" || volume id (8) ||
//	               inode (8) || chunk index (8) || i (4). A 4 KiB read then
//	               reads and opens one sector, not the whole chunk.
//	3 checksum     5 bytes: algo (1 = crc32c, Castagnoli), then the crc of
//	               the step's input (uint32). Chains always run checksum
//	               last, so this is the crc of the stored bytes.
//	4 noop         0 bytes
//
// Ids 5..127 are reserved for future built-ins, 128..255 for filters
// deployed at run time; 0 is invalid. A decoder refuses a version other than
// 1, n outside 1..8, an unknown id, arguments of the wrong size or with an
// unknown algo, lengths above MaxChunkSize, and trailing bytes.

// RecordVersion is the chain record version this code writes.
const RecordVersion = 1

// MaxSteps bounds the transform steps of one chain (and of one record).
const MaxSteps = 8

const recordHeaderLen = 6

// Filter ids in chain records. Never reuse one.
const (
	idCompression = 1
	idEncryption  = 2
	idChecksum    = 3
	idNoop        = 4
)

// Algorithms recorded in step arguments.
const (
	compressNone = 0
	compressZstd = 1
	compressLZ4  = 2
	cryptAESGCM  = 1
	cryptSectors = 2 // AES-256-GCM per SectorSize bytes
	sumCRC32C    = 1
)

// Lengths of each id's arguments.
var argLens = [...]int{idCompression: 5, idEncryption: 17, idChecksum: 5, idNoop: 0}

// Record is a decoded chain record: what was applied to one chunk.
type Record struct {
	PlainLen uint32 // bytes before the first step
	Steps    []Step // in write order
}

// Step is one applied filter: its id and the arguments its reverse needs.
type Step struct {
	ID   uint8
	Args []byte
}

// ParseRecord decodes and checks a chain record. It never panics; errors wrap
// ErrRecord. The returned steps alias b.
func ParseRecord(b []byte) (Record, error) {
	if len(b) < recordHeaderLen {
		return Record{}, fmt.Errorf("record of %d bytes is shorter than its %d-byte header: %w", len(b), recordHeaderLen, ErrRecord)
	}
	if b[0] != RecordVersion {
		return Record{}, fmt.Errorf("record version %d (this sluice reads %d): %w", b[0], RecordVersion, ErrRecord)
	}
	n := int(b[1])
	if n < 1 || n > MaxSteps {
		return Record{}, fmt.Errorf("record has %d steps, want 1..%d: %w", n, MaxSteps, ErrRecord)
	}
	r := Record{PlainLen: binary.BigEndian.Uint32(b[2:]), Steps: make([]Step, 0, n)}
	if r.PlainLen > MaxChunkSize {
		return Record{}, fmt.Errorf("record plain length %d is above %d: %w", r.PlainLen, MaxChunkSize, ErrRecord)
	}
	p := recordHeaderLen
	for i := 0; i < n; i++ {
		if len(b)-p < 2 {
			return Record{}, fmt.Errorf("record step %d: truncated header: %w", i, ErrRecord)
		}
		id, a := b[p], int(b[p+1])
		p += 2
		if len(b)-p < a {
			return Record{}, fmt.Errorf("record step %d: %d argument bytes, %d left: %w", i, a, len(b)-p, ErrRecord)
		}
		s := Step{ID: id, Args: b[p : p+a : p+a]}
		p += a
		if err := s.check(); err != nil {
			return Record{}, fmt.Errorf("record step %d: %w", i, err)
		}
		r.Steps = append(r.Steps, s)
	}
	if p != len(b) {
		return Record{}, fmt.Errorf("record has %d trailing bytes: %w", len(b)-p, ErrRecord)
	}
	return r, nil
}

// check validates one step's id and arguments.
func (s Step) check() error {
	if int(s.ID) >= len(argLens) || s.ID == 0 {
		return fmt.Errorf("unknown filter id %d (written by a newer sluice?): %w", s.ID, ErrRecord)
	}
	if len(s.Args) != argLens[s.ID] {
		return fmt.Errorf("filter id %d: %d argument bytes, want %d: %w", s.ID, len(s.Args), argLens[s.ID], ErrRecord)
	}
	switch s.ID {
	case idCompression:
		if s.Args[0] > compressLZ4 {
			return fmt.Errorf("compression algo %d unknown: %w", s.Args[0], ErrRecord)
		}
		if binary.BigEndian.Uint32(s.Args[1:]) > MaxChunkSize {
			return fmt.Errorf("compression input length %d is above %d: %w", binary.BigEndian.Uint32(s.Args[1:]), MaxChunkSize, ErrRecord)
		}
	case idEncryption:
		if s.Args[0] != cryptAESGCM && s.Args[0] != cryptSectors {
			return fmt.Errorf("encryption algo %d unknown: %w", s.Args[0], ErrRecord)
		}
	case idChecksum:
		if s.Args[0] != sumCRC32C {
			return fmt.Errorf("checksum algo %d unknown: %w", s.Args[0], ErrRecord)
		}
	}
	return nil
}

// Append encodes r after b. It returns an error wrapping ErrRecord if r
// could not be decoded again (no steps, too many, bad arguments).
func (r Record) Append(b []byte) ([]byte, error) {
	if len(r.Steps) < 1 || len(r.Steps) > MaxSteps {
		return b, fmt.Errorf("record with %d steps, want 1..%d: %w", len(r.Steps), MaxSteps, ErrRecord)
	}
	if r.PlainLen > MaxChunkSize {
		return b, fmt.Errorf("record plain length %d is above %d: %w", r.PlainLen, MaxChunkSize, ErrRecord)
	}
	for _, s := range r.Steps {
		if err := s.check(); err != nil {
			return b, err
		}
	}
	b = append(b, RecordVersion, byte(len(r.Steps)))
	b = binary.BigEndian.AppendUint32(b, r.PlainLen)
	for _, s := range r.Steps {
		b = append(b, s.ID, byte(len(s.Args)))
		b = append(b, s.Args...)
	}
	return b, nil
}

// Checksum returns the crc32c of the stored bytes when the record's last
// step is a checksum (the store mirrors it into the entry's checksum field).
func (r Record) Checksum() (uint32, bool) {
	if len(r.Steps) == 0 {
		return 0, false
	}
	s := r.Steps[len(r.Steps)-1]
	if s.ID != idChecksum || len(s.Args) != argLens[idChecksum] {
		return 0, false
	}
	return binary.BigEndian.Uint32(s.Args[1:]), true
}

// Has reports whether the record has a step of the named filter.
func (r Record) Has(name string) bool {
	s, ok := lookup(name)
	if !ok {
		return false
	}
	for _, st := range r.Steps {
		if st.ID == s.ID {
			return true
		}
	}
	return false
}

// String describes the record for people (scrub, debugging). It shows key
// ids, never keys; nonces are not secret.
func (r Record) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plain %d", r.PlainLen)
	for _, s := range r.Steps {
		b.WriteString(" | ")
		b.WriteString(s.String())
	}
	return b.String()
}

// String describes one step.
func (s Step) String() string {
	if s.check() != nil {
		return fmt.Sprintf("id%d(%d bytes)", s.ID, len(s.Args))
	}
	switch s.ID {
	case idCompression:
		algo := [...]string{"none", "zstd", "lz4"}[s.Args[0]]
		return fmt.Sprintf("compression(%s from %d)", algo, binary.BigEndian.Uint32(s.Args[1:]))
	case idEncryption:
		return fmt.Sprintf("encryption(aes-256-gcm key %s)", hex.EncodeToString(s.Args[1:5]))
	case idChecksum:
		return fmt.Sprintf("checksum(crc32c %08x)", binary.BigEndian.Uint32(s.Args[1:]))
	case idNoop:
		return "noop"
	}
	return fmt.Sprintf("id%d", s.ID)
}
