package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/gateway/store"
	"github.com/sluice-storage/sluice/policy"
)

// Policies (Crystal): text compiled by package policy into rules, kept in
// badger (config kind "policy", one record per rule; the keyword registry
// is config kind "registry", record 1) and turned into filter chains by the
// classify step (filters.go). Static rules are in force from the moment
// they are added; rules with WHEN are put in force and taken out by their
// automation controller (automation.go).
//
// A policy is checked before it is stored, and a refused one changes
// nothing: it must compile against the registry; its target must exist (the
// volume, or a volume of the tenant; FILE targets need an fs volume); every
// filter it sets must be one this gateway runs (bandwidth and iops are QoS
// business: `sluice qos set`); and encryption needs a key in the keyring
// for every tenant the target covers.
//
// Registry changes recompile every policy from its text; a change that
// would break one (a group it names removed, a group grown by a tenant
// without a key) is refused.

const (
	policyKind   = "policy"
	registryKind = "registry"
)

// policies is the gateway's policy table.
type policies struct {
	mu    sync.Mutex
	reg   *policy.Registry
	byID  map[uint64]*policyState
	epoch atomic.Uint64 // bumped whenever the rules in force change

	chains atomic.Pointer[chainCache] // per-file chains of the current epoch
}

// chainCache holds the filters built in one policy epoch for each
// combination of winning rules (keyed by their ids), so that requests
// resolve per file without a lock; a new epoch starts a new cache.
type chainCache struct {
	epoch uint64
	m     sync.Map // matchKey → store.Filters
	n     atomic.Int32
}

// policyState is one rule and its automation state.
type policyState struct {
	rule    policy.Rule
	active  bool // WHEN rules: in force now
	since   time.Time
	metrics map[string]float64 // WHEN rules: the last values evaluated
}

func (s *policyState) inForce() bool { return s.rule.When == nil || s.active }

// order lists rule ids ascending. Callers hold mu.
func (p *policies) order() []uint64 {
	ids := make([]uint64, 0, len(p.byID))
	for id := range p.byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// storedPolicy is a policy's config record.
type storedPolicy struct {
	Rule policy.Rule `json:"rule"`
	// Fired: a WHEN rule without TRANSIENT whose condition has held once,
	// which keeps it in force for good.
	Fired bool `json:"fired,omitempty"`
}

// PolicyStatus is a policy as the API shows it.
type PolicyStatus struct {
	ID       uint64             `json:"id"`
	Text     string             `json:"text"`
	Compiled string             `json:"compiled"` // canonical form, parameters filled in
	Target   string             `json:"target"`
	Kind     string             `json:"kind"`   // "static" or "automation"
	Active   bool               `json:"active"` // in force now
	Since    *time.Time         `json:"since,omitempty"`
	Metrics  map[string]float64 `json:"metrics,omitempty"` // WHEN: last evaluated values
	Rule     policy.Rule        `json:"rule"`
}

func (s *policyState) status() PolicyStatus {
	r := s.rule
	ps := PolicyStatus{ID: r.ID, Text: r.Text, Compiled: r.String(), Target: targetString(r.Target),
		Kind: "static", Active: s.inForce(), Rule: r}
	if r.When != nil {
		ps.Kind = "automation"
		if !s.since.IsZero() {
			t := s.since
			ps.Since = &t
		}
		ps.Metrics = s.metrics
	}
	return ps
}

func targetString(t policy.Target) string {
	switch t.Kind {
	case policy.TargetTenant:
		return "tenant " + t.Tenant
	case policy.TargetVolume:
		return "volume " + t.Tenant + "/" + t.Volume
	case policy.TargetFile:
		return "file " + t.Tenant + "/" + t.Volume + ":" + t.FileGlob
	case policy.TargetGroup:
		return "group " + t.Group
	}
	return string(t.Kind)
}

// invalidError reads as its cause and matches ErrInvalid, so that the API
// maps it to 400 without prefixing the message.
type invalidError struct{ err error }

func (e *invalidError) Error() string   { return e.err.Error() }
func (e *invalidError) Unwrap() []error { return []error{e.err, ErrInvalid} }

func invalid(err error) error {
	if err == nil || errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) {
		return err
	}
	return &invalidError{err}
}

