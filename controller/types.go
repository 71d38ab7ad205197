package controller

import (
	"fmt"
	"math"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// Error is the type of this package's sentinel errors.
type Error string

func (e Error) Error() string { return string(e) }

// Sentinel errors; the package's errors wrap one of these with %w.
const (
	ErrInvalid      = Error("invalid")
	ErrNotFound     = Error("not found")
	ErrUnauthorized = Error("unauthorized")
	ErrClosed       = Error("controller closed")
	// ErrUnavailable: the store did not answer in time (etcd without a
	// quorum of its members, or unreachable); retry later.
	ErrUnavailable = Error("the controller's store is unavailable")
)

// Resource is one dimension the controller shares out. Each is allocated on
// its own: a gateway's read bandwidth capacity is independent of its write
// bandwidth and IOPS capacities (as in Crystal, which runs per method).
type Resource int

// The resources. IOPS are the gateway's QoS cost units per second (by
// default one unit per 8 KiB, as in `sluice qos set --iops`), bandwidth is
// bytes per second.
const (
	ReadBW Resource = iota
	WriteBW
	ReadIOPS
	WriteIOPS
	NumResources
)

func (r Resource) String() string {
	switch r {
	case ReadBW:
		return "read_bw"
	case WriteBW:
		return "write_bw"
	case ReadIOPS:
		return "read_iops"
	case WriteIOPS:
		return "write_iops"
	}
	return fmt.Sprintf("resource(%d)", int(r))
}

// Rates is one number per resource. Depending on where it appears a zero
// field means "none" (SLO minimum), "no maximum" (SLO maximum) or "unknown"
// (reported capacity); inside the algorithm +Inf means unbounded.
type Rates struct {
	ReadBPS   float64 `json:"read_bps,omitempty"`   // bytes/s
	WriteBPS  float64 `json:"write_bps,omitempty"`  // bytes/s
	ReadIOPS  float64 `json:"read_iops,omitempty"`  // cost units/s
	WriteIOPS float64 `json:"write_iops,omitempty"` // cost units/s
}

// Get returns the field for r.
func (x Rates) Get(r Resource) float64 {
	switch r {
	case ReadBW:
		return x.ReadBPS
	case WriteBW:
		return x.WriteBPS
	case ReadIOPS:
		return x.ReadIOPS
	case WriteIOPS:
		return x.WriteIOPS
	}
	return 0
}

// Set sets the field for r.
func (x *Rates) Set(r Resource, v float64) {
	switch r {
	case ReadBW:
		x.ReadBPS = v
	case WriteBW:
		x.WriteBPS = v
	case ReadIOPS:
		x.ReadIOPS = v
	case WriteIOPS:
		x.WriteIOPS = v
	}
}

// IsZero reports whether every field is zero.
func (x Rates) IsZero() bool { return x == Rates{} }

// validate checks that every field is a finite, non-negative number.
func (x Rates) validate(what string) error {
	for r := Resource(0); r < NumResources; r++ {
		v := x.Get(r)
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > maxRate {
			return fmt.Errorf("%s %s = %g: %w: want a finite number from 0 to %g", what, r, v, ErrInvalid, maxRate)
		}
	}
	return nil
}

// maxRate bounds every rate on the wire (1 PB/s, 10^15 IOPS).
const maxRate = 1e15

// SLO is a tenant's service-level objective, cluster-wide: the sum over
// every gateway of what the tenant gets. A zero Min field asks for no
// minimum; a zero Max field sets no maximum.
type SLO struct {
	Tenant string `json:"tenant"`
	Min    Rates  `json:"min"`
	Max    Rates  `json:"max"`
}

// Validate reports whether s is usable; the error wraps ErrInvalid.
func (s SLO) Validate() error {
	if !ValidName(s.Tenant) {
		return fmt.Errorf("tenant %q: %w: use 1-63 letters, digits, '.', '_' or '-'", s.Tenant, ErrInvalid)
	}
	if err := s.Min.validate("minimum"); err != nil {
		return fmt.Errorf("tenant %s: %w", s.Tenant, err)
	}
	if err := s.Max.validate("maximum"); err != nil {
		return fmt.Errorf("tenant %s: %w", s.Tenant, err)
	}
	for r := Resource(0); r < NumResources; r++ {
		if mx := s.Max.Get(r); mx > 0 && s.Min.Get(r) > mx {
			return fmt.Errorf("tenant %s: minimum %s %.0f is above the maximum %.0f: %w", s.Tenant, r, s.Min.Get(r), mx, ErrInvalid)
		}
	}
	return nil
}

// ValidName reports whether s is a valid tenant or gateway name: 1-63
// letters, digits, '.', '_' or '-', starting with a letter or digit (the
// gateway's rule for tenant names).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// GatewayRegistration is what a gateway tells the controller when it joins.
// It is desired state: the controller persists it.
type GatewayRegistration struct {
	ID      string            `json:"id"`
	Address string            `json:"address,omitempty"` // informational: where the gateway's admin API is
	Labels  map[string]string `json:"labels,omitempty"`
	// Registered is set by the controller.
	Registered time.Time `json:"registered,omitzero"`
}

// Validate reports whether g is usable; the error wraps ErrInvalid.
func (g GatewayRegistration) Validate() error {
	if !ValidName(g.ID) {
		return fmt.Errorf("gateway id %q: %w: use 1-63 letters, digits, '.', '_' or '-'", g.ID, ErrInvalid)
	}
	return nil
}

// Report is a gateway's heartbeat: what each tenant did over the last
// interval (normally one second) and what the gateway can do.
type Report struct {
	Gateway string `json:"gateway"`
	// Interval is the length of the window the rates cover.
	Interval time.Duration `json:"interval_ns"`
	// Capacity is the gateway's measured capacity per resource; a zero field
	// is unknown, and the controller then sets no limit from that resource's
	// capacity (tenants' maximums still apply).
	Capacity Rates `json:"capacity"`
	// Epoch is the epoch of the assignment set the gateway enforces (0 =
	// none: it runs its own static rules). For status only.
	Epoch   uint64         `json:"epoch,omitempty"`
	Tenants []TenantReport `json:"tenants"`
}

// TenantReport is one tenant's traffic on one gateway.
type TenantReport struct {
	Tenant string   `json:"tenant"`
	Read   OpReport `json:"read"`
	Write  OpReport `json:"write"`
}

// OpReport is one tenant's reads (or writes) on one gateway over the
// interval.
type OpReport struct {
	BPS  float64 `json:"bps"`  // achieved bytes/s
	IOPS float64 `json:"iops"` // achieved cost units/s
	// Demand is the achieved rate plus the work that was queued (waiting or
	// in flight) at the end of the interval, spread over the interval. Not
	// less than the achieved rate.
	DemandBPS  float64 `json:"demand_bps"`
	DemandIOPS float64 `json:"demand_iops"`
	// Throttled says requests waited during the interval (for a limit or
	// for the device): the tenant wanted more than it got.
	Throttled bool `json:"throttled,omitempty"`
}

// Validate reports whether r is well formed; the error wraps ErrInvalid.
func (r Report) Validate() error {
	if !ValidName(r.Gateway) {
		return fmt.Errorf("report gateway %q: %w", r.Gateway, ErrInvalid)
	}
	if r.Interval < 0 || r.Interval > time.Hour {
		return fmt.Errorf("report interval %v: %w", r.Interval, ErrInvalid)
	}
	if err := r.Capacity.validate("capacity"); err != nil {
		return err
	}
	seen := make(map[string]bool, len(r.Tenants))
	for _, t := range r.Tenants {
		if !ValidName(t.Tenant) {
			return fmt.Errorf("report tenant %q: %w", t.Tenant, ErrInvalid)
		}
		if seen[t.Tenant] {
			return fmt.Errorf("report lists tenant %s twice: %w", t.Tenant, ErrInvalid)
		}
		seen[t.Tenant] = true
		if err := t.rates().validate("tenant " + t.Tenant + " rate"); err != nil {
			return err
		}
		if err := t.demand().validate("tenant " + t.Tenant + " demand"); err != nil {
			return err
		}
	}
	return nil
}

func (t TenantReport) rates() Rates {
	return Rates{ReadBPS: t.Read.BPS, WriteBPS: t.Write.BPS, ReadIOPS: t.Read.IOPS, WriteIOPS: t.Write.IOPS}
}

func (t TenantReport) demand() Rates {
	return Rates{ReadBPS: t.Read.DemandBPS, WriteBPS: t.Write.DemandBPS, ReadIOPS: t.Read.DemandIOPS, WriteIOPS: t.Write.DemandIOPS}
}

// throttled reports whether the op behind resource r was throttled.
func (t TenantReport) throttled(r Resource) bool {
	if r == ReadBW || r == ReadIOPS {
		return t.Read.Throttled
	}
	return t.Write.Throttled
}

// FormatEpoch prints an epoch as GENERATION.ROUND: the generation grows at
// every controller start, the round at every assignment round.
func FormatEpoch(e uint64) string { return fmt.Sprintf("%d.%d", e>>32, e&(1<<32-1)) }

// ReportReply is the controller's answer to a report.
type ReportReply struct {
	Epoch uint64 `json:"epoch"` // the newest epoch (0 before the first round)
}

// AssignmentSet is the full set of limits one gateway must enforce.
// Assignments lists every tenant the gateway reported (the tenants with a
// volume on it) and every tenant whose limits there differ from Default;
// Default holds for every other tenant the controller knows. Gateways
// apply a set only if its Epoch is newer than the last one they applied.
//
// Before Default (controller versions up to the 1,000-gateway rework)
// Assignments listed every tenant the controller knew, on every gateway.
// A gateway that ignores Default still enforces every tenant it reported;
// only a tenant whose first volume there appeared after its last report
// runs its static rules until the next round lists it.
type AssignmentSet struct {
	Epoch uint64 `json:"epoch"`
	// Term is the leader's term (its election key's create revision in
	// etcd) when the controller has replicas; 0 on a single controller
	// (badger), where epochs alone order sets. A gateway ignores a set
	// from an older term than the newest it accepted: a deposed leader
	// still running rounds cannot undo its successor's assignments.
	Term        uint64                `json:"term,omitempty"`
	Gateway     string                `json:"gateway"`
	Assignments map[string]qos.Limits `json:"assignments"` // tenant → limits
	// Default is the limits of every tenant Assignments does not list
	// (nil from an older controller: those tenants are not assigned).
	Default *qos.Limits `json:"default,omitempty"`
}

// For returns tenant's limits in the set: its entry, or the default; false
// when the set has neither.
func (a AssignmentSet) For(tenant string) (qos.Limits, bool) {
	if l, ok := a.Assignments[tenant]; ok {
		return l, true
	}
	if a.Default != nil {
		return *a.Default, true
	}
	return qos.Limits{}, false
}

// Equal reports whether a and b assign the same limits (epochs aside).
func (a AssignmentSet) Equal(b AssignmentSet) bool {
	if a.Gateway != b.Gateway || len(a.Assignments) != len(b.Assignments) || (a.Default == nil) != (b.Default == nil) ||
		a.Default != nil && *a.Default != *b.Default {
		return false
	}
	for t, l := range a.Assignments {
		if m, ok := b.Assignments[t]; !ok || m != l {
			return false
		}
	}
	return true
}

// Status is the controller's view of the cluster (GET /v1/status).
type Status struct {
	// Leader is the leading replica's URL ("" while none is elected; on a
	// single controller, its own --advertise URL). Replica is the URL of
	// the replica that answered: when it is not the leader, its gateway
	// and tenant sections are empty (reports go to the leader alone).
	Leader  string `json:"leader"`
	Replica string `json:"replica"`
	// Term is the leader's term, when the answering replica leads a
	// replicated controller (0 otherwise).
	Term uint64 `json:"term"`
	// Replicas are the replicas campaigning in etcd, the leader first (on
	// a single controller: itself).
	Replicas []ReplicaStatus `json:"replicas"`
	// Etcd is the health of each etcd endpoint (absent on badger).
	Etcd      *EtcdStatus     `json:"etcd,omitempty"`
	Epoch     uint64          `json:"epoch"`
	Round     time.Time       `json:"round,omitzero"` // when Epoch was computed; absent before the first round
	Algorithm string          `json:"algorithm"`
	Gateways  []GatewayStatus `json:"gateways"`
	Tenants   []TenantStatus  `json:"tenants"`
	// Shortfalls lists minimums the last round could not place.
	Shortfalls []Shortfall `json:"shortfalls"`
}

// GatewayStatus is one registered gateway.
type GatewayStatus struct {
	GatewayRegistration
	Live       bool      `json:"live"` // reported within the report timeout
	LastReport time.Time `json:"last_report,omitzero"`
	Capacity   Rates     `json:"capacity"`  // as last reported
	Achieved   Rates     `json:"achieved"`  // sum over tenants, last report
	Epoch      uint64    `json:"epoch"`     // the epoch the gateway says it enforces
	Tenants    int       `json:"tenants"`   // tenants in its last report
	Assigned   Rates     `json:"assigned"`  // sum of its limits in the last round (finite ones)
	Unlimited  []string  `json:"unlimited"` // resources with no capacity-derived limit
}

// TenantStatus is one tenant: its SLO against what it achieved, summed over
// live gateways.
type TenantStatus struct {
	Tenant   string `json:"tenant"`
	HasSLO   bool   `json:"has_slo"`
	Min      Rates  `json:"min"`
	Max      Rates  `json:"max"`
	Achieved Rates  `json:"achieved"`
	Demand   Rates  `json:"demand"`
	Assigned Rates  `json:"assigned"` // sum of finite limits over gateways
	Gateways int    `json:"gateways"` // live gateways where it has traffic
}
