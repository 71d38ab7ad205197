package filter

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Env is what transforms need from the gateway: the keyring and shared
// codec state (zstd encoders and decoder, lz4 compressors, scratch buffers).
// One Env per gateway; it is safe for concurrent use. Make it with NewEnv
// and Close it when the gateway stops.
type Env struct {
	keys atomic.Pointer[Keyring]

	zencOnce [numZstdSpeeds]sync.Once
	zenc     [numZstdSpeeds]*zstd.Encoder
	zencErr  [numZstdSpeeds]error

	zdecOnce sync.Once
	zdec     *zstd.Decoder
	zdecErr  error

	lz4Pool sync.Pool // *lz4.Compressor
	bufPool sync.Pool // *[]byte scratch for chains
}

// zstd levels map onto klauspost/compress's four encoder speeds.
const numZstdSpeeds = 4

// NewEnv makes an Env with a keyring (nil: no tenant has a key).
func NewEnv(keys *Keyring) *Env {
	e := &Env{}
	e.keys.Store(keys)
	e.lz4Pool.New = func() any { return new(lz4.Compressor) }
	return e
}

// SetKeyring replaces the keyring (a reload). Chunks written with a key that
// is no longer in the keyring fail to read with ErrKeyMismatch.
func (e *Env) SetKeyring(k *Keyring) { e.keys.Store(k) }

// Keyring returns the keyring in use (possibly nil).
func (e *Env) Keyring() *Keyring { return e.keys.Load() }

// Close releases the codecs. The Env must not be used afterwards.
func (e *Env) Close() {
	for i := range e.zenc {
		e.zencOnce[i].Do(func() {}) // stop a later lazy init
		if e.zenc[i] != nil {
			e.zenc[i].Close()
		}
	}
	e.zdecOnce.Do(func() {})
	if e.zdec != nil {
		e.zdec.Close()
	}
}

// zstdSpeed maps a zstd level (1..22) to an encoder speed index.
func zstdSpeed(level int64) int {
	switch {
	case level < 3:
		return 0
	case level < 6:
		return 1
	case level < 10:
		return 2
	}
	return 3
}

func (e *Env) zstdEncoder(speed int) (*zstd.Encoder, error) {
	e.zencOnce[speed].Do(func() {
		lvl := [numZstdSpeeds]zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression, zstd.SpeedBestCompression}[speed]
		e.zenc[speed], e.zencErr[speed] = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(lvl),
			zstd.WithEncoderCRC(false), // integrity is the checksum filter's job
			zstd.WithLowerEncoderMem(true),
		)
	})
	if e.zenc[speed] == nil {
		return nil, fmt.Errorf("zstd encoder: %w (%w)", e.zencErr[speed], ErrChain)
	}
	return e.zenc[speed], nil
}

func (e *Env) zstdDecoder() (*zstd.Decoder, error) {
	e.zdecOnce.Do(func() {
		e.zdec, e.zdecErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0), // GOMAXPROCS concurrent DecodeAll calls
			zstd.WithDecoderMaxMemory(MaxChunkSize),
			zstd.WithDecodeAllCapLimit(true), // never decode more than the record says
		)
	})
	if e.zdec == nil {
		return nil, fmt.Errorf("zstd decoder: %w (%w)", e.zdecErr, ErrCorrupt)
	}
	return e.zdec, nil
}

// getBuf returns a pooled scratch buffer of length 0.
func (e *Env) getBuf() *[]byte {
	if b, ok := e.bufPool.Get().(*[]byte); ok {
		*b = (*b)[:0]
		return b
	}
	b := make([]byte, 0, 64<<10)
	return &b
}

func (e *Env) putBuf(b *[]byte) {
	if cap(*b) > 2*MaxChunkSize {
		return
	}
	e.bufPool.Put(b)
}
