package filter

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Chain is an ordered pipeline of filters for one rule: the transforms that
// run on every chunk written (Forward, in order) and the controls the
// gateway applies to requests. Reads are undone from each chunk's record
// (Env.Reverse), not from a Chain.
//
// A nil or empty Chain is valid and means plain chunks: Plain reports true
// and the store takes its unfiltered path without calling Forward. Chains
// are immutable and safe for concurrent use.
type Chain struct {
	transforms []*Filter // in write order, checksum last
	controls   []*Filter
}

// NewChain builds a chain from filters in policy order. Transforms keep
// their order except checksum, which always runs last so that its crc
// covers the stored bytes. A filter may appear once; at most MaxSteps
// transforms. Errors wrap ErrChain.
func NewChain(filters ...*Filter) (*Chain, error) {
	c := &Chain{}
	var sum *Filter
	seen := map[string]bool{}
	for _, f := range filters {
		if f == nil {
			return nil, fmt.Errorf("nil filter: %w", ErrChain)
		}
		if seen[f.Name()] {
			return nil, fmt.Errorf("filter %s appears twice: %w", f.Name(), ErrChain)
		}
		seen[f.Name()] = true
		switch {
		case f.Kind() == Control:
			c.controls = append(c.controls, f)
		case f.spec.ID == idChecksum:
			sum = f
		default:
			c.transforms = append(c.transforms, f)
		}
	}
	if sum != nil {
		c.transforms = append(c.transforms, sum)
	}
	if len(c.transforms) > MaxSteps {
		return nil, fmt.Errorf("%d transforms, at most %d: %w", len(c.transforms), MaxSteps, ErrChain)
	}
	return c, nil
}

// Plain reports whether the chain changes nothing on disk (no transforms):
// chunks are stored as written, with no record.
func (c *Chain) Plain() bool { return c == nil || len(c.transforms) == 0 }

// Identity reports whether the chain's transforms all store bytes as
// they are and record nothing that depends on them (noop steps only): a
// chunk it wrote can be overwritten in place by it, its record staying
// true.
func (c *Chain) Identity() bool {
	if c.Plain() {
		return false
	}
	for _, f := range c.transforms {
		if f.spec.ID != idNoop {
			return false
		}
	}
	return true
}

// Filters returns the chain's filters: transforms in the order they run on
// write, then controls.
func (c *Chain) Filters() []*Filter {
	if c == nil {
		return nil
	}
	out := make([]*Filter, 0, len(c.transforms)+len(c.controls))
	out = append(out, c.transforms...)
	return append(out, c.controls...)
}

// Control returns the control filter with that name (cache, bandwidth,
// iops), or nil.
func (c *Chain) Control(name string) *Filter {
	if c == nil {
		return nil
	}
	for _, f := range c.controls {
		if f.Name() == name {
			return f
		}
	}
	return nil
}

// Has reports whether the chain has a filter of that name.
func (c *Chain) Has(name string) bool {
	for _, f := range c.Filters() {
		if f.Name() == name {
			return true
		}
	}
	return false
}

// CheckTenant reports whether the chain can run for a tenant: with
// encryption, the tenant needs a key (error wraps ErrNoKey). Call it when a
// policy is set, so that a tenant without a key gets a clear error then and
// not EIO on its next write.
func (c *Chain) CheckTenant(tenant string) error {
	if c == nil {
		return nil
	}
	for _, f := range c.transforms {
		if e, ok := f.tr.(encryption); ok {
			if err := e.env.Keyring().CheckTenant(tenant); err != nil {
				return err
			}
		}
	}
	return nil
}

// String shows the pipeline: "compression(algo=zstd,level=3) | checksum(...)".
func (c *Chain) String() string {
	fs := c.Filters()
	if len(fs) == 0 {
		return "plain"
	}
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = f.String()
	}
	return strings.Join(parts, " | ")
}

