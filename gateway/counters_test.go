package gateway

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sluice-storage/sluice/gateway/store"
)

// Stats and the Prometheus collector show exactly the (door, op) pairs that
// counted an op, with the same numbers: bytes of successful requests,
// failures as errors.
func TestStatsAndCollectorAgree(t *testing.T) {
	ctx := context.Background()
	g := openTestGateway(t)
	v, err := g.CreateVolume(ctx, store.CreateOptions{Tenant: "acme", Name: "db", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for range 3 {
		if err := v.Do(ctx, &Request{Op: OpWrite, Buf: buf, Door: DoorNBD}); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Do(ctx, &Request{Op: OpRead, Buf: buf, Door: DoorVirtio}); err != nil {
		t.Fatal(err)
	}
	if err := v.Do(ctx, &Request{Op: OpRead, Buf: buf, Offset: 1 << 20, Door: DoorVirtio}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past the end: %v, want ErrOutOfRange", err)
	}

	want := map[[2]string]OpStats{
		{"nbd", "write"}:   {Ops: 3, Bytes: 3 * 4096},
		{"virtio", "read"}: {Ops: 2, Bytes: 4096, Errors: 1},
	}
	stats := v.Stats()
	if len(stats) != len(want) {
		t.Fatalf("Stats: %+v, want the pairs %v", stats, want)
	}
	for _, s := range stats {
		w, ok := want[[2]string{s.Door, s.Op}]
		if !ok || s.Ops != w.Ops || s.Bytes != w.Bytes || s.Errors != w.Errors || s.MeanLatency <= 0 {
			t.Errorf("Stats %+v, want %+v", s, w)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(g))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[[2]string]float64{}
	for _, fam := range families {
		for _, m := range fam.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["door"] == "" {
				continue
			}
			if got[fam.GetName()] == nil {
				got[fam.GetName()] = map[[2]string]float64{}
			}
			n := m.GetCounter().GetValue()
			if h := m.GetHistogram(); h != nil {
				n = float64(h.GetSampleCount())
			}
			got[fam.GetName()][[2]string{labels["door"], labels["op"]}] = n
		}
	}
	for pair, w := range want {
		for name, n := range map[string]uint64{
			"sluice_volume_ops_total": w.Ops, "sluice_volume_bytes_total": w.Bytes,
			"sluice_volume_errors_total": w.Errors, "sluice_volume_latency_seconds": w.Ops,
		} {
			if g := got[name][pair]; g != float64(n) {
				t.Errorf("%s%v = %v, want %d", name, pair, g, n)
			}
		}
	}
	for name, pairs := range got {
		if len(pairs) != len(want) {
			t.Errorf("%s has %d series %v, want %d", name, len(pairs), pairs, len(want))
		}
	}
}
