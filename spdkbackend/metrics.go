package spdkbackend

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Device operations counted by the metrics.
const (
	opRead = iota
	opWrite
	opFlush
	opDiscard
	numOps
)

var opNames = [numOps]string{"read", "write", "flush", "discard"}

// latencyBuckets are the upper bounds of the latency histogram, in
// seconds: from a few microseconds (a malloc bdev through shared memory)
// to a second.
var latencyBuckets = [...]float64{
	10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
	1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1,
}

// opStats count one operation of the device: plain atomics, so the IO path
// does a few uncontended adds and never touches Prometheus.
type opStats struct {
	ops, errors, bytes, nanos atomic.Uint64
	buckets                   [len(latencyBuckets) + 1]atomic.Uint64
}

type stats struct {
	ops      [numOps]opStats
	inflight atomic.Int64 // device calls in progress
	// reconnects counts connections restored; retries, calls run again
	// on a new connection after the old one failed under them.
	reconnects, retries atomic.Uint64
}

// begin counts a call in flight; the returned func records its end.
func (s *stats) begin(op int) func(n int64, err error) {
	s.inflight.Add(1)
	start := time.Now()
	return func(n int64, err error) {
		took := time.Since(start)
		s.inflight.Add(-1)
		o := &s.ops[op]
		o.ops.Add(1)
		if err != nil {
			o.errors.Add(1)
		} else {
			o.bytes.Add(uint64(n))
		}
		o.nanos.Add(uint64(took))
		sec := took.Seconds()
		i := 0
		for i < len(latencyBuckets) && sec > latencyBuckets[i] {
			i++
		}
		o.buckets[i].Add(1)
	}
}

var (
	devLabels    = []string{"bdev", "op"}
	descOps      = prometheus.NewDesc("sluice_device_ops_total", "Calls to the SPDK device completed, by operation (a store read or write of any size is one).", devLabels, nil)
	descErrors   = prometheus.NewDesc("sluice_device_errors_total", "Calls to the SPDK device that failed.", devLabels, nil)
	descBytes    = prometheus.NewDesc("sluice_device_bytes_total", "Bytes read, written or discarded by successful calls.", devLabels, nil)
	descLatency  = prometheus.NewDesc("sluice_device_latency_seconds", "Latency of calls to the SPDK device, through the vhost-user-blk controller (read-modify-write of partial blocks included).", devLabels, nil)
	descInflight = prometheus.NewDesc("sluice_device_inflight", "Calls to the SPDK device in progress now (its queue depth).", []string{"bdev"}, nil)
	descSlots    = prometheus.NewDesc("sluice_device_queue_slots", "Requests the initiator can have in flight at the SPDK target (queues × depth).", []string{"bdev"}, nil)
	descReconn   = prometheus.NewDesc("sluice_device_reconnects_total", "Times the device reconnected to its SPDK target after losing it (a target killed, restarted or stopped).", []string{"bdev"}, nil)
	descRetries  = prometheus.NewDesc("sluice_device_retries_total", "Device calls run again on a new connection after the connection failed under them.", []string{"bdev"}, nil)
	descUp       = prometheus.NewDesc("sluice_device_connected", "1 while the device has a connection to its SPDK target, 0 while it reconnects.", []string{"bdev"}, nil)
)

// Collector exports a Device's counters to Prometheus, read at scrape
// time.
type Collector struct{ d *Device }

// NewCollector returns a Prometheus collector for d.
func NewCollector(d *Device) *Collector { return &Collector{d: d} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOps, descErrors, descBytes, descLatency, descInflight, descSlots, descReconn, descRetries, descUp} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	d, bdev := c.d, c.d.opt.Bdev
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(d.stats.inflight.Load()), bdev)
	ch <- prometheus.MustNewConstMetric(descSlots, prometheus.GaugeValue, float64(d.opt.Queues*d.opt.QueueDepth), bdev)
	ch <- prometheus.MustNewConstMetric(descReconn, prometheus.CounterValue, float64(d.stats.reconnects.Load()), bdev)
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(d.stats.retries.Load()), bdev)
	up := 0.0
	if d.Connected() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, bdev)
	for op := range numOps {
		o := &d.stats.ops[op]
		n := o.ops.Load()
		if n == 0 {
			continue
		}
		lv := []string{bdev, opNames[op]}
		ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(n), lv...)
		ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(o.errors.Load()), lv...)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(o.bytes.Load()), lv...)
		buckets := make(map[float64]uint64, len(latencyBuckets))
		var cum uint64
		for i, ub := range latencyBuckets {
			cum += o.buckets[i].Load()
			buckets[ub] = cum
		}
		ch <- prometheus.MustNewConstHistogram(descLatency, n, float64(o.nanos.Load())/1e9, buckets, lv...)
	}
}
