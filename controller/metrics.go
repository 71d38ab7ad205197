package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics is the controller's Prometheus collector: counters updated as
// things happen, and gauges read from Status at scrape time.
type metrics struct {
	s *Server

	rounds      prometheus.Counter
	roundTime   prometheus.Histogram
	reports     prometheus.Counter
	reportBytes prometheus.Counter
	polls       prometheus.Counter

	epoch, gateways, capacity                        *prometheus.Desc
	achieved, demand, assigned, minimum, maximum, sf *prometheus.Desc
}

func newMetrics(s *Server) *metrics {
	tl := []string{"tenant", "resource"}
	return &metrics{
		s:      s,
		rounds: prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_controller_rounds_total", Help: "Assignment rounds run."}),
		roundTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sluice_controller_round_seconds",
			Help:    "Time the algorithm took per round.",
			Buckets: []float64{1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1}}),
		reports:     prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_controller_reports_total", Help: "Gateway reports received."}),
		reportBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_controller_report_bytes_total", Help: "Bytes of gateway report bodies received."}),
		polls:       prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_controller_assignment_polls_total", Help: "Assignment sets sent to gateways."}),
		epoch:       prometheus.NewDesc("sluice_controller_epoch", "Epoch of the newest assignment round.", nil, nil),
		gateways:    prometheus.NewDesc("sluice_controller_gateways", "Registered gateways by state (live: reported within the report timeout).", []string{"state"}, nil),
		capacity:    prometheus.NewDesc("sluice_controller_gateway_capacity", "Capacity a gateway reported (bytes/s for *_bw, cost units/s for *_iops; 0 unknown).", []string{"gateway", "resource"}, nil),
		achieved:    prometheus.NewDesc("sluice_controller_tenant_achieved", "A tenant's achieved rate summed over live gateways.", tl, nil),
		demand:      prometheus.NewDesc("sluice_controller_tenant_demand", "A tenant's reported demand summed over live gateways.", tl, nil),
		assigned:    prometheus.NewDesc("sluice_controller_tenant_assigned", "A tenant's limits summed over gateways in the last round (finite ones).", tl, nil),
		minimum:     prometheus.NewDesc("sluice_controller_tenant_slo_min", "A tenant's SLO minimum (0 none).", tl, nil),
		maximum:     prometheus.NewDesc("sluice_controller_tenant_slo_max", "A tenant's SLO maximum (0 none).", tl, nil),
		sf:          prometheus.NewDesc("sluice_controller_tenant_shortfall", "Part of a tenant's minimum the last round could not place.", tl, nil),
	}
}

func (m *metrics) observeRound(took time.Duration) {
	m.rounds.Inc()
	m.roundTime.Observe(took.Seconds())
}

func (m *metrics) observeReport(bytes int64) {
	m.reports.Inc()
	if bytes > 0 {
		m.reportBytes.Add(float64(bytes))
	}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range []prometheus.Collector{m.rounds, m.roundTime, m.reports, m.reportBytes, m.polls} {
		c.Describe(ch)
	}
	for _, d := range []*prometheus.Desc{m.epoch, m.gateways, m.capacity, m.achieved, m.demand, m.assigned, m.minimum, m.maximum, m.sf} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range []prometheus.Collector{m.rounds, m.roundTime, m.reports, m.reportBytes, m.polls} {
		c.Collect(ch)
	}
	st := m.s.Status()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	gauge(m.epoch, float64(st.Epoch))
	live := 0
	for _, g := range st.Gateways {
		if g.Live {
			live++
		}
		for r := Resource(0); r < NumResources; r++ {
			gauge(m.capacity, g.Capacity.Get(r), g.ID, r.String())
		}
	}
	gauge(m.gateways, float64(live), "live")
	gauge(m.gateways, float64(len(st.Gateways)-live), "silent")
	for _, t := range st.Tenants {
		for r := Resource(0); r < NumResources; r++ {
			res := r.String()
			gauge(m.achieved, t.Achieved.Get(r), t.Tenant, res)
			gauge(m.demand, t.Demand.Get(r), t.Tenant, res)
			gauge(m.assigned, t.Assigned.Get(r), t.Tenant, res)
			if t.HasSLO {
				gauge(m.minimum, t.Min.Get(r), t.Tenant, res)
				gauge(m.maximum, t.Max.Get(r), t.Tenant, res)
			}
		}
	}
	for _, s := range st.Shortfalls {
		gauge(m.sf, s.Want-s.Placed, s.Tenant, s.Resource)
	}
}
