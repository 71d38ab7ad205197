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

// BenchmarkFileWrite4K: 4 KiB writes at random 4 KiB offsets of one plain
// file of 64 MiB on a pool file (the store's side of a 4 KiB random-write
// fio job on a mount): "written" overwrites a file laid out by writing it
// (in place), "sparse" writes into a file that is one hole at first (each
// chunk allocated at its first write), "small" rewrites a 40 KiB file (a
// short chunk, in place).
func BenchmarkFileWrite4K(b *testing.B) {
	for _, kind := range []string{"written", "sparse", "small"} {
		b.Run(kind, func(b *testing.B) {
			ctx := context.Background()
			dir := b.TempDir()
			dev, err := device.OpenFile(filepath.Join(dir, "pool"), 1<<30)
			if err != nil {
				b.Fatal(err)
			}
			s, err := store.Open(ctx, filepath.Join(dir, "meta"), dev, store.Options{SyncInterval: time.Second, Namespaces: Maker{}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				s.Close()
				dev.Close()
			})
			v, err := s.CreateVolume(ctx, store.CreateOptions{Tenant: "t", Name: "fs", Kind: store.KindFS, Size: 512 * MiB})
			if err != nil {
				b.Fatal(err)
			}
			f := Of(v)
			a, err := f.Create(ctx, RootIno, "f", NewInode{Mode: syscall.S_IFREG | 0o644})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Open(ctx, a.Ino); err != nil {
				b.Fatal(err)
			}
			size := int64(64 * MiB)
			switch kind {
			case "written":
				for off := int64(0); off < size; off += MiB {
					if err := v.WriteAt(ctx, a.Ino, pattern(1, MiB), off, false); err != nil {
						b.Fatal(err)
					}
				}
			case "sparse":
				if _, err := f.SetAttr(ctx, a.Ino, SetAttr{Size: &size}); err != nil {
					b.Fatal(err)
				}
			case "small":
				size = 40 << 10
				if err := v.WriteAt(ctx, a.Ino, pattern(1, int(size)), 0, false); err != nil {
					b.Fatal(err)
				}
			}
			p := pattern(2, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				off := int64(i*7919) % (size / 4096) * 4096
				if err := v.WriteAt(ctx, a.Ino, p, off, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
