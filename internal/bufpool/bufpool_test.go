package bufpool

import "testing"

func TestGetPut(t *testing.T) {
	var p Pool
	for _, n := range []int{0, 1, 4096, 4097, 1 << 20, 3<<20 + 5} {
		b := p.Get(n)
		if len(b.B) != n || cap(b.B) < n {
			t.Fatalf("Get(%d): len %d cap %d", n, len(b.B), cap(b.B))
		}
		if n > 4096 && cap(b.B)&(cap(b.B)-1) != 0 {
			t.Fatalf("Get(%d): cap %d is not a power of two", n, cap(b.B))
		}
		p.Put(b)
	}
	p.Put(nil)
	if b := p.Get(1 << 31); len(b.B) != 1<<31 || b.class != -1 {
		t.Fatal("a buffer above the largest class is not pooled")
	}
}

func TestGrow(t *testing.T) {
	// Room enough: the same array, longer.
	b := make([]byte, 3, 10)
	copy(b, "abc")
	g := Grow(b, 5)
	if len(g) != 8 || cap(g) != 10 || &g[0] != &b[0] || string(g[:3]) != "abc" {
		t.Fatalf("Grow within capacity: len %d cap %d, same array %v, %q", len(g), cap(g), &g[0] == &b[0], g[:3])
	}
	// Short: a new array of exactly the length, the old bytes copied.
	g = Grow(b, 20)
	if len(g) != 23 || cap(g) != 23 || &g[0] == &b[0] || string(g[:3]) != "abc" {
		t.Fatalf("Grow past capacity: len %d cap %d, same array %v, %q", len(g), cap(g), &g[0] == &b[0], g[:3])
	}
	if g := Grow(nil, 4); len(g) != 4 {
		t.Fatalf("Grow(nil, 4): len %d", len(g))
	}
}
