package nbd

import (
	"bytes"
	"context"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
)

// TRIM and WRITE_ZEROES with FUA are durable when the reply arrives, on a
// real gateway volume. The evidence is the pool's used space: the chunk
// they unmap is freed only by the metadata sync that makes the unmap
// durable, and nothing else syncs within the test (the gateway's background
// sync runs once a second).
func TestUnmapFUADurableBeforeReply(t *testing.T) {
	for name, cmd := range map[string]uint16{"trim": cmdTrim, "write_zeroes": cmdWriteZeroes} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			g, err := gateway.Open(ctx, gateway.Config{DataDir: t.TempDir(), PoolSize: 256 << 20,
				AutomationInterval: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() }) // after the server's shutdown
			v, err := g.CreateVolume(ctx, gateway.CreateOptions{Tenant: "tenant", Name: "vol", Size: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			_, sock := startServer(t, memExports{testName: v}, Options{})
			rc := dial(t, sock)
			rc.connect(testName, false)
			chunk := v.Info().ChunkSize
			data := bytes.Repeat([]byte{7}, int(chunk))
			if r := rc.do(cmdFlagFUA, cmdWrite, 0, uint32(chunk), data); r.errno != 0 {
				t.Fatalf("write: errno %d", r.errno)
			}
			before := g.PoolStats().Used
			if r := rc.do(cmdFlagFUA, cmd, 0, uint32(chunk), nil); r.errno != 0 {
				t.Fatalf("%s: errno %d", name, r.errno)
			}
			if got := g.PoolStats().Used; got != before-chunk {
				t.Fatalf("pool used %d when the FUA reply arrived, want %d: the unmap was not durable", got, before-chunk)
			}
		})
	}
}
