package fsns

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

// BenchmarkNamespace measures the store's side of bench/fuse.sh's metadata
// run (create+open+release, getattr, unlink of empty files) on an on-disk
// badger, without FUSE: what each operation costs the gateway.
func BenchmarkNamespace(b *testing.B) {
	ctx := context.Background()
	s, err := store.Open(ctx, b.TempDir(), device.NewMemory(256*MiB), store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, store.CreateOptions{Tenant: "t", Name: "fs", Kind: store.KindFS, Size: 128 * MiB})
	if err != nil {
		b.Fatal(err)
	}
	f := Of(v)
	run := 0
	// Each sub-benchmark creates its own files, then measures one phase.
	phase := func(name string, setup func(names []string, inos []uint64), op func(name string, ino uint64) error) {
		b.Run(name, func(b *testing.B) {
			run++
			names, inos := make([]string, b.N), make([]uint64, b.N)
			for i := range names {
				names[i] = fmt.Sprintf("r%d.f%07d", run, i)
			}
			setup(names, inos)
			b.ResetTimer()
			for i := range names {
				if err := op(names[i], inos[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	create := func(name string) (uint64, error) {
		a, err := f.CreateOpen(ctx, 1, name, NewInode{Mode: syscall.S_IFREG | 0o644})
		if err != nil {
			return 0, err
		}
		return a.Ino, f.Release(ctx, a.Ino)
	}
	createAll := func(names []string, inos []uint64) {
		for i, n := range names {
			ino, err := create(n)
			if err != nil {
				b.Fatal(err)
			}
			inos[i] = ino
		}
	}
	phase("create", func([]string, []uint64) {}, func(name string, _ uint64) error { _, err := create(name); return err })
	phase("getattr", createAll, func(_ string, ino uint64) error { _, err := f.GetAttr(ctx, ino); return err })
	phase("lookup", createAll, func(name string, _ uint64) error { _, err := f.Lookup(ctx, 1, name); return err })
	phase("unlink", createAll, func(name string, _ uint64) error { return f.Unlink(ctx, 1, name) })
}
