package fsns

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway/device"
	"github.com/sluice-storage/sluice/gateway/store"
)

// BenchmarkRanges measures the store's side of bench/ranges.sh on a sparse
// pool file and an on-disk badger, without FUSE: fallocate of 1 GiB,
// truncate of that file to 0, and the unlink (purge) of a 2 GiB file.
const GiB = 1 << 30

func BenchmarkRanges(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	dev, err := device.OpenFile(filepath.Join(dir, "pool"), 8*GiB)
	if err != nil {
		b.Fatal(err)
	}
	s, err := store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Hour, Namespaces: Maker{}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	v, err := s.CreateVolume(ctx, store.CreateOptions{Tenant: "t", Name: "fs", Kind: store.KindFS, Size: 6 * GiB})
	if err != nil {
		b.Fatal(err)
	}
	f := Of(v)
	open := func(name string) uint64 {
		a, err := f.CreateOpen(ctx, 1, name, NewInode{Mode: syscall.S_IFREG | 0o644})
		if err != nil {
			b.Fatal(err)
		}
		return a.Ino
	}
	b.Run("fallocate-1G", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			ino := open("a")
			b.StartTimer()
			if err := f.Fallocate(ctx, ino, 0, GiB, 0); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			f.Release(ctx, ino)
			if err := f.Unlink(ctx, 1, "a"); err != nil {
				b.Fatal(err)
			}
			s.SyncMeta()
			b.StartTimer()
		}
	})
	b.Run("truncate-1G-to-0", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			ino := open("a")
			if err := f.Fallocate(ctx, ino, 0, GiB, 0); err != nil {
				b.Fatal(err)
			}
			sz := int64(0)
			b.StartTimer()
			if _, err := f.SetAttr(ctx, ino, SetAttr{Size: &sz}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			f.Release(ctx, ino)
			if err := f.Unlink(ctx, 1, "a"); err != nil {
				b.Fatal(err)
			}
			s.SyncMeta()
			b.StartTimer()
		}
	})
	b.Run("unlink-2G", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			ino := open("a")
			if err := f.Fallocate(ctx, ino, 0, 2*GiB, 0); err != nil {
				b.Fatal(err)
			}
			f.Release(ctx, ino)
			b.StartTimer()
			if err := f.Unlink(ctx, 1, "a"); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			s.SyncMeta()
			b.StartTimer()
		}
	})
}
