package gateway

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the gateway's counters to Prometheus. It reads the
// atomic counters at scrape time, so the IO path never touches Prometheus.
type Collector struct{ g *Gateway }

// NewCollector returns a Prometheus collector for g.
func NewCollector(g *Gateway) *Collector { return &Collector{g: g} }

var (
	volLabels   = []string{"tenant", "volume", "door", "op"}
	descOps     = prometheus.NewDesc("sluice_volume_ops_total", "Requests completed, by volume, door and operation.", volLabels, nil)
	descBytes   = prometheus.NewDesc("sluice_volume_bytes_total", "Bytes moved by successful requests.", volLabels, nil)
	descErrors  = prometheus.NewDesc("sluice_volume_errors_total", "Requests that failed.", volLabels, nil)
	descPanics  = prometheus.NewDesc("sluice_volume_panics_total", "Requests that panicked in the gateway and failed with an IO error (also counted in errors).", volLabels, nil)
	descLatency = prometheus.NewDesc("sluice_volume_latency_seconds", "Request latency inside the gateway.", volLabels, nil)
	descSize    = prometheus.NewDesc("sluice_volume_size_bytes", "Volume size.", []string{"tenant", "volume"}, nil)
	descAlloc   = prometheus.NewDesc("sluice_volume_allocated_bytes", "Pool space held by the volume's chunks.", []string{"tenant", "volume"}, nil)
	descPool    = prometheus.NewDesc("sluice_pool_size_bytes", "Pool space available for chunks.", nil, nil)
	descUsed    = prometheus.NewDesc("sluice_pool_used_bytes", "Pool space in use.", nil, nil)

	ruleLabels     = []string{"rule", "target", "op"}
	descQOps       = prometheus.NewDesc("sluice_queue_admitted_ops_total", "Requests admitted by a QoS rule's queue.", ruleLabels, nil)
	descQBytes     = prometheus.NewDesc("sluice_queue_admitted_bytes_total", "Bytes of reads and writes admitted by a QoS rule's queue.", ruleLabels, nil)
	descQThrottled = prometheus.NewDesc("sluice_queue_throttled_seconds_total", "Time requests spent waiting in a QoS rule's queue.", ruleLabels, nil)
	descQDepth     = prometheus.NewDesc("sluice_queue_depth", "Requests waiting in a QoS rule's queue now.", ruleLabels, nil)
	descQInFlight  = prometheus.NewDesc("sluice_queue_inflight", "Requests admitted by a QoS rule's queue and not yet complete.", ruleLabels, nil)

	descPolicyActive = prometheus.NewDesc("sluice_policy_active", "1 while a policy is in force (static policies always; WHEN policies while their automation has them set).", []string{"policy", "target", "kind"}, nil)
	cacheLabels      = []string{"tenant", "volume"}
	descCacheHits    = prometheus.NewDesc("sluice_cache_hits_total", "Chunk reads served by the volume's read cache.", cacheLabels, nil)
	descCacheMisses  = prometheus.NewDesc("sluice_cache_misses_total", "Chunk reads through the read cache that missed.", cacheLabels, nil)
	descCacheBytes   = prometheus.NewDesc("sluice_cache_bytes", "Bytes the volume's read cache holds (absent while the cache is off).", cacheLabels, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOps, descBytes, descErrors, descPanics, descLatency, descSize, descAlloc, descPool, descUsed,
		descQOps, descQBytes, descQThrottled, descQDepth, descQInFlight, descPolicyActive, descCacheHits, descCacheMisses, descCacheBytes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ps := c.g.PoolStats()
	ch <- prometheus.MustNewConstMetric(descPool, prometheus.GaugeValue, float64(ps.Size))
	ch <- prometheus.MustNewConstMetric(descUsed, prometheus.GaugeValue, float64(ps.Used))
	for _, r := range c.g.QoSRules() {
		op := r.Op
		if op == "" {
			op = "all"
		}
		lv := []string{strconv.FormatUint(r.ID, 10), r.Target(), op}
		ch <- prometheus.MustNewConstMetric(descQOps, prometheus.CounterValue, float64(r.Stats.AdmittedOps), lv...)
		ch <- prometheus.MustNewConstMetric(descQBytes, prometheus.CounterValue, float64(r.Stats.AdmittedBytes), lv...)
		ch <- prometheus.MustNewConstMetric(descQThrottled, prometheus.CounterValue, r.Stats.ThrottledTime.Seconds(), lv...)
		ch <- prometheus.MustNewConstMetric(descQDepth, prometheus.GaugeValue, float64(r.Stats.Depth), lv...)
		ch <- prometheus.MustNewConstMetric(descQInFlight, prometheus.GaugeValue, float64(r.Stats.InFlight), lv...)
	}
	for _, p := range c.g.Policies() {
		active := 0.0
		if p.Active {
			active = 1
		}
		ch <- prometheus.MustNewConstMetric(descPolicyActive, prometheus.GaugeValue, active, strconv.FormatUint(p.ID, 10), p.Target, p.Kind)
	}
	for _, v := range c.g.Volumes() {
		info := v.Info()
		ref := info.Ref()
		if cache := v.sv.Cache(); cache != nil {
			st := cache.Stats()
			ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(st.Hits), info.Tenant, ref)
			ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(st.Misses), info.Tenant, ref)
			ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(st.Bytes), info.Tenant, ref)
		}
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(info.Size), info.Tenant, ref)
		ch <- prometheus.MustNewConstMetric(descAlloc, prometheus.GaugeValue, float64(v.AllocatedBytes()), info.Tenant, ref)
		v.counters.used(func(d Door, op Op, oc *opCounters, n uint64) {
			lv := []string{info.Tenant, ref, d.String(), op.String()}
			ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(n), lv...)
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(oc.bytes.Load()), lv...)
			ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(oc.errors.Load()), lv...)
			ch <- prometheus.MustNewConstMetric(descPanics, prometheus.CounterValue, float64(oc.panics.Load()), lv...)
			buckets := make(map[float64]uint64, len(latencyBuckets))
			var cum uint64
			for i, ub := range latencyBuckets {
				cum += oc.buckets[i].Load()
				buckets[ub] = cum
			}
			ch <- prometheus.MustNewConstHistogram(descLatency, n, float64(oc.nanos.Load())/1e9, buckets, lv...)
		})
	}
}
