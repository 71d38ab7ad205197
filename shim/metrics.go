package shim

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the door's counters to Prometheus (sluice_shim_*),
// read at scrape time.
type Collector struct{ s *Server }

// NewCollector returns a Prometheus collector for s.
func NewCollector(s *Server) *Collector { return &Collector{s: s} }

var (
	descChannels   = prometheus.NewDesc("sluice_shim_channels", "Client processes connected to the shim door now.", nil, nil)
	descOpened     = prometheus.NewDesc("sluice_shim_channels_opened_total", "Channels that completed the handshake.", nil, nil)
	descHandles    = prometheus.NewDesc("sluice_shim_handles", "Registered fds the shim door serves now.", nil, nil)
	descRegistered = prometheus.NewDesc("sluice_shim_registrations_total", "fds accepted for bypass.", nil, nil)
	descRequests   = prometheus.NewDesc("sluice_shim_requests_total", "Requests taken from the channels' rings, by op.", []string{"op"}, nil)
	descErrors     = prometheus.NewDesc("sluice_shim_request_errors_total", "Requests answered with an errno, by op.", []string{"op"}, nil)
	descRefused    = prometheus.NewDesc("sluice_shim_refused_total", "fds refused at registration (the program's calls on them go to the kernel), by reason.", []string{"reason"}, nil)
	descFallbacks  = prometheus.NewDesc("sluice_shim_fallbacks_total", "Requests answered \"do it through the kernel\", by reason.", []string{"reason"}, nil)
	descBad        = prometheus.NewDesc("sluice_shim_protocol_errors_total", "Requests and control messages that broke the protocol (each fails or closes its channel).", nil, nil)
	descPanics     = prometheus.NewDesc("sluice_shim_panics_total", "Panics recovered in the shim door (each failed a request or closed a channel).", nil, nil)
	descInline     = prometheus.NewDesc("sluice_shim_requests_inline_total", "Requests run on their channel's poller (the others ran on goroutines of their own).", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descChannels, descOpened, descHandles, descRegistered, descRequests, descErrors, descRefused, descFallbacks, descBad, descPanics, descInline} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := &c.s.stats
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	gauge(descChannels, float64(c.s.door.Len()))
	gauge(descHandles, float64(st.handles.Load()))
	counter(descOpened, st.opened.Load())
	counter(descRegistered, st.registered.Load())
	counter(descBad, st.bad.Load())
	counter(descPanics, st.panics.Load())
	counter(descInline, st.inline.Load())
	for op := uint32(1); op < numOpCodes; op++ {
		counter(descRequests, st.requests[op].Load(), opName(op))
		counter(descErrors, st.failed[op].Load(), opName(op))
	}
	for r := uint32(1); r < numReasons; r++ {
		counter(descRefused, st.refused[r].Load(), ReasonName(r))
		counter(descFallbacks, st.fallbacks[r].Load(), ReasonName(r))
	}
}
