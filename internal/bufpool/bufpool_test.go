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
