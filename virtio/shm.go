package virtio

import (
	"fmt"

	"golang.org/x/sys/unix"
)

const (
	pageSize     = 4096
	hugePageSize = 2 << 20
)

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }

// sharedMemory is the initiator's memfd, mapped into our address space and
// handed to the target with SET_MEM_TABLE.
type sharedMemory struct {
	fd  int
	buf []byte
}

// newSharedMemory creates a memfd of at least size bytes and maps it
// shared, prefaulted. With huge it uses 2 MiB hugetlbfs pages, which SPDK
// needs to DMA into the buffers (the host must have free huge pages:
// /proc/sys/vm/nr_hugepages). The memfd is sealed against shrinking so a
// target can map it without fearing SIGBUS.
func newSharedMemory(size int, huge bool) (*sharedMemory, error) {
	flags := unix.MFD_CLOEXEC
	if huge {
		flags |= unix.MFD_HUGETLB | unix.MFD_HUGE_2MB
		size = alignUp(size, hugePageSize)
	} else {
		flags |= unix.MFD_ALLOW_SEALING
		size = alignUp(size, pageSize)
	}
	fd, err := unix.MemfdCreate("sluice-virtio", flags)
	if err != nil {
		return nil, fmt.Errorf("virtio: memfd_create (hugepages %v): %w", huge, err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("virtio: size shared memory to %d bytes: %w", size, err)
	}
	if !huge {
		unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	}
	buf, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Close(fd)
		if huge {
			return nil, fmt.Errorf("virtio: map %d bytes of huge pages (are enough reserved in /proc/sys/vm/nr_hugepages?): %w", size, err)
		}
		return nil, fmt.Errorf("virtio: map shared memory: %w", err)
	}
	return &sharedMemory{fd: fd, buf: buf}, nil
}

func (m *sharedMemory) close() {
	if m == nil {
		return
	}
	if m.buf != nil {
		unix.Munmap(m.buf)
		m.buf = nil
	}
	if m.fd >= 0 {
		unix.Close(m.fd)
		m.fd = -1
	}
}
