package device

import "sync"

const memPage = 64 << 10

// Memory is a sparse in-memory Device for tests: pages exist only once
// written, and Discard of whole pages frees them.
type Memory struct {
	mu    sync.RWMutex
	size  int64
	pages map[int64][]byte
}

// NewMemory returns an empty memory device of the given size.
func NewMemory(size int64) *Memory {
	return &Memory{size: size, pages: make(map[int64][]byte)}
}

// ReadAt reads len(p) bytes at off; unwritten bytes read as zeros.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, in := pos/memPage, pos%memPage
		n := min(len(p)-done, int(memPage-in))
		if page := m.pages[pg]; page != nil {
			copy(p[done:done+n], page[in:])
		} else {
			clear(p[done : done+n])
		}
		done += n
	}
	return len(p), nil
}

// WriteAt writes p at off.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, in := pos/memPage, pos%memPage
		n := min(len(p)-done, int(memPage-in))
		page := m.pages[pg]
		if page == nil {
			page = make([]byte, memPage)
			m.pages[pg] = page
		}
		copy(page[in:], p[done:done+n])
		done += n
	}
	return len(p), nil
}

// Flush does nothing: memory has nothing to make durable.
func (m *Memory) Flush() error { return nil }

// Discard zeroes the range and frees whole pages.
func (m *Memory) Discard(off, length int64) error {
	if err := checkRange(off, length, m.size); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for done := int64(0); done < length; {
		pos := off + done
		pg, in := pos/memPage, pos%memPage
		n := min(length-done, memPage-in)
		if page := m.pages[pg]; page != nil {
			if n == memPage {
				delete(m.pages, pg)
			} else {
				clear(page[in : in+n])
			}
		}
		done += n
	}
	return nil
}

// DiscardZeroes is true: discarded ranges read as zeros.
func (m *Memory) DiscardZeroes() bool { return true }

// Size is the device size.
func (m *Memory) Size() int64 { return m.size }

// Allocated is the bytes held in pages.
func (m *Memory) Allocated() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.pages)) * memPage
}

// Close drops every page.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.pages = nil
	m.mu.Unlock()
	return nil
}
