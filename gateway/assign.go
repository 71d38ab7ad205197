package gateway

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// Assignments from a cluster controller (package controller, issue 5).
//
// A gateway that follows a controller receives full assignment sets: one
// qos.Limits per tenant, computed from the tenants' cluster-wide SLOs. The
// gateway enforces each set with one queue per tenant in its scheduler,
// owned by the controller and never persisted. While a tenant has an
// assignment, all its IO on this gateway, on every volume, door, file and
// operation, goes through that queue: its static QoS rules (tenant, volume
// and file rules) are suspended, because the SLO is tenant-wide and a
// static limit under it would make the controller's limit unreachable
// (the controller would see the tenant held back and hand it more, in
// vain). Tenants the set does not list keep their static rules, unless
// the set carries a default (ApplyAssignmentSet): then every tenant with
// a volume here that the set does not list, including one whose first
// volume appears while the set is in force, is assigned the default.
//
// ApplyAssignments changes limits in place (Queue.SetLimits: immediate,
// for waiting requests too, never blocking); only a tenant gaining or
// losing its assignment recomputes routes. ClearAssignments (the
// controller's grace period ended) closes the queues, releasing what waits
// in them, and static rules apply again. Neither is on the IO path; both
// only take the rules lock, as a `sluice qos set` does.
//
// The package does not import package controller: cmd/sluice adapts the
// controller's Agent to ApplyAssignments, ClearAssignments, TenantCounters
// and DeviceSaturated.

// controlled is the controller-owned part of the rule table. Guarded by
// rules.mu.
type controlled struct {
	queues    map[string]*qos.Queue // tenant → its assignment queue
	def       *qos.Limits           // the set's default for tenants it does not list (nil: none)
	epoch     uint64                // of the last set applied (kept after fallback)
	following bool                  // a set is in force
	since     time.Time             // when following last changed, or the set was applied
	meter     tenantMeter           // TenantCounters and DeviceSaturated state (tenants.go)
}

// queueName is the name of a tenant's assignment queue.
func queueName(tenant string) string { return "controller/" + tenant }

// ApplyAssignments enforces a full assignment set: tenant → limits,
// stamped with the controller's epoch. Tenants not in set lose their
// assignment queue and return to their static rules. Limits that do not
// validate are refused per tenant (the tenant keeps what it had) and
// reported in the error; the rest of the set is applied.
func (g *Gateway) ApplyAssignments(set map[string]qos.Limits, epoch uint64) error {
	return g.ApplyAssignmentSet(set, nil, epoch)
}

// ApplyAssignmentSet is ApplyAssignments with the set's default: when def
// is not nil, every tenant with a volume here that set does not list is
// assigned def (a controller lists only the tenants a gateway reported
// and sends the default for the rest), now and when its first volume
// appears while the set is in force. A def that does not validate is
// refused (those tenants return to their static rules).
func (g *Gateway) ApplyAssignmentSet(set map[string]qos.Limits, def *qos.Limits, epoch uint64) error {
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	c := &g.rules.ctl
	if c.queues == nil {
		c.queues = make(map[string]*qos.Queue, len(set))
	}
	var errs []error
	if def != nil {
		if err := def.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("default: %w", err))
			def = nil
		}
	}
	c.def = def
	full := set
	if def != nil {
		full = make(map[string]qos.Limits, len(set))
		maps.Copy(full, set)
		for _, t := range g.volumeTenants() {
			if _, ok := full[t]; !ok {
				full[t] = *def
			}
		}
	}
	set = full
	reroute := false
	for _, t := range slices.Sorted(maps.Keys(set)) {
		l := set[t]
		if q := c.queues[t]; q != nil {
			if q.Limits() == l {
				continue
			}
			if err := q.SetLimits(l); err != nil {
				errs = append(errs, fmt.Errorf("tenant %s: %w", t, err))
			}
			continue
		}
		q, err := g.rules.sched.NewQueue(queueName(t), l)
		if err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", t, err))
			continue
		}
		c.queues[t] = q
		reroute = true
	}
	var gone []*qos.Queue
	for t, q := range c.queues {
		if _, ok := set[t]; !ok {
			delete(c.queues, t)
			gone = append(gone, q)
			reroute = true
		}
	}
	if !c.following {
		g.log.Info("enforcing the controller's assignments", "epoch", epoch, "tenants", len(set))
	}
	c.epoch, c.following, c.since = epoch, true, time.Now()
	if reroute {
		g.reroute() // new requests stop entering the old queues...
	}
	for _, q := range gone {
		q.Close() // ...then their waiting requests are let go
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("assignments of epoch %d: %w: %w", epoch, ErrInvalid, err)
	}
	return nil
}

// ClearAssignments drops every assignment: tenants return to their static
// rules at once and requests waiting in assignment queues are released.
// The epoch of the last set is kept (for status).
func (g *Gateway) ClearAssignments() {
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	c := &g.rules.ctl
	gone := slices.Collect(maps.Values(c.queues))
	clear(c.queues)
	if c.following {
		g.log.Warn("controller assignments dropped: static QoS rules apply again", "epoch", c.epoch, "tenants", len(gone))
	}
	c.following, c.since, c.def = false, time.Now(), nil
	g.reroute()
	for _, q := range gone {
		q.Close()
	}
}

// AssignedTenant is one tenant's assignment in force, with its queue's
// counters.
type AssignedTenant struct {
	Tenant string         `json:"tenant"`
	Limits qos.Limits     `json:"limits"`
	Stats  qos.QueueStats `json:"stats"`
}

// AssignmentStatus is what this gateway enforces for the controller.
type AssignmentStatus struct {
	// Following: a set is in force (false: every tenant runs under the
	// static rules).
	Following bool `json:"following"`
	// Epoch of the last set applied (kept after a fallback; 0 = never).
	Epoch uint64 `json:"epoch"`
	// Since is when the set in force was applied, or when the gateway fell
	// back.
	Since   time.Time        `json:"since,omitzero"`
	Tenants []AssignedTenant `json:"tenants"`
}

// Assignments returns the assignments in force, by tenant.
func (g *Gateway) Assignments() AssignmentStatus {
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	c := &g.rules.ctl
	st := AssignmentStatus{Following: c.following, Epoch: c.epoch, Since: c.since, Tenants: []AssignedTenant{}}
	for _, t := range slices.Sorted(maps.Keys(c.queues)) {
		qs := c.queues[t].Stats()
		st.Tenants = append(st.Tenants, AssignedTenant{Tenant: t, Limits: qs.Limits, Stats: qs})
	}
	return st
}

// volumeTenants returns the tenants with a volume here. Callers hold
// rules.mu (which is taken before g.mu).
func (g *Gateway) volumeTenants() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	seen := make(map[string]bool)
	var out []string
	for _, v := range g.vols {
		if t := v.Info().Tenant; !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

// assignedRoute sends every request of a volume to its tenant's
// assignment queue. Callers hold rules.mu.
func (g *Gateway) assignedRoute(tenant string) *route {
	c := &g.rules.ctl
	q := c.queues[tenant]
	if q == nil && c.following && c.def != nil {
		// The tenant's first volume here, while a set with a default is
		// in force: the default applies until a set lists the tenant.
		nq, err := g.rules.sched.NewQueue(queueName(tenant), *c.def)
		if err != nil {
			return nil // validated when the set was applied
		}
		c.queues[tenant] = nq
		q = nq
	}
	if q == nil {
		return nil
	}
	var r route
	for d := range r.queues {
		for c := range r.queues[d] {
			r.queues[d][c] = q
		}
	}
	return &r
}
