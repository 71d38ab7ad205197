package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
)

// A gateway joins a cluster controller with `sluice gateway --controller
// URL --gateway-id ID`: it runs a controller.Agent that registers,
// reports each tenant's traffic every second and enforces the assignment
// sets it receives (gateway.ApplyAssignments), falling back to the static
// rules after the grace period (gateway.ClearAssignments). This file is
// the adapter between the two packages: package gateway does not import
// package controller.

// joinFlags are the gateway command's controller flags.
func joinFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "controller", Usage: "join the cluster controller at this `URL` (http://HOST:PORT; a replicated controller: every replica's URL, comma-separated): report per-tenant traffic, enforce its assignments"},
		&cli.StringFlag{Name: "gateway-id", Usage: "this gateway's `ID` at the controller (required with --controller; unique in the cluster)"},
		&cli.StringFlag{Name: "controller-token-file", Usage: "`FILE` holding the controller's bearer token (default: ./sluice-controller/token if readable)"},
		&cli.DurationFlag{Name: "controller-grace", Value: controller.DefaultGrace, Usage: "keep the controller's assignments this long after last hearing from it, then fall back to the static QoS rules"},
		&cli.StringFlag{Name: "controller-capacity", Value: "bandwidth", Usage: "which measured capacities to report: bandwidth, iops or both (see docs/CONTROLLER.md: the controller shares each one out on its own)"},
	}
}

// joinOptions are the parsed controller flags; URL "" means not joining.
type joinOptions struct {
	url, id, token string
	grace          time.Duration
	report         [controller.NumResources]bool // capacities reported
	// ceiling bounds the measured capacity (capacityCeiling).
	ceiling controller.Rates
}

// capacityCeiling is the most the gateway's scheduler can admit when it
// paces routed IO at --qos-capacity-iops (0: no pacing, no ceiling): that
// many cost units per second of reads, or of writes, and at most a cost
// unit of bytes per unit. The measured capacity never goes above it.
func capacityCeiling(capacityIOPS float64, costUnit int64) controller.Rates {
	if capacityIOPS <= 0 {
		return controller.Rates{}
	}
	bps := capacityIOPS * float64(costUnit)
	return controller.Rates{ReadBPS: bps, WriteBPS: bps, ReadIOPS: capacityIOPS, WriteIOPS: capacityIOPS}
}

func parseJoinFlags(c *cli.Context) (joinOptions, error) {
	o := joinOptions{url: c.String("controller"), id: c.String("gateway-id"), grace: c.Duration("controller-grace")}
	if o.url == "" {
		for _, f := range []string{"gateway-id", "controller-token-file", "controller-grace", "controller-capacity"} {
			if c.IsSet(f) {
				return o, usageErr("--%s needs --controller", f)
			}
		}
		return o, nil
	}
	if _, err := controller.NewClient(o.url, ""); err != nil {
		return o, usageErr("--controller: %v", err)
	}
	if !controller.ValidName(o.id) {
		return o, usageErr("--controller needs --gateway-id: 1-63 letters, digits, '.', '_' or '-', unique in the cluster")
	}
	if o.grace < 100*time.Millisecond {
		return o, usageErr("--controller-grace must be at least 100ms")
	}
	switch c.String("controller-capacity") {
	case "bandwidth":
		o.report[controller.ReadBW], o.report[controller.WriteBW] = true, true
	case "iops":
		o.report[controller.ReadIOPS], o.report[controller.WriteIOPS] = true, true
	case "both":
		o.report = [controller.NumResources]bool{true, true, true, true}
	default:
		return o, usageErr("--controller-capacity %q: want bandwidth, iops or both", c.String("controller-capacity"))
	}
	tok, err := controller.ClientToken(c.String("controller-token-file"))
	if err != nil {
		return o, usageErr("--controller-token-file: %v", err)
	}
	o.token = tok
	return o, nil
}

// joined is a gateway following a controller.
type joined struct {
	o     joinOptions
	g     *gateway.Gateway
	agent *controller.Agent
	meter *controller.Meter
	est   controller.CapacityEstimator
	stop  context.CancelFunc
	done  chan struct{}

	// What the previous report saw of routed IO (report goroutine only).
	routedAt         time.Time
	routedR, routedW gateway.OpTotals
	estimate         controller.Rates

	mu        sync.Mutex
	capacity  controller.Rates // as last reported
	saturated bool             // in the last interval
	following bool             // the agent applied a set and did not fall back since
	unsettled bool             // routing changed since the last report
}

