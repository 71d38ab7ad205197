package store

import "testing"

// TestAllocReuseTakesDirtyFirst: an extent to be written whole takes
// space copy-on-write released (dirty) before space never written, of
// every shape the chunk sizes make (a 64 KiB chunk, one encrypted to 17
// units, a 1 MiB chunk of whole words); what a zeroed allocation needs
// is not changed (alloc still goes next-fit); the dirty count follows.
func TestAllocReuseTakesDirtyFirst(t *testing.T) {
	for _, n := range []int64{16, 17, 256} {
		a := newAllocator(dataStart, 64*unitSize*64)
		var exts []extent
		for i := 0; i < 4; i++ {
			off, _, err := a.alloc(n * unitSize)
			if err != nil {
				t.Fatal(err)
			}
			exts = append(exts, extent{off: off, length: n * unitSize, zero: true})
		}
		a.releaseDirty(exts[1:3])
		if a.ndirty != 2*n {
			t.Fatalf("n=%d: %d dirty units after releasing two extents dirty, want %d", n, a.ndirty, 2*n)
		}
		for i := 0; i < 2; i++ {
			off, dirty, err := a.allocReuse(n * unitSize)
			if err != nil {
				t.Fatal(err)
			}
			if !dirty || (off != exts[1].off && off != exts[2].off) {
				t.Fatalf("n=%d: allocReuse took %d (dirty %v), want one of the released %d and %d", n, off, dirty, exts[1].off, exts[2].off)
			}
		}
		if a.ndirty != 0 {
			t.Fatalf("n=%d: %d dirty units left", n, a.ndirty)
		}
		// No dirty space left: it takes fresh space, as alloc does.
		off, dirty, err := a.allocReuse(n * unitSize)
		if err != nil || dirty {
			t.Fatalf("n=%d: allocReuse with nothing dirty: %d, %v, %v", n, off, dirty, err)
		}
		for _, e := range exts {
			if off == e.off {
				t.Fatalf("n=%d: allocReuse took %d, which is in use", n, off)
			}
		}
		// A zeroed allocation does not go looking for dirty space.
		a.releaseDirty(exts[:1])
		if off, _, _ := a.alloc(n * unitSize); off == exts[0].off {
			t.Fatalf("n=%d: alloc took the dirty extent at once; next-fit expected", n)
		}
		if a.used != 5*n {
			t.Fatalf("n=%d: %d units used, want %d", n, a.used, 5*n)
		}
	}
}

// TestAllocReuseFragments: dirty runs shorter than the request are
// skipped, and every unit is handed out once.
func TestAllocReuseFragments(t *testing.T) {
	a := newAllocator(dataStart, 64*unitSize*16)
	var small []extent
	for i := 0; i < 8; i++ {
		off, _, err := a.alloc(4 * unitSize)
		if err != nil {
			t.Fatal(err)
		}
		small = append(small, extent{off: off, length: 4 * unitSize})
	}
	// Every other one: dirty holes of 4 units between used ones.
	a.releaseDirty([]extent{small[0], small[2], small[4], small[6]})
	off, dirty, err := a.allocReuse(8 * unitSize)
	if err != nil || dirty {
		t.Fatalf("8 units among 4-unit dirty holes: %d, dirty %v, %v", off, dirty, err)
	}
	seen := map[int64]bool{}
	for {
		off, _, err := a.allocReuse(4 * unitSize)
		if err != nil {
			break
		}
		if seen[off] {
			t.Fatalf("unit %d handed out twice", off)
		}
		seen[off] = true
	}
	if a.ndirty != 0 || a.used != a.units {
		t.Fatalf("pool full: %d dirty, %d of %d used", a.ndirty, a.used, a.units)
	}
}
