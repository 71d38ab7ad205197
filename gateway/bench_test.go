package gateway

import (
	"context"
	"testing"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// BenchmarkDoPlain: 4 KiB reads and writes through Volume.Do on a volume no
// policy or QoS rule matches (the unfiltered path the NBD benchmarks
// compare with nbdkit).
func BenchmarkDoPlain(b *testing.B) {
	ctx := context.Background()
	g, err := Open(ctx, Config{DataDir: b.TempDir(), PoolSize: 256 << 20, AutomationInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "db", Size: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	for off := int64(0); off < 64<<20; off += 1 << 20 {
		if err := v.Do(ctx, &Request{Op: OpWrite, Buf: make([]byte, 1<<20), Offset: off}); err != nil {
			b.Fatal(err)
		}
	}
	for _, op := range []Op{OpRead, OpWrite} {
		b.Run(op.String(), func(b *testing.B) {
			req := &Request{Op: op, Buf: buf}
			for i := 0; i < b.N; i++ {
				req.Offset = int64(i*7919%16384) * 4096
				if err := v.Do(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkClassifyFile: classifying file requests on a volume with eight
// file rules, from every CPU at once (the file cache; no lock).
func BenchmarkClassifyFile(b *testing.B) {
	ctx := context.Background()
	g, err := Open(ctx, Config{DataDir: b.TempDir(), PoolSize: 256 << 20, AutomationInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Close()
	v, err := g.CreateVolume(ctx, CreateOptions{Tenant: "acme", Name: "fs", Size: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	for _, glob := range []string{"*.log", "*.tmp", "db/*", "a.*", "*.dat", "x*", "cache/*", "*.bak"} {
		if _, err := g.SetQoSRule(ctx, QoSRule{Tenant: "acme", Volume: "fs", File: glob, Limits: qosLimits(1e9)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := &Request{Op: OpWrite, Inode: 1000, Path: "var/log/app.log", Door: DoorFUSE}
		for pb.Next() {
			if v.queueFor(v.route.Load(), req, qos.Write) == nil {
				b.Fatal("app.log matches no rule")
			}
		}
	})
}
