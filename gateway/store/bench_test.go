package store

import (
	"context"
	mrand "math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/filter"
)

// BenchmarkWrite1M: 1 MiB writes over a 64 MiB volume on a pool file,
// plain and through each transform (copy-on-write).
func BenchmarkWrite1M(b *testing.B) {
	env := testEnv(b)
	for _, name := range benchChains {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			v, f := benchVolume(b, env, name)
			p := text(1, MiB)
			b.SetBytes(MiB)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.WriteAtWith(ctx, 0, p, int64(i%64)*MiB, false, f); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchChains are the write benchmarks' chains, as bench/filters.sh's
// policies: none, noop, zstd level 1, lz4, aes, crc.
var benchChains = []string{"plain", "noop", "compression:level=1", "compression:algo=lz4", "encryption", "checksum"}

// benchVolume is a 64 MiB volume on a 1 GiB pool file, closed with the
// benchmark, and the filters of chain name ("plain": none).
func benchVolume(b *testing.B, env *filter.Env, name string) (*Volume, Filters) {
	dir := b.TempDir()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 1<<30)
	if err != nil {
		b.Fatal(err)
	}
	s, err := Open(context.Background(), filepath.Join(dir, "meta"), dev, Options{Filters: env})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		s.Close()
		dev.Close()
	})
	v, err := s.CreateVolume(context.Background(), CreateOptions{Tenant: "acme", Name: "db", Size: 64 * MiB})
	if err != nil {
		b.Fatal(err)
	}
	var f Filters
	if name != "plain" {
		f.Chain = chainOf(b, env, name)
	}
	return v, f
}

// fillVolume writes the whole of a benchVolume through f, 1 MiB at a
// time, so that reads and overwrites find data.
func fillVolume(b *testing.B, v *Volume, f Filters) {
	p := text(1, MiB)
	for off := int64(0); off < 64*MiB; off += MiB {
		if err := v.WriteAtWith(context.Background(), 0, p, off, false, f); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRead4K: 4 KiB random reads of plain and transformed chunks
// (noop and encrypted chunks are read by the sector, see filter.Sectors).
func BenchmarkRead4K(b *testing.B) {
	env := testEnv(b)
	for _, name := range []string{"plain", "noop", "encryption"} {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			v, f := benchVolume(b, env, name)
			fillVolume(b, v, f)
			buf := make([]byte, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := v.ReadAt(ctx, 0, buf, int64(i*7919%16384)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWrite4K: 4 KiB random writes from 16 goroutines (as QD16)
// over a 64 MiB volume, plain and through transforms (each a
// read-modify-write of the chunk by copy-on-write): issue 22's first row.
func BenchmarkWrite4K(b *testing.B) {
	env := testEnv(b)
	for _, name := range benchChains {
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			v, f := benchVolume(b, env, name)
			fillVolume(b, v, f)
			var seed atomic.Uint64
			b.SetBytes(4096)
			b.SetParallelism(8) // 16 writers on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				r := mrand.New(mrand.NewPCG(seed.Add(1), 3))
				buf := text(r.Uint64(), 4096)
				for pb.Next() {
					if err := v.WriteAtWith(ctx, 0, buf, int64(r.IntN(16384))*4096, false, f); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