// Forward runs the chain's transforms over one chunk's bytes src: it appends
// the bytes to store to dst and returns them with the chain record that
// undoes them. dst must not overlap src. For a Plain chain it appends src
// unchanged and returns a nil record. src may be at most MaxChunkSize bytes.
func (c *Chain) Forward(cc ChunkContext, dst, src []byte) (stored, record []byte, err error) {
	if c.Plain() {
		return append(dst, src...), nil, nil
	}
	if len(src) > MaxChunkSize {
		return dst, nil, fmt.Errorf("%s: %d bytes, at most %d: %w", cc, len(src), MaxChunkSize, ErrTooLarge)
	}
	env := c.transforms[0].env
	scratch := [2]*[]byte{env.getBuf(), env.getBuf()}
	defer env.putBuf(scratch[0])
	defer env.putBuf(scratch[1])

	record = make([]byte, recordHeaderLen, recordHeaderLen+len(c.transforms)*(2+17))
	record[0] = RecordVersion
	record[1] = byte(len(c.transforms))
	binary.BigEndian.PutUint32(record[2:], uint32(len(src)))

	in, inBuf := src, -1 // inBuf: the scratch buffer holding in, -1 for src
	passed := false      // the last step passed its input through
	last := len(c.transforms) - 1
	for i, f := range c.transforms {
		ob := 0
		if inBuf == 0 {
			ob = 1
		}
		out := (*scratch[ob])[:0]
		if i == last {
			out = dst
		}
		at := len(record)
		record = append(record, f.spec.ID, 0)
		got, rec, err := f.tr.Forward(cc, out, in, record)
		if err != nil {
			return dst, nil, fmt.Errorf("%s: %s: %w", cc, f.Name(), err)
		}
		if n := len(rec) - at - 2; n < 0 || n > 255 {
			return dst, nil, fmt.Errorf("%s: %s recorded %d argument bytes: %w", cc, f.Name(), n, ErrChain)
		}
		rec[at+1] = byte(len(rec) - at - 2)
		record = rec
		passed = same(got, in)
		if !passed && i != last {
			*scratch[ob] = got // keep a grown buffer for the pool
			inBuf = ob
		}
		in = got
	}
	if passed {
		in = append(dst, in...)
	}
	return in, record, nil
}

// same reports whether a and b are the same bytes in memory.
func same(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Reverse undoes a chunk's chain record: stored is the chunk's bytes as
// read, record its chain record. It appends the chunk's plain bytes to dst
// (which must not overlap stored) and returns them. An empty record means a plain chunk: stored is appended
// as it is. Integrity failures wrap ErrChecksum, ErrAuth, ErrCorrupt,
// ErrKeyMismatch or ErrRecord; a tenant without a key gives ErrNoKey.
// Reverse never panics on bad input.
func (e *Env) Reverse(cc ChunkContext, dst, stored, record []byte) ([]byte, error) {
	if len(record) == 0 {
		return append(dst, stored...), nil
	}
	r, err := ParseRecord(record)
	if err != nil {
		return dst, fmt.Errorf("%s: %w", cc, err)
	}
	if len(stored) > MaxStored(MaxChunkSize) {
		return dst, fmt.Errorf("%s: %d stored bytes: %w", cc, len(stored), ErrTooLarge)
	}
	scratch := [2]*[]byte{e.getBuf(), e.getBuf()}
	defer e.putBuf(scratch[0])
	defer e.putBuf(scratch[1])
	in, inBuf := stored, -1
	passed := false
	for i := len(r.Steps) - 1; i >= 0; i-- {
		st := r.Steps[i]
		s, ok := byID(st.ID)
		if !ok {
			return dst, fmt.Errorf("%s: filter id %d: %w", cc, st.ID, ErrRecord)
		}
		ob := 0
		if inBuf == 0 {
			ob = 1
		}
		out := (*scratch[ob])[:0]
		if i == 0 {
			out = dst
		}
		got, err := s.reverse(e, cc, out, in, st.Args)
		if err != nil {
			return dst, fmt.Errorf("%s: %s: %w", cc, s.Name, err)
		}
		passed = same(got, in)
		if !passed && i != 0 {
			*scratch[ob] = got
			inBuf = ob
		}
		in = got
	}
	n := len(in) // the plain bytes: in, or what the last step appended to dst
	if !passed {
		n -= len(dst)
	}
	if n != int(r.PlainLen) {
		return dst, fmt.Errorf("%s: undone chunk has %d bytes, record says %d: %w", cc, n, r.PlainLen, ErrCorrupt)
	}
	if passed {
		in = append(dst, in...)
	}
	return in, nil
}

// ChainFor rebuilds a chain that transforms chunks as record says one was:
// the same filters in the same order, the algorithms the record names, and
// default parameters otherwise (a zstd level is not recorded: 3). The store
// uses it to rewrite part of a transformed chunk where no policy is at hand
// (a partial discard, a truncate), so that an encrypted chunk stays
// encrypted. Errors wrap ErrRecord.
func (e *Env) ChainFor(record []byte) (*Chain, error) {
	r, err := ParseRecord(record)
	if err != nil {
		return nil, err
	}
	fs := make([]*Filter, 0, len(r.Steps))
	for _, st := range r.Steps {
		s, ok := byID(st.ID)
		if !ok {
			return nil, fmt.Errorf("filter id %d: %w", st.ID, ErrRecord)
		}
		var params map[string]string
		if st.ID == idCompression && st.Args[0] == compressLZ4 {
			params = map[string]string{"algo": "lz4"}
		}
		f, err := New(e, s.Name, params)
		if err != nil {
			return nil, fmt.Errorf("rebuild %s: %w (%w)", s.Name, err, ErrRecord)
		}
		fs = append(fs, f)
	}
	return NewChain(fs...)
}
