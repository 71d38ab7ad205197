package gateway

import (
	"context"
	"testing"
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