// loadPolicies restores the registry and the policies at start-up. A
// policy that no longer compiles against the registry keeps its stored
// compiled form (and is logged).
func (g *Gateway) loadPolicies() error {
	p := &g.policies
	p.reg = policy.NewRegistry()
	p.byID = map[uint64]*policyState{}
	err := g.store.LoadConfig(registryKind, func(id uint64, doc []byte) error {
		reg, err := policy.LoadRegistry(doc)
		if err != nil {
			return err
		}
		p.reg = reg
		return nil
	})
	if err != nil {
		return fmt.Errorf("load policy registry: %w", err)
	}
	err = g.store.LoadConfig(policyKind, func(id uint64, doc []byte) error {
		var sp storedPolicy
		if err := json.Unmarshal(doc, &sp); err != nil {
			return err
		}
		rule, err := policy.Compile(sp.Rule.Text, p.reg)
		if err != nil {
			g.log.Error("stored policy no longer compiles; keeping its compiled form", "policy", id, "err", err)
			rule = sp.Rule
		}
		rule.ID = id
		if err := g.checkKeys(rule); err != nil {
			g.log.Error("policy sets encryption for a tenant without a key: its writes fail until the keyring has one", "policy", id, "err", err)
		}
		p.byID[id] = &policyState{rule: rule, active: sp.Fired, since: time.Now()}
		return nil
	})
	if err != nil {
		return fmt.Errorf("load policies: %w", err)
	}
	p.epoch.Add(1)
	return nil
}

// checkPolicy decides whether a compiled rule may be put in force.
func (g *Gateway) checkPolicy(r policy.Rule) error {
	t := r.Target
	switch t.Kind {
	case policy.TargetVolume, policy.TargetFile:
		sv, err := g.store.Volume(t.Tenant, t.Volume)
		if err != nil {
			return fmt.Errorf("policy target %s/%s: %w (create the volume first)", t.Tenant, t.Volume, ErrNotFound)
		}
		if t.Kind == policy.TargetFile && sv.Kind() != store.KindFS {
			return invalid(fmt.Errorf("FILE target %s/%s:%s: %s is a block volume; FILE targets need an fs volume", t.Tenant, t.Volume, t.FileGlob, sv.Info().Ref()))
		}
	case policy.TargetTenant:
		found := false
		for _, sv := range g.store.Volumes() {
			found = found || sv.Info().Tenant == t.Tenant
		}
		if !found {
			return fmt.Errorf("policy target tenant %q: %w: it has no volumes", t.Tenant, ErrNotFound)
		}
	case policy.TargetGroup:
		if len(t.Members) == 0 {
			return invalid(fmt.Errorf("group %s has no members (sluice registry set group %s MEMBER...)", t.Group, t.Group))
		}
	}
	for _, a := range r.Actions {
		if _, ok := filter.Lookup(a.Filter); !ok {
			return invalid(fmt.Errorf("filter %s is registered but this gateway has no implementation of it", a.Filter))
		}
		if a.Filter == "bandwidth" || a.Filter == "iops" {
			return invalid(fmt.Errorf("filter %s is not enforced by policies yet: set limits with `sluice qos set`", a.Filter))
		}
	}
	if _, _, err := g.buildFilters(policy.Match{Actions: r.Actions}); err != nil {
		return invalid(err)
	}
	return invalid(g.checkKeys(r))
}

// checkKeys refuses encryption for a tenant the keyring has no key for.
func (g *Gateway) checkKeys(r policy.Rule) error {
	enc := false
	for _, a := range r.Actions {
		enc = enc || a.Filter == "encryption"
	}
	if !enc {
		return nil
	}
	var tenants []string
	switch r.Target.Kind {
	case policy.TargetGroup:
		for _, m := range r.Target.Members {
			t, _, _ := strings.Cut(m, "/")
			tenants = append(tenants, t)
		}
	default:
		tenants = []string{r.Target.Tenant}
	}
	for _, t := range tenants {
		if err := g.env.Keyring().CheckTenant(t); err != nil {
			return fmt.Errorf("encryption for %s: %w", targetString(r.Target), err)
		}
	}
	return nil
}

