package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// QoS rules (IOFlow queuing rules). A rule matches requests by tenant,
// volume, operation and door, and names its own queue in the gateway's
// scheduler; the queue's limits, reservation and weight are the rule's.
//
// For a request the matching rules are tried in resolution order and the
// first one wins:
//
//  1. the most specific: a file rule beats a volume rule, which beats a
//     tenant rule; then an operation-specific rule beats an all-operations
//     one; then a door-specific rule beats an all-doors one;
//  2. among equally specific rules, the highest priority (the queue's
//     --priority, default 0);
//  3. among those, the lowest rule id (the oldest rule).
//
// Only file rules can tie on step 1 (two different globs that both match a
// path, such as "*.log" and "a.*" for a.log): any two other rules that tie
// there match the same requests and are one rule (SetQoSRule replaces it).
// A tenant rule is one queue shared by all the tenant's volumes, so its
// limits are tenant-wide. Requests no rule matches take the fast path: no
// queue, no scheduler, one atomic load.
//
// File rules (a glob over the file's path within an fs volume, relative to
// its root, path.Match syntax) match only requests that carry a path. A glob
// without "/" matches the file's name at any depth ("*.log"); one with "/"
// matches the whole path ("db/*" matches db/x but not db/sub/x);
// block IO never matches them. A file is classified by the path its request
// carries, not by its inode: a renamed file by its new name, a file with
// several hard links by the link its request names. The doors send the
// path the file was opened or created through, and its new path after a
// rename (the FUSE door's choices: docs/FUSE.md).
//
// Classification never takes the rules lock. Every rule change bumps the
// rule epoch and gives each volume a new immutable route (Volume.route, an
// atomic pointer): the queue per door and class for IO without a path, and
// the volume's file rules in resolution order. Requests that carry a path on
// a volume with file rules look up their inode in the volume's file cache
// (filecache.go): the file rules whose glob matches the path, computed once
// per inode, path and epoch.
//
// Operations: "read" matches reads; "write" matches writes; flush, discard
// and write-zeroes match only all-operations rules (class Other: one cost
// unit, no bytes).
//
// Rules are stored in badger (config kind "qos") and take effect at once on
// in-flight traffic: a changed limit applies to requests already waiting,
// and deleting a rule releases its waiting requests.
//
// A cluster controller's assignment for a tenant (assign.go) takes
// precedence over every rule of that tenant while it is in force.

// QoSRule is one queuing rule and its queue's service configuration.
type QoSRule struct {
	ID     uint64     `json:"id"`
	Tenant string     `json:"tenant"`
	Volume string     `json:"volume,omitempty"` // volume name within the tenant; "" = every volume
	File   string     `json:"file,omitempty"`   // glob over file paths (fs volumes); "" = all IO
	Op     string     `json:"op,omitempty"`     // "read", "write", or "" = every operation
	Door   string     `json:"door,omitempty"`   // "nbd", "fuse", "virtio", "shim", or "" = every door
	Limits qos.Limits `json:"limits"`
}

// Target is "tenant" or "tenant/volume".
func (r QoSRule) Target() string {
	switch {
	case r.Volume == "":
		return r.Tenant
	case r.File != "":
		return r.Tenant + "/" + r.Volume + ":" + r.File
	}
	return r.Tenant + "/" + r.Volume
}

func (r QoSRule) sameMatch(o QoSRule) bool {
	return r.Tenant == o.Tenant && r.Volume == o.Volume && r.File == o.File && r.Op == o.Op && r.Door == o.Door
}

// specificity orders matching rules; higher wins.
func (r QoSRule) specificity() int {
	s := 0
	if r.File != "" {
		s += 8
	}
	if r.Volume != "" {
		s += 4
	}
	if r.Op != "" {
		s += 2
	}
	if r.Door != "" {
		s++
	}
	return s
}

// matchesFile reports whether r's glob matches a file's path.
func (r *QoSRule) matchesFile(file string) bool {
	name := file
	if !strings.Contains(r.File, "/") {
		name = path.Base(file) // "*.log" matches at any depth
	}
	ok, _ := path.Match(r.File, name)
	return ok
}

// matchesIO reports whether r applies to IO of class c through door d
// (tenant, volume and file aside).
func (r *QoSRule) matchesIO(c qos.Class, d Door) bool {
	return (r.Op == "" || (r.Op == "read" && c == qos.Read) || (r.Op == "write" && c == qos.Write)) &&
		(r.Door == "" || r.Door == d.String())
}

