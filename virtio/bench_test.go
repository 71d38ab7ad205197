package virtio

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkLoopback measures 4 KiB reads between our initiator and our
// target in one process (both pollers share the machine's cores), per wait
// mode and queue depth. Reported: ns/op (per IO), IOPS, and the pollers'
// counters per IO (c: client, s: server). Not a substitute for
// bench/virtio.sh: the target and initiator share one Go scheduler here.
func BenchmarkLoopback(b *testing.B) {
	for _, mode := range []WaitMode{WaitAdaptive, WaitEventfd, WaitPoll} {
		for _, qd := range []int{1, 32} {
			b.Run(fmt.Sprintf("%v/QD%d", mode, qd), func(b *testing.B) {
				exp := newMemExport(64 << 20)
				srv := NewServer(exp, ServerOptions{Wait: WaitOptions{Mode: mode}, Logger: quietLogger()})
				sock := b.TempDir() + "/b.sock"
				l, err := Listen(sock)
				if err != nil {
					b.Fatal(err)
				}
				go srv.Serve(b.Context(), l)
				defer srv.Shutdown(b.Context())
				c, err := Dial(b.Context(), sock, Options{Wait: WaitOptions{Mode: mode}, Logger: quietLogger()})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				var wg sync.WaitGroup
				per := b.N / qd
				start := time.Now()
				b.ResetTimer()
				for w := range qd {
					wg.Add(1)
					go func() {
						defer wg.Done()
						buf := make([]byte, 4096)
						for i := range per {
							off := int64((i*7919+w*104729)%16384) * 4096
							if _, err := c.ReadAt(buf, off); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				el := time.Since(start)
				n := float64(per * qd)
				cw, sw := c.WaitStats(), srv.Stats().Wait
				b.ReportMetric(n/el.Seconds(), "IOPS")
				b.ReportMetric(float64(cw.Blocks)/n, "cblocks/op")
				b.ReportMetric(float64(cw.Naps)/n, "cnaps/op")
				b.ReportMetric(float64(cw.Contended)/n, "ccont/op")
				b.ReportMetric(float64(sw.Blocks)/n, "sblocks/op")
				b.ReportMetric(float64(sw.Naps)/n, "snaps/op")
			})
		}
	}
}