// joinController starts following the controller until ctx ends or
// close is called; it never waits for the controller (one that is down
// only delays the first assignments).
func joinController(ctx context.Context, g *gateway.Gateway, o joinOptions, apiSocket string, log *slog.Logger) (*joined, error) {
	cl, err := controller.NewClient(o.url, o.token)
	if err != nil {
		return nil, err
	}
	j := &joined{o: o, g: g, meter: controller.NewMeter(), done: make(chan struct{})}
	j.est.Ceiling = o.ceiling
	j.agent, err = controller.NewAgent(controller.AgentOptions{
		Client:       cl,
		Registration: controller.GatewayRegistration{ID: o.id, Address: apiSocket},
		Report:       j.report,
		Apply: func(set controller.AssignmentSet) {
			if err := g.ApplyAssignmentSet(set.Assignments, set.Default, set.Epoch); err != nil {
				log.Warn("part of the controller's assignment set was refused", "err", err)
			}
			j.routing(true)
		},
		Fallback: func() {
			g.ClearAssignments()
			j.routing(false)
		},
		Grace:  o.grace,
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	ctx, j.stop = context.WithCancel(ctx)
	go func() {
		defer close(j.done)
		j.agent.Run(ctx)
	}()
	log.Info("following the cluster controller", "controller", o.url, "gateway", o.id, "grace", o.grace)
	return j, nil
}

// close stops following the controller and returns once the agent has
// stopped. The assignments in force stay in force until the gateway exits.
func (j *joined) close() {
	j.stop()
	<-j.done
}

// routing notes that the agent applied a set (true) or fell back.
func (j *joined) routing(following bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if following != j.following {
		j.unsettled = true
	}
	j.following = following
}

// report is the Agent's Report callback: the tenants' rates over the last
// interval and the measured capacity.
//
// The capacity comes from a controller.CapacityEstimator fed, each
// interval, with the total rate of routed IO (what the QoS scheduler
// admitted: controller assignments and static rules; the fast path is
// bounded by nothing the scheduler knows and is left out) and with whether
// the scheduler held work back for the device, its slots (--qos-slots) or
// its capacity (--qos-capacity-iops), for at least a tenth of the
// interval. While saturated the estimate follows what was achieved; while
// tenants press their limits and the device keeps up it grows 5 % per
// interval, never above the capacity --qos-capacity-iops paces routed IO
// at (capacityCeiling). It is unknown (0: no limit from capacity) until
// the first saturated interval. An interval in which the gateway started
// or stopped following the controller mixes two routings and is not fed.
// Only the resources chosen by --controller-capacity are reported.
func (j *joined) report() controller.Report {
	now := time.Now()
	rep := j.meter.Report(now, j.o.id, controller.Rates{}, counters(j.g.TenantCounters()))
	saturated := j.g.DeviceSaturated()
	r, w := j.g.RoutedTotals()
	j.mu.Lock()
	unsettled := j.unsettled
	j.unsettled = false
	j.mu.Unlock()
	if dt := now.Sub(j.routedAt).Seconds(); !j.routedAt.IsZero() && dt > 0 && !unsettled {
		rate := func(cur, prev uint64) float64 { return float64(cur-min(cur, prev)) / dt }
		achieved := controller.Rates{
			ReadBPS: rate(r.Bytes, j.routedR.Bytes), WriteBPS: rate(w.Bytes, j.routedW.Bytes),
			ReadIOPS: rate(r.Units, j.routedR.Units), WriteIOPS: rate(w.Units, j.routedW.Units),
		}
		j.estimate = j.est.Observe(achieved, saturated)
	}
	j.routedAt, j.routedR, j.routedW = now, r, w
	for res := controller.Resource(0); res < controller.NumResources; res++ {
		if j.o.report[res] {
			rep.Capacity.Set(res, j.estimate.Get(res))
		}
	}
	j.mu.Lock()
	j.capacity, j.saturated = rep.Capacity, saturated
	j.mu.Unlock()
	return rep
}

// counters converts the gateway's per-tenant totals to the Meter's type.
func counters(in []gateway.TenantTotals) []controller.TenantCounters {
	op := func(o gateway.OpTotals) controller.Counters {
		return controller.Counters{Bytes: o.Bytes, Units: o.Units, IOs: o.IOs, Waited: o.Waited, Queued: o.Queued}
	}
	out := make([]controller.TenantCounters, len(in))
	for i, t := range in {
		out[i] = controller.TenantCounters{Tenant: t.Tenant, Read: op(t.Read), Write: op(t.Write)}
	}
	return out
}

// ControllerStatus implements admin.ControllerSource.
func (j *joined) ControllerStatus() admin.ControllerStatus {
	fs := j.agent.Follower().State()
	st := admin.ControllerStatus{URL: j.o.url, Leader: j.agent.Leader(), GatewayID: j.o.id, GraceSeconds: j.o.grace.Seconds(),
		Following: fs.Following, Epoch: fs.Epoch, LastContact: fs.LastContact, Term: fs.Term, StaleTermSets: fs.StaleTermSets,
		Capacity: map[string]float64{}}
	if fs.Epoch != 0 {
		st.EpochText = controller.FormatEpoch(fs.Epoch)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	st.Saturated = j.saturated
	for r := controller.Resource(0); r < controller.NumResources; r++ {
		if j.o.report[r] {
			st.Capacity[r.String()] = j.capacity.Get(r)
		}
	}
	return st
}
