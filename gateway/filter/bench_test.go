package filter

import "testing"

// Per-filter throughput on 64 KiB chunks (MB/s per core: run with -cpu 1).
//
//	go test -run '^$' -bench . -cpu 1 ./gateway/filter/
func BenchmarkFilters(b *testing.B) {
	env := NewEnv(testKeyring(b))
	defer env.Close()
	for _, tc := range []struct {
		name    string
		filters []string
		params  map[string]string
	}{
		{"noop", []string{"noop"}, nil},
		{"checksum", []string{"checksum"}, nil},
		{"encryption", []string{"encryption"}, nil},
		{"zstd-1", []string{"compression"}, map[string]string{"level": "1"}},
		{"zstd-3", []string{"compression"}, nil},
		{"lz4", []string{"compression"}, map[string]string{"algo": "lz4"}},
		{"lz4+encryption+checksum", []string{"compression", "encryption", "checksum"}, map[string]string{"algo": "lz4"}},
	} {
		var fs []*Filter
		for i, n := range tc.filters {
			var p map[string]string
			if i == 0 {
				p = tc.params
			}
			fs = append(fs, mustFilter(b, env, n, p))
		}
		c := mustChain(b, fs...)
		plain := compressible(64 << 10)
		stored, rec, err := c.Forward(ctxA, nil, plain)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name+"/write", func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			dst := make([]byte, 0, 2*len(plain))
			for b.Loop() {
				if _, _, err := c.Forward(ctxA, dst[:0], plain); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/read", func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			dst := make([]byte, 0, len(plain))
			for b.Loop() {
				if _, err := env.Reverse(ctxA, dst[:0], stored, rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCacheGet(b *testing.B) {
	c := NewCache(64 << 20)
	data := make([]byte, 64<<10)
	for i := uint64(0); i < 512; i++ {
		_, _, t := c.Get(key(i), nil)
		c.Put(key(i), data, t)
	}
	dst := make([]byte, 0, len(data))
	b.SetBytes(int64(len(data)))
	i := uint64(0)
	for b.Loop() {
		c.Get(key(i%512), dst[:0])
		i++
	}
}