// before orders rules for resolution (see the package doc): negative when
// r is tried before o.
func (r *QoSRule) before(o *QoSRule) int {
	if c := cmp.Compare(o.specificity(), r.specificity()); c != 0 {
		return c
	}
	if c := cmp.Compare(o.Limits.Priority, r.Limits.Priority); c != 0 {
		return c
	}
	return cmp.Compare(r.ID, o.ID)
}

// QoSRuleStats is a rule with its queue's counters.
type QoSRuleStats struct {
	QoSRule
	Stats qos.QueueStats `json:"stats"`
}

const qosKind = "qos"

// rules is the gateway's rule table. Changes take mu; classification reads
// only the volumes' routes.
type rules struct {
	mu    sync.Mutex
	sched *qos.Scheduler
	byID  map[uint64]*ruleQueue
	ctl   controlled // the controller's assignment queues (assign.go)
	// epoch goes up whenever the routes are recomputed (reroute); a route
	// and a volume's file cache carry the epoch they were made in.
	epoch atomic.Uint64
}

type ruleQueue struct {
	rule  QoSRule
	queue *qos.Queue
}

// route is what classification yields for one volume, immutable once
// stored in Volume.route: the queue of the winning rule per door and class
// for IO that no file rule matches (nil where no rule matches), and the
// volume's file rules in resolution order (Volume.queueFor).
type route struct {
	epoch  uint64
	queues [numDoors][3]*qos.Queue
	files  []ruleQueue
}

func classOf(op Op) qos.Class {
	switch op {
	case OpRead:
		return qos.Read
	case OpWrite:
		return qos.Write
	}
	return qos.Other
}

// loadRules restores rules from the store at start-up.
func (g *Gateway) loadRules() error {
	return g.store.LoadConfig(qosKind, func(id uint64, doc []byte) error {
		var r QoSRule
		if err := json.Unmarshal(doc, &r); err != nil {
			return err
		}
		q, err := g.rules.sched.NewQueue(fmt.Sprintf("rule-%d", id), r.Limits)
		if err != nil {
			g.log.Error("stored QoS rule is invalid; ignored", "rule", id, "err", err)
			return nil
		}
		r.ID = id
		g.rules.byID[id] = &ruleQueue{rule: r, queue: q}
		return nil
	})
}

