package virtio

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// maxRegionBytes bounds one shared region (size + mmap offset): 64 TiB.
// It keeps every sum below in range of int and uint64.
const maxRegionBytes = 1 << 46

// errBadAddr marks an address or length from the peer that does not lie in
// its shared memory.
var errBadAddr = errors.New("virtio: address outside shared memory")

// region is one piece of the front-end's memory mapped into ours.
type region struct {
	memRegion
	mapping []byte // the whole mmap; nil when data wraps memory we do not own
	data    []byte // the region's bytes: data[0] is at GPA and UVA
	fd      int    // a duplicate of the region's fd (for a handover); -1 when none
}

// guestMemory is the front-end's memory table as the back-end sees it. It
// is immutable once built: the connection builds a new one and swaps it in
// while every ring is stopped.
type guestMemory struct {
	regions []*region
}

// mapRegion maps size bytes of fd at mmap offset off. Like libvhost-user it
// maps from file offset 0, so offsets need no page (or huge page) alignment.
// The fd's size is checked first: touching a page past the end of a file
// raises SIGBUS.
func mapRegion(r memRegion, fd int) (*region, error) {
	if err := checkRegion(r); err != nil {
		return nil, err
	}
	length := r.MmapOffset + r.Size
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("virtio: fstat memory fd: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && uint64(st.Size) < length {
		return nil, fmt.Errorf("%w: region [%#x, +%#x) past the end of its %d-byte file", errBadAddr, r.MmapOffset, r.Size, st.Size)
	}
	m, err := unix.Mmap(fd, 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("virtio: mmap region gpa %#x size %#x: %w", r.GPA, r.Size, err)
	}
	// Kept so a planned handover can give the region to the next process.
	keep, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Munmap(m)
		return nil, fmt.Errorf("virtio: keep region fd: %w", err)
	}
	return &region{memRegion: r, mapping: m, data: m[r.MmapOffset:length:length], fd: keep}, nil
}

func checkRegion(r memRegion) error {
	switch {
	case r.Size == 0:
		return fmt.Errorf("%w: empty region at gpa %#x", errBadAddr, r.GPA)
	case r.Size > maxRegionBytes || r.MmapOffset > maxRegionBytes || r.Size+r.MmapOffset > maxRegionBytes:
		return fmt.Errorf("%w: region size %#x offset %#x too large", errBadAddr, r.Size, r.MmapOffset)
	case r.GPA+r.Size < r.GPA || r.UVA+r.Size < r.UVA:
		return fmt.Errorf("%w: region gpa %#x uva %#x size %#x wraps", errBadAddr, r.GPA, r.UVA, r.Size)
	}
	return nil
}

func (r *region) unmap() {
	if r.mapping != nil {
		unix.Munmap(r.mapping)
		r.mapping, r.data = nil, nil
	}
	if r.fd > 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// with returns a new table with r added; regions may not overlap in GPA.
func (g *guestMemory) with(r *region) (*guestMemory, error) {
	n := &guestMemory{}
	if g != nil {
		for _, o := range g.regions {
			if r.GPA < o.GPA+o.Size && o.GPA < r.GPA+r.Size {
				return nil, fmt.Errorf("%w: region gpa [%#x, +%#x) overlaps [%#x, +%#x)", errBadAddr, r.GPA, r.Size, o.GPA, o.Size)
			}
		}
		n.regions = append(n.regions, g.regions...)
	}
	n.regions = append(n.regions, r)
	return n, nil
}

// without returns a new table without the region matching r (GPA, size and
// UVA, as REM_MEM_REG asks) and the removed region, or nil if none matches.
func (g *guestMemory) without(r memRegion) (*guestMemory, *region) {
	if g == nil {
		return nil, nil
	}
	n := &guestMemory{}
	var gone *region
	for _, o := range g.regions {
		if gone == nil && o.GPA == r.GPA && o.Size == r.Size && o.UVA == r.UVA {
			gone = o
			continue
		}
		n.regions = append(n.regions, o)
	}
	return n, gone
}

func (g *guestMemory) count() int {
	if g == nil {
		return 0
	}
	return len(g.regions)
}

func (g *guestMemory) unmapAll() {
	if g == nil {
		return
	}
	for _, r := range g.regions {
		r.unmap()
	}
}

// gpa returns the n bytes at guest-physical address addr, which must lie in
// one region.
func (g *guestMemory) gpa(addr, n uint64) ([]byte, error) {
	return g.lookup(addr, n, false)
}

// uva returns the n bytes at front-end virtual address addr (ring addresses
// in SET_VRING_ADDR), which must lie in one region.
func (g *guestMemory) uva(addr, n uint64) ([]byte, error) {
	return g.lookup(addr, n, true)
}

func (g *guestMemory) lookup(addr, n uint64, user bool) ([]byte, error) {
	if addr+n < addr {
		return nil, fmt.Errorf("%w: [%#x, +%#x) wraps", errBadAddr, addr, n)
	}
	if g != nil {
		for _, r := range g.regions {
			base := r.GPA
			if user {
				base = r.UVA
			}
			if addr >= base && addr-base <= r.Size && n <= r.Size-(addr-base) {
				off := addr - base
				return r.data[off : off+n : off+n], nil
			}
		}
	}
	return nil, fmt.Errorf("%w: [%#x, +%#x)", errBadAddr, addr, n)
}

// appendGPA appends the guest-physical range [addr, addr+n) to iov as one
// slice per region it touches, so a buffer may span adjacent regions. It
// fails if any byte is outside every region or iov would exceed maxSegs.
func (g *guestMemory) appendGPA(iov [][]byte, addr, n uint64, maxSegs int) ([][]byte, error) {
	if addr+n < addr {
		return iov, fmt.Errorf("%w: [%#x, +%#x) wraps", errBadAddr, addr, n)
	}
	for n > 0 {
		var r *region
		if g != nil {
			for _, o := range g.regions {
				if addr >= o.GPA && addr-o.GPA < o.Size {
					r = o
					break
				}
			}
		}
		if r == nil {
			return iov, fmt.Errorf("%w: [%#x, +%#x)", errBadAddr, addr, n)
		}
		if len(iov) >= maxSegs {
			return iov, fmt.Errorf("%w: buffer split into more than %d pieces", errBadAddr, maxSegs)
		}
		off := addr - r.GPA
		take := min(n, r.Size-off)
		iov = append(iov, r.data[off:off+take:off+take])
		addr += take
		n -= take
	}
	return iov, nil
}

// iov helpers: an iov is a list of byte slices read or written in order.

func iovLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

// iovRead copies iov[off:] into dst and returns how many bytes it copied.
func iovRead(dst []byte, iov [][]byte, off int) int {
	done := 0
	for _, b := range iov {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		done += copy(dst[done:], b[off:])
		off = 0
		if done == len(dst) {
			break
		}
	}
	return done
}

// iovWrite copies src into iov starting at off and returns how many bytes
// it copied.
func iovWrite(iov [][]byte, off int, src []byte) int {
	done := 0
	for _, b := range iov {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		done += copy(b[off:], src[done:])
		off = 0
		if done == len(src) {
			break
		}
	}
	return done
}

// iovContig returns iov[off:off+n] when those bytes lie in one slice
// (n > 0).
func iovContig(iov [][]byte, off, n int) ([]byte, bool) {
	for _, b := range iov {
		if off >= len(b) {
			off -= len(b)
			continue
		}
		if off+n <= len(b) {
			return b[off : off+n : off+n], true
		}
		return nil, false
	}
	return nil, false
}
