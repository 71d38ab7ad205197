package filter

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"

	"github.com/pierrec/lz4/v4"
	"github.com/sluice-storage/sluice/internal/bufpool"
)

// builtins is the immutable table of built-in filters, by name.
var builtins = [...]*Spec{
	{
		Name: "compression", Kind: Transform, ID: idCompression,
		Description: "compress each chunk (zstd or lz4); a chunk that does not shrink by 1/8 is stored as it was",
		Params: []ParamSpec{
			{Name: "algo", Type: TypeEnum, Default: "zstd", Allowed: []string{"zstd", "lz4"}, Description: "compressor"},
			{Name: "level", Type: TypeInt, Default: "3", Min: 1, Max: 22, Description: "zstd level (1 fastest .. 22 smallest; lz4 ignores it)"},
		},
		newTransformer: newCompression,
		reverse:        reverseCompression,
	},
	{
		Name: "encryption", Kind: Transform, ID: idEncryption,
		Description: "encrypt each 4 KiB sector of each chunk with AES-256-GCM under the tenant's key; sectors are bound to their volume, inode, chunk and place",
		Params: []ParamSpec{
			{Name: "algo", Type: TypeEnum, Default: "aes-256-gcm", Allowed: []string{"aes-256-gcm"}, Description: "cipher"},
		},
		newTransformer: newEncryption,
		reverse:        reverseEncryption,
	},
	{
		Name: "checksum", Kind: Transform, ID: idChecksum,
		Description: "crc32c of the stored bytes, verified on every read (mismatch: EIO); always the last step on write",
		Params: []ParamSpec{
			{Name: "algo", Type: TypeEnum, Default: "crc32c", Allowed: []string{"crc32c"}, Description: "checksum"},
		},
		newTransformer: newChecksum,
		reverse:        reverseChecksum,
	},
	{
		Name: "noop", Kind: Transform, ID: idNoop,
		Description:    "does nothing, but is recorded (measures the cost of the filter path)",
		newTransformer: func(*Env, Values) (Transformer, error) { return noop{}, nil },
		reverse:        func(_ *Env, _ ChunkContext, _, src, _ []byte) ([]byte, error) { return src, nil },
	},
	{
		Name: "cache", Kind: Control,
		Description: "LRU read cache in RAM",
		Params: []ParamSpec{
			{Name: "size", Type: TypeSize, Default: "67108864", Min: 1 << 20, Max: 1 << 40, Description: "cache size in bytes"},
		},
	},
	{
		Name: "bandwidth", Kind: Control,
		Description: "bandwidth limits and minimums (bytes/s) for the QoS scheduler",
		Params:      rateParams(TypeBandwidth, "bytes/s"),
		check:       checkRates,
	},
	{
		Name: "iops", Kind: Control,
		Description: "IOPS limits and minimums (8 KiB-normalised operations/s) for the QoS scheduler",
		Params:      rateParams(TypeIOPS, "operations/s"),
		check:       checkRates,
	},
}

func rateParams(t ParamType, what string) []ParamSpec {
	const maxRate = 1 << 50
	var ps []ParamSpec
	for _, op := range []string{"", "read_", "write_"} {
		for _, b := range []string{"min", "max"} {
			desc := "minimum (reservation)"
			if b == "max" {
				desc = "maximum (limit)"
			}
			scope := "all IO"
			if op != "" {
				scope = op[:len(op)-1] + "s"
			}
			ps = append(ps, ParamSpec{Name: op + b, Type: t, Min: 1, Max: maxRate,
				Description: fmt.Sprintf("%s for %s, %s", desc, scope, what)})
		}
	}
	return ps
}

func checkRates(v Values) error {
	if len(v) == 0 {
		return paramErr("give at least one of min, max, read_min, read_max, write_min, write_max")
	}
	for _, op := range []string{"", "read_", "write_"} {
		lo, hi := v.Int(op+"min"), v.Int(op+"max")
		if lo > 0 && hi > 0 && lo > hi {
			return paramErr("%smin is above %smax", op, op)
		}
	}
	return nil
}

// lookup finds a built-in spec by name, case-insensitive.
func lookup(name string) (*Spec, bool) {
	for _, s := range builtins {
		if strings.EqualFold(s.Name, name) {
			return s, true
		}
	}
	return nil, false
}

// byID finds the built-in transform with a record id.
func byID(id uint8) (*Spec, bool) {
	for _, s := range builtins {
		if s.Kind == Transform && s.ID == id {
			return s, true
		}
	}
	return nil, false
}

// Lookup returns a copy of the built-in filter spec with that name
// (case-insensitive).
func Lookup(name string) (Spec, bool) {
	s, ok := lookup(name)
	if !ok {
		return Spec{}, false
	}
	return s.clone(), true
}

