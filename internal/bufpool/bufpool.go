// Package bufpool hands out byte slices by power-of-two size class, so that
// the doors' hot paths (NBD request buffers, virtio bounce buffers) do not
// allocate. A slice comes wrapped in a *Buf so that Put does not allocate
// either. Grow lengthens a slice without append's over-allocation (the
// filters and the store grow chunk buffers with it).
package bufpool

import (
	"math/bits"
	"sync"
)

// Pool is a set of sync.Pools, one per size class. The zero value is ready.
type Pool struct {
	classes [31]sync.Pool // class i holds buffers of cap 1<<i
}

// Buf is one pooled slice; B has the length asked for.
type Buf struct {
	B     []byte
	class int8 // -1: too large to pool
}

const minClass = 12 // 4 KiB

// Get returns a buffer of length n (contents unspecified).
func (p *Pool) Get(n int) *Buf {
	class := minClass
	if n > 1<<minClass {
		class = bits.Len(uint(n - 1))
	}
	if class >= len(p.classes) {
		return &Buf{B: make([]byte, n), class: -1}
	}
	if v := p.classes[class].Get(); v != nil {
		b := v.(*Buf)
		b.B = b.B[:n]
		return b
	}
	return &Buf{B: make([]byte, n, 1<<class), class: int8(class)}
}

// Put returns b to the pool; nil is ignored. b must not be used after.
func (p *Pool) Put(b *Buf) {
	if b == nil || b.class < 0 {
		return
	}
	p.classes[b.class].Put(b)
}

// Grow returns b extended by n bytes of length (contents of the new bytes
// unspecified). It reallocates, to exactly len(b)+n, only when b's capacity
// is short: a chunk-sized buffer does not grow by append's doubling.
func Grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n)
	copy(nb, b)
	return nb
}