// validateRule checks a rule before it is stored. The target must exist.
func (g *Gateway) validateRule(r QoSRule) error {
	switch r.Op {
	case "", "read", "write":
	default:
		return fmt.Errorf("op %q: %w: want read or write (or none for every operation)", r.Op, ErrInvalid)
	}
	if r.Door != "" {
		known := false
		for d := Door(1); d < numDoors; d++ {
			known = known || r.Door == d.String()
		}
		if !known {
			return fmt.Errorf("door %q: %w: want nbd, fuse, virtio or shim", r.Door, ErrInvalid)
		}
	}
	if r.File != "" {
		if r.Volume == "" {
			return fmt.Errorf("file %q: %w: a file rule needs --volume", r.File, ErrInvalid)
		}
		if _, err := path.Match(r.File, ""); err != nil || len(r.File) > 1024 {
			return fmt.Errorf("file glob %q: %w: malformed pattern", r.File, ErrInvalid)
		}
	}
	if r.Volume != "" {
		if _, err := g.Volume(r.Tenant + "/" + r.Volume); err != nil {
			return err
		}
	} else {
		found := false
		for _, v := range g.Volumes() {
			found = found || v.Info().Tenant == r.Tenant
		}
		if !found {
			return fmt.Errorf("tenant %q: %w: it has no volumes", r.Tenant, ErrNotFound)
		}
	}
	l := r.Limits
	if l.IsZero() {
		return fmt.Errorf("%w: the rule sets nothing: give a limit, a reservation, a weight or a priority", ErrInvalid)
	}
	for _, f := range []float64{l.ReservationIOPS, l.ReservationBPS} {
		if f != 0 && f < 1 && !math.IsNaN(f) {
			return fmt.Errorf("%w: a reservation below 1 per second is meaningless", ErrInvalid)
		}
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// SetQoSRule creates the rule, or replaces the limits of the existing rule
// with the same tenant, volume, op and door. It returns the stored rule.
func (g *Gateway) SetQoSRule(ctx context.Context, r QoSRule) (QoSRule, error) {
	if err := g.validateRule(r); err != nil {
		return QoSRule{}, err
	}
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	for id, rq := range g.rules.byID {
		if rq.rule.sameMatch(r) {
			r.ID = id
			doc, _ := json.Marshal(r)
			if err := g.store.PutConfig(qosKind, id, doc); err != nil {
				return QoSRule{}, err
			}
			if err := rq.queue.SetLimits(r.Limits); err != nil {
				return QoSRule{}, fmt.Errorf("%w: %w", ErrInvalid, err)
			}
			rq.rule = r
			g.reroute() // the priority orders ties
			g.log.Info("QoS rule changed", "rule", id, "target", r.Target(), "op", r.Op)
			return r, nil
		}
	}
	id, err := g.store.NextConfigID(qosKind)
	if err != nil {
		return QoSRule{}, err
	}
	r.ID = id
	q, err := g.rules.sched.NewQueue(fmt.Sprintf("rule-%d", id), r.Limits)
	if err != nil {
		return QoSRule{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	doc, _ := json.Marshal(r)
	if err := g.store.PutConfig(qosKind, id, doc); err != nil {
		q.Close()
		return QoSRule{}, err
	}
	g.rules.byID[id] = &ruleQueue{rule: r, queue: q}
	g.reroute()
	g.log.Info("QoS rule added", "rule", id, "target", r.Target(), "op", r.Op)
	return r, nil
}

// DeleteQoSRule removes a rule; requests waiting in its queue are released.
func (g *Gateway) DeleteQoSRule(ctx context.Context, id uint64) error {
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	rq := g.rules.byID[id]
	if rq == nil {
		return fmt.Errorf("QoS rule %d: %w", id, ErrNotFound)
	}
	if err := g.store.DeleteConfig(qosKind, id); err != nil {
		return err
	}
	delete(g.rules.byID, id)
	g.reroute()      // new requests stop entering the queue...
	rq.queue.Close() // ...then the waiting ones are let go
	g.log.Info("QoS rule deleted", "rule", id)
	return nil
}

// QoSRules lists rules with their queue counters, by id.
func (g *Gateway) QoSRules() []QoSRuleStats {
	g.rules.mu.Lock()
	defer g.rules.mu.Unlock()
	out := make([]QoSRuleStats, 0, len(g.rules.byID))
	for _, rq := range g.rules.byID {
		out = append(out, QoSRuleStats{QoSRule: rq.rule, Stats: rq.queue.Stats()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// reroute bumps the rule epoch and recomputes every known volume's route.
// Callers hold rules.mu.
func (g *Gateway) reroute() {
	g.rules.epoch.Add(1)
	order := g.ruleOrder()
	g.mu.Lock()
	vols := make([]*Volume, 0, len(g.vols))
	for _, v := range g.vols {
		vols = append(vols, v)
	}
	g.mu.Unlock()
	for _, v := range vols {
		v.route.Store(g.routeFor(v.Info().Tenant, v.Info().Name, order))
	}
}

// ruleOrder returns a copy of the rules in resolution order. Callers hold
// rules.mu.
func (g *Gateway) ruleOrder() []ruleQueue {
	out := make([]ruleQueue, 0, len(g.rules.byID))
	for _, rq := range g.rules.byID {
		out = append(out, *rq)
	}
	slices.SortFunc(out, func(a, b ruleQueue) int { return a.rule.before(&b.rule) })
	return out
}

// routeFor classifies one volume from the rules in resolution order; nil
// when no rule applies to it at all. Callers hold rules.mu.
func (g *Gateway) routeFor(tenant, volume string, order []ruleQueue) *route {
	if r := g.assignedRoute(tenant); r != nil {
		return r // a controller assignment suspends static rules (assign.go)
	}
	r := route{epoch: g.rules.epoch.Load()}
	matched := false
	for _, rq := range order {
		if rq.rule.Tenant != tenant || (rq.rule.Volume != "" && rq.rule.Volume != volume) {
			continue
		}
		matched = true
		if rq.rule.File != "" {
			r.files = append(r.files, rq)
			continue
		}
		for d := range numDoors {
			for c := qos.Read; c <= qos.Other; c++ {
				if r.queues[d][c] == nil && rq.rule.matchesIO(c, d) {
					r.queues[d][c] = rq.queue
				}
			}
		}
	}
	if !matched {
		return nil
	}
	return &r
}