// Builtins returns copies of every built-in filter spec, sorted by name: the
// schema `sluice filter list` shows and the policy registry starts from.
func Builtins() []Spec {
	out := make([]Spec, 0, len(builtins))
	for _, s := range builtins {
		out = append(out, s.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Names lists the built-in filter names, sorted.
func Names() []string {
	out := make([]string, 0, len(builtins))
	for _, s := range builtins {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return out
}

// ---- compression

type compression struct {
	env   *Env
	algo  byte
	speed int
}

// minSavingDiv: compressed bytes are kept only if they save at least
// 1/minSavingDiv of the input (BlueStore's compression_required_ratio of
// 0.875); otherwise the read-side cost of decompressing buys too little.
const minSavingDiv = 8

func newCompression(env *Env, v Values) (Transformer, error) {
	c := &compression{env: env, algo: compressZstd, speed: zstdSpeed(v.Int("level"))}
	if v["algo"] == "lz4" {
		c.algo = compressLZ4
	}
	if c.algo == compressZstd {
		if _, err := env.zstdEncoder(c.speed); err != nil { // fail at build, not on the first write
			return nil, err
		}
	}
	return c, nil
}

func (c *compression) Forward(_ ChunkContext, dst, src, args []byte) ([]byte, []byte, error) {
	limit := len(src) - len(src)/minSavingDiv // keep the result only if it is at most this long
	out := dst
	algo := byte(compressNone)
	if len(src) >= 64 {
		switch c.algo {
		case compressZstd:
			enc, err := c.env.zstdEncoder(c.speed)
			if err != nil {
				return dst, args, err
			}
			out = enc.EncodeAll(src, dst)
			if len(out)-len(dst) <= limit {
				algo = compressZstd
			}
		case compressLZ4:
			out = bufpool.Grow(dst, limit)
			lc := c.env.lz4Pool.Get().(*lz4.Compressor)
			n, err := lc.CompressBlock(src, out[len(dst):len(dst)+limit])
			c.env.lz4Pool.Put(lc)
			if err == nil && n > 0 {
				out, algo = out[:len(dst)+n], compressLZ4
			}
		}
	}
	args = append(args, algo)
	args = binary.BigEndian.AppendUint32(args, uint32(len(src)))
	if algo == compressNone {
		return src, args, nil // stored as it was
	}
	return out, args, nil
}

func reverseCompression(env *Env, _ ChunkContext, dst, src, args []byte) ([]byte, error) {
	n := int(binary.BigEndian.Uint32(args[1:]))
	switch args[0] {
	case compressNone:
		if len(src) != n {
			return dst, fmt.Errorf("uncompressed step holds %d bytes, record says %d: %w", len(src), n, ErrCorrupt)
		}
		return src, nil
	case compressZstd:
		dec, err := env.zstdDecoder()
		if err != nil {
			return dst, err
		}
		base := len(dst)
		dst = bufpool.Grow(dst, n)[: base : base+n] // the decoder stops at cap
		out, err := dec.DecodeAll(src, dst)
		if err != nil {
			return dst, fmt.Errorf("zstd: %v: %w", err, ErrCorrupt)
		}
		if len(out)-base != n {
			return dst, fmt.Errorf("zstd gave %d bytes, record says %d: %w", len(out)-base, n, ErrCorrupt)
		}
		return out, nil
	case compressLZ4:
		if n == 0 { // lz4's decoder dereferences an empty output; no chunk is empty
			return dst, fmt.Errorf("lz4 step of 0 bytes: %w", ErrCorrupt)
		}
		base := len(dst)
		dst = bufpool.Grow(dst, n)
		got, err := lz4.UncompressBlock(src, dst[base:base+n])
		if err != nil {
			return dst[:base], fmt.Errorf("lz4: %v: %w", err, ErrCorrupt)
		}
		if got != n {
			return dst[:base], fmt.Errorf("lz4 gave %d bytes, record says %d: %w", got, n, ErrCorrupt)
		}
		return dst[:base+n], nil
	}
	return dst, fmt.Errorf("compression algo %d: %w", args[0], ErrRecord)
}

// ---- encryption

type encryption struct{ env *Env }

func newEncryption(env *Env, _ Values) (Transformer, error) { return encryption{env: env}, nil }

// adPrefix starts the additional data of every encrypted chunk.
const adPrefix = "sluice chunk v1\x00"

const adLen = len(adPrefix) + 24

func chunkAD(c ChunkContext) [adLen]byte {
	var ad [adLen]byte
	copy(ad[:], adPrefix)
	binary.BigEndian.PutUint64(ad[len(adPrefix):], c.VolumeID)
	binary.BigEndian.PutUint64(ad[len(adPrefix)+8:], c.Inode)
	binary.BigEndian.PutUint64(ad[len(adPrefix)+16:], c.ChunkIndex)
	return ad
}

// Forward seals src sector by sector (algo 2, record.go): one 4 KiB read
// of the chunk later opens one sector.
func (e encryption) Forward(c ChunkContext, dst, src, args []byte) ([]byte, []byte, error) {
	k, err := e.env.Keyring().key(c.Tenant)
	if err != nil {
		return dst, args, err
	}
	var nonce [nonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return dst, args, fmt.Errorf("nonce: %v: %w", err, ErrChain)
	}
	args = append(args, cryptSectors)
	args = append(args, k.id[:]...)
	args = append(args, nonce[:]...)
	for i := 0; i*SectorSize < len(src) || i == 0; i++ {
		sec := src[i*SectorSize : min(len(src), (i+1)*SectorSize)]
		n, ad := sectorNonce(nonce[:], i), sectorAD(c, i)
		dst = k.aead.Seal(dst, n[:], sec, ad[:])
	}
	return dst, args, nil
}

// SectorSize is the plain size of one sector of sectored encryption.
const SectorSize = 4096

// sectorStride is the stored size of one whole sector: ciphertext and tag.
const sectorStride = SectorSize + 16

const sectorADPrefix = "sluice sector v1"

func sectorAD(c ChunkContext, i int) [len(sectorADPrefix) + 28]byte {
	var ad [len(sectorADPrefix) + 28]byte
	p := copy(ad[:], sectorADPrefix)
	binary.BigEndian.PutUint64(ad[p:], c.VolumeID)
	binary.BigEndian.PutUint64(ad[p+8:], c.Inode)
	binary.BigEndian.PutUint64(ad[p+16:], c.ChunkIndex)
	binary.BigEndian.PutUint32(ad[p+24:], uint32(i))
	return ad
}

func sectorNonce(nonce []byte, i int) [nonceLen]byte {
	var n [nonceLen]byte
	copy(n[:], nonce)
	binary.BigEndian.PutUint32(n[nonceLen-4:], binary.BigEndian.Uint32(n[nonceLen-4:])^uint32(i))
	return n
}

func reverseEncryption(env *Env, c ChunkContext, dst, src, args []byte) ([]byte, error) {
	k, err := env.Keyring().key(c.Tenant)
	if err != nil {
		return dst, err
	}
	if string(k.id[:]) != string(args[1:5]) {
		return dst, fmt.Errorf("chunk encrypted with key id %x, tenant %q now has key id %x: %w", args[1:5], c.Tenant, k.id[:], ErrKeyMismatch)
	}
	if len(src) < k.aead.Overhead() {
		return dst, fmt.Errorf("%d encrypted bytes, shorter than the tag: %w", len(src), ErrCorrupt)
	}
	if args[0] == cryptSectors {
		return openSectors(k, c, dst, src, args[5:5+nonceLen], 0)
	}
	ad := chunkAD(c)
	out, err := k.aead.Open(dst, args[5:5+nonceLen], src, ad[:])
	if err != nil {
		return dst, fmt.Errorf("%s: %w", c, ErrAuth)
	}
	return out, nil
}

// openSectors opens the stored sectors in src, the first of them sector
// first of the chunk, appending their plain bytes to dst.
func openSectors(k *tenantKey, c ChunkContext, dst, src, nonce []byte, first int) ([]byte, error) {
	for i := 0; i*sectorStride < len(src); i++ {
		sec := src[i*sectorStride : min(len(src), (i+1)*sectorStride)]
		if len(sec) < k.aead.Overhead() {
			return dst, fmt.Errorf("%s: sector %d: %d stored bytes, shorter than the tag: %w", c, first+i, len(sec), ErrCorrupt)
		}
		n, ad := sectorNonce(nonce, first+i), sectorAD(c, first+i)
		var err error
		if dst, err = k.aead.Open(dst, n[:], sec, ad[:]); err != nil {
			return dst, fmt.Errorf("%s: sector %d: %w", c, first+i, ErrAuth)
		}
	}
	return dst, nil
}

// ---- checksum

type checksum struct{}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func newChecksum(*Env, Values) (Transformer, error) { return checksum{}, nil }

func (checksum) Forward(_ ChunkContext, _, src, args []byte) ([]byte, []byte, error) {
	args = append(args, sumCRC32C)
	return src, binary.BigEndian.AppendUint32(args, crc32.Checksum(src, castagnoli)), nil
}

func reverseChecksum(_ *Env, _ ChunkContext, dst, src, args []byte) ([]byte, error) {
	want := binary.BigEndian.Uint32(args[1:])
	if got := crc32.Checksum(src, castagnoli); got != want {
		return dst, fmt.Errorf("crc32c %08x, recorded %08x: %w", got, want, ErrChecksum)
	}
	return src, nil
}

// Checksum is crc32c (Castagnoli) of b, as the checksum filter computes it.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// ---- noop

type noop struct{}

func (noop) Forward(_ ChunkContext, _, src, args []byte) ([]byte, []byte, error) {
	return src, args, nil
}
