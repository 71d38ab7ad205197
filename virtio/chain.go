package virtio

import (
	"errors"
	"fmt"
)

// errChain marks a descriptor chain that breaks the rules: a loop, more
// descriptors than allowed, an index out of range, a bad indirect table, a
// device-readable buffer after a device-writable one, or an address outside
// shared memory. The request fails with VIRTIO_BLK_S_IOERR when its status
// byte can be found, and with a zero-length used element otherwise.
var errChain = errors.New("virtio: bad descriptor chain")

// chain is one request's buffers, translated: device-readable bytes in rd,
// device-writable bytes in wr, in chain order.
type chain struct {
	rd, wr   [][]byte
	raw      []desc // the descriptors, copied out of shared memory
	complete bool   // raw holds the whole chain (the walk found its end)
}

// walkChain follows the chain that starts at head in r's descriptor table
// and translates its buffers through mem. maxLen bounds the number of
// descriptors (direct and indirect together); it is what stops loops.
// maxSegs bounds the number of iov pieces. On error c.wr still holds what
// was translated; when the walk found the chain's end (c.complete), the
// caller can still report the failure through the status byte (see
// failStatus).
func walkChain(c *chain, r *deviceRing, mem *guestMemory, head uint16, maxLen, maxSegs int) error {
	c.rd, c.wr, c.raw, c.complete = c.rd[:0], c.wr[:0], c.raw[:0], false
	if err := collectChain(c, r, mem, head, maxLen); err != nil {
		return err
	}
	c.complete = true
	var err error
	seenWrite := false
	for i, d := range c.raw {
		if d.flags&descFlagWrite != 0 {
			seenWrite = true
			if c.wr, err = mem.appendGPA(c.wr, d.addr, uint64(d.len), maxSegs); err != nil {
				return fmt.Errorf("%w: descriptor %d: %w", errChain, i, err)
			}
			continue
		}
		if seenWrite {
			return fmt.Errorf("%w: device-readable descriptor %d after a device-writable one", errChain, i)
		}
		if c.rd, err = mem.appendGPA(c.rd, d.addr, uint64(d.len), maxSegs); err != nil {
			return fmt.Errorf("%w: descriptor %d: %w", errChain, i, err)
		}
	}
	return nil
}

// collectChain copies the chain's descriptors into c.raw, following at most
// one indirect table, and stops after maxLen descriptors.
func collectChain(c *chain, r *deviceRing, mem *guestMemory, head uint16, maxLen int) error {
	table, size := r.desc, r.n
	idx := int(head)
	indirect := false
	for steps := 0; ; steps++ {
		if steps > maxLen {
			return fmt.Errorf("%w: longer than %d descriptors (loop?)", errChain, maxLen)
		}
		if idx >= size {
			return fmt.Errorf("%w: descriptor index %d out of range (table of %d)", errChain, idx, size)
		}
		d := readDesc(table, idx)
		if d.flags&descFlagIndirect != 0 {
			switch {
			case !r.indirect:
				return fmt.Errorf("%w: indirect descriptor without VIRTIO_F_INDIRECT_DESC", errChain)
			case indirect:
				return fmt.Errorf("%w: nested indirect table", errChain)
			case d.flags&descFlagNext != 0:
				return fmt.Errorf("%w: indirect descriptor with NEXT", errChain)
			case d.len == 0 || d.len%descSize != 0:
				return fmt.Errorf("%w: indirect table of %d bytes", errChain, d.len)
			case int(d.len/descSize) > maxLen:
				return fmt.Errorf("%w: indirect table of %d entries (max %d)", errChain, d.len/descSize, maxLen)
			}
			t, err := mem.gpa(d.addr, uint64(d.len))
			if err != nil {
				return fmt.Errorf("%w: indirect table: %w", errChain, err)
			}
			if len(c.raw) > 0 {
				// The spec allows an indirect descriptor only as the
				// whole chain; Linux and QEMU never mix them.
				return fmt.Errorf("%w: indirect descriptor after direct ones", errChain)
			}
			table, size, idx, indirect = t, int(d.len/descSize), 0, true
			continue
		}
		if len(c.raw) >= maxLen {
			return fmt.Errorf("%w: longer than %d descriptors (loop?)", errChain, maxLen)
		}
		c.raw = append(c.raw, d)
		if d.flags&descFlagNext == 0 {
			return nil
		}
		idx = int(d.next)
	}
}

// statusByte returns the last device-writable byte of a translated chain,
// where virtio-blk puts the status, or nil if the chain has none.
func (c *chain) statusByte() []byte {
	for i := len(c.wr) - 1; i >= 0; i-- {
		if b := c.wr[i]; len(b) > 0 {
			return b[len(b)-1:]
		}
	}
	return nil
}

// failStatus locates the status byte of a chain whose walk failed after its
// end was found: the last byte of the last descriptor, if that descriptor is
// device-writable and its last byte lies in shared memory. It returns nil
// otherwise (loops, bad indices, a readable tail).
func (c *chain) failStatus(mem *guestMemory) []byte {
	if !c.complete || len(c.raw) == 0 {
		return nil
	}
	d := c.raw[len(c.raw)-1]
	last := d.addr + uint64(d.len) - 1
	if d.flags&descFlagWrite == 0 || d.len == 0 || last < d.addr {
		return nil
	}
	b, err := mem.gpa(last, 1)
	if err != nil {
		return nil
	}
	return b
}