// AddPolicy compiles, checks and stores a policy, and puts it in force (a
// static one at once; a WHEN one when its condition holds). Syntax and
// compile errors name line and column.
func (g *Gateway) AddPolicy(ctx context.Context, text string) (PolicyStatus, error) {
	p := &g.policies
	p.mu.Lock()
	defer p.mu.Unlock()
	rule, err := policy.Compile(text, p.reg)
	if err != nil {
		return PolicyStatus{}, invalid(err)
	}
	if err := g.checkPolicy(rule); err != nil {
		return PolicyStatus{}, err
	}
	id, err := g.store.NextConfigID(policyKind)
	if err != nil {
		return PolicyStatus{}, err
	}
	rule.ID = id
	doc, _ := json.Marshal(storedPolicy{Rule: rule})
	if err := g.store.PutConfig(policyKind, id, doc); err != nil {
		return PolicyStatus{}, err
	}
	st := &policyState{rule: rule, since: time.Now()}
	p.byID[id] = st
	p.epoch.Add(1)
	g.refilter()
	g.log.Info("policy added", "policy", id, "rule", rule.String())
	return st.status(), nil
}

// DeletePolicy takes a policy out of force and deletes it.
func (g *Gateway) DeletePolicy(ctx context.Context, id uint64) error {
	p := &g.policies
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.byID[id] == nil {
		return fmt.Errorf("policy %d: %w", id, ErrNotFound)
	}
	if err := g.store.DeleteConfig(policyKind, id); err != nil {
		return err
	}
	delete(p.byID, id)
	p.epoch.Add(1)
	g.refilter()
	g.log.Info("policy deleted", "policy", id)
	return nil
}

// Policies lists the policies by id with their state.
func (g *Gateway) Policies() []PolicyStatus {
	p := &g.policies
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PolicyStatus, 0, len(p.byID))
	for _, id := range p.order() {
		out = append(out, p.byID[id].status())
	}
	return out
}

// Registry returns a copy of the keyword registry.
func (g *Gateway) Registry() *policy.Registry {
	g.policies.mu.Lock()
	defer g.policies.mu.Unlock()
	return g.policies.reg.Clone()
}

// Registry entry kinds `sluice registry` changes.
const (
	RegistryGroup    = "group"
	RegistryFileType = "file_type"
)

// SetRegistryEntry defines or replaces a group (values: TENANT or
// TENANT/VOLUME) or a file-type set (values: globs).
func (g *Gateway) SetRegistryEntry(ctx context.Context, kind, name string, values []string) error {
	return g.changeRegistry(func(r *policy.Registry) error {
		switch kind {
		case RegistryGroup:
			return r.SetGroup(name, values)
		case RegistryFileType:
			return r.SetFileType(name, values)
		}
		return fmt.Errorf("registry kind %q: want %s or %s", kind, RegistryGroup, RegistryFileType)
	})
}

// DeleteRegistryEntry removes a group or a file-type set.
func (g *Gateway) DeleteRegistryEntry(ctx context.Context, kind, name string) error {
	return g.changeRegistry(func(r *policy.Registry) error {
		if kind != RegistryGroup && kind != RegistryFileType {
			return fmt.Errorf("registry kind %q: want %s or %s", kind, RegistryGroup, RegistryFileType)
		}
		return r.Remove(kind, name)
	})
}

// changeRegistry applies change to a copy of the registry, recompiles every
// policy against it, and only if all still compile and pass their checks
// stores it and puts the recompiled rules in force.
func (g *Gateway) changeRegistry(change func(r *policy.Registry) error) error {
	p := &g.policies
	p.mu.Lock()
	defer p.mu.Unlock()
	reg := p.reg.Clone()
	if err := change(reg); err != nil {
		return invalid(err)
	}
	rules := map[uint64]policy.Rule{}
	for id, st := range p.byID {
		r, err := policy.Compile(st.rule.Text, reg)
		if err == nil {
			r.ID = id
			err = g.checkKeys(r)
		}
		if err != nil {
			return invalid(fmt.Errorf("policy %d (%s) would break: %w; change or delete it first", id, st.rule.Text, err))
		}
		rules[id] = r
	}
	doc, err := json.Marshal(reg)
	if err != nil {
		return err
	}
	if err := g.store.PutConfig(registryKind, 1, doc); err != nil {
		return err
	}
	p.reg = reg
	for id, r := range rules {
		p.byID[id].rule = r
	}
	p.epoch.Add(1)
	g.refilter()
	g.log.Info("policy registry changed")
	return nil
}

// FilterSpecs lists the built-in filters with their parameters.
func (g *Gateway) FilterSpecs() []filter.Spec {
	specs := filter.Builtins()
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	return specs
}
