package fsns

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Namespace key layout of fs volumes (docs/FORMAT.md). Like the chunk map:
// one-byte prefix, volume id and inode as 8-byte big-endian integers, so a
// directory's entries are one prefix scan in name order.
const (
	prefixInode  = 'i' // 'i' vol ino → inode attributes (attrLen bytes)
	prefixLength = 'e' // 'e' vol ino → file length (8 bytes BE); absent = 0
	prefixDentry = 'd' // 'd' vol parent name → child ino (8) | type (4, S_IFMT bits)
	prefixXattr  = 'x' // 'x' vol ino name → xattr value
	prefixLink   = 'l' // 'l' vol ino → symlink target
	prefixOrphan = 'o' // 'o' vol ino → empty: nlink reached 0; purge when unused
)

// RootIno is the inode number of an fs volume's root directory.
const RootIno = 1

// Name and xattr limits (Linux's NAME_MAX, PATH_MAX, XATTR_SIZE_MAX).
const (
	MaxNameLen       = 255
	MaxSymlinkLen    = 4095
	MaxXattrNameLen  = 255
	MaxXattrValueLen = 64 << 10
)

// namespacePrefixes are the key prefixes of every namespace record of
// volume id.
func namespacePrefixes(id uint64) [][]byte {
	var out [][]byte
	for _, p := range []byte{prefixInode, prefixLength, prefixDentry, prefixXattr, prefixLink, prefixOrphan} {
		out = append(out, binary.BigEndian.AppendUint64([]byte{p}, id))
	}
	return out
}

func inoKey(prefix byte, vol, ino uint64) []byte {
	k := make([]byte, 17, 17+MaxNameLen)
	k[0] = prefix
	binary.BigEndian.PutUint64(k[1:], vol)
	binary.BigEndian.PutUint64(k[9:], ino)
	return k
}

func inodeKey(vol, ino uint64) []byte  { return inoKey(prefixInode, vol, ino) }
func lengthKey(vol, ino uint64) []byte { return inoKey(prefixLength, vol, ino) }
func linkKey(vol, ino uint64) []byte   { return inoKey(prefixLink, vol, ino) }
func orphanKey(vol, ino uint64) []byte { return inoKey(prefixOrphan, vol, ino) }

// dentryPrefix is the key prefix of every entry of directory parent.
func dentryPrefix(vol, parent uint64) []byte { return inoKey(prefixDentry, vol, parent) }

func dentryKey(vol, parent uint64, name string) []byte {
	return append(dentryPrefix(vol, parent), name...)
}

func xattrPrefix(vol, ino uint64) []byte { return inoKey(prefixXattr, vol, ino) }

func xattrKey(vol, ino uint64, name string) []byte {
	return append(xattrPrefix(vol, ino), name...)
}

func encodeDentry(ino uint64, mode uint32) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint64(b, ino)
	binary.BigEndian.PutUint32(b[8:], mode&syscall.S_IFMT)
	return b
}

func decodeDentry(b []byte) (ino uint64, typ uint32, err error) {
	if len(b) != 12 {
		return 0, 0, fmt.Errorf("dentry: length %d: %w", len(b), store.ErrIO)
	}
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint32(b[8:]), nil
}

// Attr is an inode's attributes. Times are Unix nanoseconds.
type Attr struct {
	Ino    uint64 `json:"ino"`
	Mode   uint32 `json:"mode"` // S_IFMT type bits | permission bits
	Nlink  uint32 `json:"nlink"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Rdev   uint32 `json:"rdev,omitempty"`
	Size   int64  `json:"size"`
	Blocks int64  `json:"blocks"` // 512-byte units of pool space held
	Atime  int64  `json:"atime"`
	Mtime  int64  `json:"mtime"`
	Ctime  int64  `json:"ctime"`
	Parent uint64 `json:"parent,omitempty"` // directories: the parent's inode
}

// IsDir, IsRegular and IsSymlink test the inode type.
func (a Attr) IsDir() bool     { return a.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (a Attr) IsRegular() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFREG }
func (a Attr) IsSymlink() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFLNK }

// Inode attribute encoding, version 1, 56 bytes, big-endian:
//
//	0      version (1)
//	1..3   reserved, zero
//	4..7   mode
//	8..11  nlink
//	12..15 uid
//	16..19 gid
//	20..23 rdev
//	24..31 atime (Unix ns)
//	32..39 mtime
//	40..47 ctime
//	48..55 parent inode (directories), 0 otherwise
//
// The length lives under its own key ('e'), because the data path updates it
// without touching the rest. Later versions append fields; decoders accept
// longer values.
const attrLen = 56

func encodeAttr(a Attr) []byte {
	b := make([]byte, attrLen)
	b[0] = 1
	binary.BigEndian.PutUint32(b[4:], a.Mode)
	binary.BigEndian.PutUint32(b[8:], a.Nlink)
	binary.BigEndian.PutUint32(b[12:], a.UID)
	binary.BigEndian.PutUint32(b[16:], a.GID)
	binary.BigEndian.PutUint32(b[20:], a.Rdev)
	binary.BigEndian.PutUint64(b[24:], uint64(a.Atime))
	binary.BigEndian.PutUint64(b[32:], uint64(a.Mtime))
	binary.BigEndian.PutUint64(b[40:], uint64(a.Ctime))
	binary.BigEndian.PutUint64(b[48:], a.Parent)
	return b
}

func decodeAttr(ino uint64, b []byte) (Attr, error) {
	if len(b) < attrLen || b[0] != 1 {
		return Attr{}, fmt.Errorf("inode %d: bad attribute record (length %d): %w", ino, len(b), store.ErrIO)
	}
	return Attr{
		Ino:    ino,
		Mode:   binary.BigEndian.Uint32(b[4:]),
		Nlink:  binary.BigEndian.Uint32(b[8:]),
		UID:    binary.BigEndian.Uint32(b[12:]),
		GID:    binary.BigEndian.Uint32(b[16:]),
		Rdev:   binary.BigEndian.Uint32(b[20:]),
		Atime:  int64(binary.BigEndian.Uint64(b[24:])),
		Mtime:  int64(binary.BigEndian.Uint64(b[32:])),
		Ctime:  int64(binary.BigEndian.Uint64(b[40:])),
		Parent: binary.BigEndian.Uint64(b[48:]),
	}, nil
}
