package filter

import "fmt"

// Reading part of a chunk.
//
// A chunk whose chain is sectored encryption alone, or noop alone (noop
// steps aside), can be read in part: plain sector i (SectorSize bytes, the last one maybe
// shorter) is stored at [i*Stride, (i+1)*Stride) and opens on its own. Any
// other step (compression, checksum, whole-chunk encryption of older
// records) needs the whole stored chunk, and the store reads it whole.

// MaxStored bounds the stored size of a chunk of plainLen bytes under any
// chain: a tag per sector (sectored encryption), plus headroom for the
// other steps' framing (a compressor's frame on incompressible data, a
// whole-chunk tag).
func MaxStored(plainLen int) int { return plainLen + (plainLen/SectorSize+1)*16 + 1024 }

// Sectors describes how a chunk written with record can be read in part.
type Sectors struct {
	Stride   int // stored bytes per whole sector
	PlainLen int // plain bytes of the chunk
	nonce    []byte
	keyID    []byte
}

// Identity reports whether the sectors are stored as they read (no
// encryption in the chain): stored bytes are plain bytes.
func (l Sectors) Identity() bool { return l.keyID == nil }

// PartialLayout returns the sector layout of a chunk written with record,
// and false when the chunk must be read whole.
func PartialLayout(record []byte) (Sectors, bool) {
	r, err := ParseRecord(record)
	if err != nil {
		return Sectors{}, false
	}
	var enc *Step
	for i := range r.Steps {
		switch st := &r.Steps[i]; {
		case st.ID == idNoop:
		case st.ID == idEncryption && st.Args[0] == cryptSectors && enc == nil:
			enc = st
		default:
			return Sectors{}, false
		}
	}
	if enc == nil { // only noop steps: stored as written
		return Sectors{Stride: SectorSize, PlainLen: int(r.PlainLen)}, true
	}
	return Sectors{Stride: sectorStride, PlainLen: int(r.PlainLen), keyID: enc.Args[1:5], nonce: enc.Args[5 : 5+nonceLen]}, true
}

// ReverseSectors opens stored sectors of a chunk laid out as l: stored
// holds whole stored sectors from sector first on (the chunk's last one may
// be shorter). It appends their plain bytes to dst. Failures wrap ErrAuth,
// ErrCorrupt, ErrKeyMismatch or the keyring's errors, like Reverse.
func (e *Env) ReverseSectors(cc ChunkContext, dst, stored []byte, l Sectors, first int) ([]byte, error) {
	if l.keyID == nil {
		return append(dst, stored...), nil
	}
	k, err := e.Keyring().key(cc.Tenant)
	if err != nil {
		return dst, fmt.Errorf("%s: encryption: %w", cc, err)
	}
	if string(k.id[:]) != string(l.keyID) {
		return dst, fmt.Errorf("%s: chunk encrypted with key id %x, tenant %q now has key id %x: %w", cc, l.keyID, cc.Tenant, k.id[:], ErrKeyMismatch)
	}
	return openSectors(k, cc, dst, stored, l.nonce, first)
}
