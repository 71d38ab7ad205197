package filter

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
)

// Patches: one sector of a transformed chunk written on its own.
//
// A small write into a chunk a chain transformed would otherwise read,
// undo and rewrite the whole chunk. The store instead keeps the new
// sectors beside the chunk's stored bytes as patches (the store's
// docs/FORMAT.md, "Patches"): each patch is one SectorSize sector, stored
// in SectorSize bytes, and what it needs to be read back (a crc32c, and
// for a chain that encrypts, the nonce and tag) lives in the chunk's map
// entry. A patch is not compressed (the chunk is, when it is next
// rewritten whole); it is sealed with AES-256-GCM when the chain that
// wrote it encrypts, with a fresh random nonce and the additional data
// "sluice patch v1\x00" || volume id (8) || inode (8) || chunk index (8)
// || sector (4), so a patch cannot be moved to another chunk or sector.

// PatchSeal is what opening a sealed patch needs besides its stored bytes.
type PatchSeal struct {
	KeyID [4]byte
	Nonce [nonceLen]byte
	Tag   [16]byte
}

// Patches reports whether the chain's small writes into chunks may be
// stored as patches: it transforms (and is not noop steps alone, which the
// store overwrites in place), and every transform is a built-in whose
// effect a patch keeps (compression, encryption, checksum, noop). Filters
// deployed at run time are not: the store cannot know what they promise.
func (c *Chain) Patches() bool {
	if c.Plain() || c.Identity() {
		return false
	}
	for _, f := range c.transforms {
		switch f.spec.ID {
		case idCompression, idEncryption, idChecksum, idNoop:
		default:
			return false
		}
	}
	return true
}

// SealsPatches reports whether the chain encrypts, so that its patches
// are sealed.
func (c *Chain) SealsPatches() bool {
	if c == nil {
		return false
	}
	for _, f := range c.transforms {
		if f.spec.ID == idEncryption {
			return true
		}
	}
	return false
}

// SealPatch appends sector's plain bytes sealed under the tenant's key to
// dst (len(plain) bytes: the tag goes to the seal) and returns the seal.
func (e *Env) SealPatch(cc ChunkContext, dst, plain []byte, sector int) ([]byte, PatchSeal, error) {
	var s PatchSeal
	k, err := e.Keyring().key(cc.Tenant)
	if err != nil {
		return dst, s, fmt.Errorf("%s: encryption: %w", cc, err)
	}
	if _, err := rand.Read(s.Nonce[:]); err != nil {
		return dst, s, fmt.Errorf("nonce: %v: %w", err, ErrChain)
	}
	s.KeyID = k.id
	ad := patchAD(cc, sector)
	base := len(dst)
	dst = k.aead.Seal(dst, s.Nonce[:], plain, ad[:])
	copy(s.Tag[:], dst[len(dst)-len(s.Tag):])
	return dst[:base+len(plain)], s, nil
}

// OpenPatch appends the plain bytes of a patch sealed as s to dst. It
// writes the tag into stored's capacity past its length when there is
// room for it (else it copies). Failures wrap ErrAuth, ErrKeyMismatch or
// the keyring's errors.
func (e *Env) OpenPatch(cc ChunkContext, dst, stored []byte, sector int, s PatchSeal) ([]byte, error) {
	k, err := e.Keyring().key(cc.Tenant)
	if err != nil {
		return dst, fmt.Errorf("%s: encryption: %w", cc, err)
	}
	if k.id != s.KeyID {
		return dst, fmt.Errorf("%s: patch encrypted with key id %x, tenant %q now has key id %x: %w", cc, s.KeyID, cc.Tenant, k.id[:], ErrKeyMismatch)
	}
	sealed := stored
	if cap(stored)-len(stored) < len(s.Tag) {
		sealed = make([]byte, len(stored), len(stored)+len(s.Tag))
		copy(sealed, stored)
	}
	sealed = append(sealed, s.Tag[:]...)
	ad := patchAD(cc, sector)
	out, err := k.aead.Open(dst, s.Nonce[:], sealed, ad[:])
	if err != nil {
		return dst, fmt.Errorf("%s: patch of sector %d: %w", cc, sector, ErrAuth)
	}
	return out, nil
}

const patchADPrefix = "sluice patch v1\x00"

func patchAD(c ChunkContext, sector int) [len(patchADPrefix) + 28]byte {
	var ad [len(patchADPrefix) + 28]byte
	p := copy(ad[:], patchADPrefix)
	binary.BigEndian.PutUint64(ad[p:], c.VolumeID)
	binary.BigEndian.PutUint64(ad[p+8:], c.Inode)
	binary.BigEndian.PutUint64(ad[p+16:], c.ChunkIndex)
	binary.BigEndian.PutUint32(ad[p+24:], uint32(sector))
	return ad
}
