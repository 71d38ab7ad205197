package policy

import (
	"path"
	"sort"
	"strings"
)

// FileInfo is what WHERE conditions test about a file.
type FileInfo struct {
	Size int64 // bytes
}

// Match is what Resolve decides for one request.
type Match struct {
	// Level is the kind of target that won ("" when no rule matched).
	Level TargetKind `json:"level,omitempty"`
	// Rules are the IDs of the rules that contributed, in the order their
	// actions were applied.
	Rules []uint64 `json:"rules,omitempty"`
	// Actions is the pipeline: filters in order, each with its parameters.
	Actions []Action `json:"actions,omitempty"`
}

// Rank orders target kinds by specificity: file 4 > volume 3 > tenant 2 >
// group 1. A group ranks lowest because it names many tenants or volumes at
// once; a policy that names the tenant or the volume itself says more about
// it, even when the group lists that very volume.
func Rank(k TargetKind) int {
	switch k {
	case TargetFile:
		return 4
	case TargetVolume:
		return 3
	case TargetTenant:
		return 2
	case TargetGroup:
		return 1
	}
	return 0
}

// Resolve decides which filters apply to a request on tenant/volume, for a
// file at filePath ("" for block IO) with info fi. rules are the rules in
// force: every static rule, and each WHEN rule while its automation has it
// set (see Rule.Step).
//
// Among the rules that match, the most specific target kind wins (file >
// volume > tenant > group) and rules of less specific kinds are ignored
// entirely: a volume with its own policy gets only that, not its tenant's.
// Rules of the winning kind are applied in ID order, each SET adding its
// filter to the pipeline or, if an earlier rule set the same filter,
// replacing that filter's parameters in place. So two policies on one
// volume (say a static compression and a WHEN-driven cache) combine.
//
// A rule matches when its target does (a file glob needs a path) and every
// WHERE condition holds (a WHERE condition needs a path: block IO never
// matches one).
func Resolve(rules []Rule, tenant, volume, filePath string, fi FileInfo) Match {
	filePath = strings.TrimPrefix(filePath, "/")
	best := 0
	var winners []*Rule
	for i := range rules {
		r := &rules[i]
		rank := Rank(r.Target.Kind)
		if rank < best || !r.Matches(tenant, volume, filePath, fi) {
			continue
		}
		if rank > best {
			best, winners = rank, winners[:0]
		}
		winners = append(winners, r)
	}
	if len(winners) == 0 {
		return Match{}
	}
	sort.SliceStable(winners, func(i, j int) bool { return winners[i].ID < winners[j].ID })
	m := Match{Level: winners[0].Target.Kind}
	for _, r := range winners {
		m.Rules = append(m.Rules, r.ID)
	next:
		for _, a := range r.Actions {
			for i := range m.Actions {
				if m.Actions[i].Filter == a.Filter {
					m.Actions[i].Params = a.Params
					continue next
				}
			}
			m.Actions = append(m.Actions, a)
		}
	}
	return m
}

// Matches reports whether the rule applies to a request (its target and its
// WHERE conditions; not its WHEN).
func (r Rule) Matches(tenant, volume, filePath string, fi FileInfo) bool {
	filePath = strings.TrimPrefix(filePath, "/")
	t := &r.Target
	switch t.Kind {
	case TargetTenant:
		if t.Tenant != tenant {
			return false
		}
	case TargetVolume:
		if t.Tenant != tenant || t.Volume != volume {
			return false
		}
	case TargetFile:
		if t.Tenant != tenant || t.Volume != volume || filePath == "" || !matchGlob(t.FileGlob, filePath) {
			return false
		}
	case TargetGroup:
		found := false
		for _, m := range t.Members {
			if m == tenant || m == tenant+"/"+volume {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	default:
		return false
	}
	if len(r.Where) > 0 && filePath == "" {
		return false
	}
	for i := range r.Where {
		if !r.Where[i].holds(filePath, fi) {
			return false
		}
	}
	return true
}

// NeedsPath reports whether the rule can only match requests that carry a
// file path (a FILE target or WHERE conditions): the gateway may classify
// block volumes, and fs volumes without such rules, once per volume.
func (r Rule) NeedsPath() bool {
	return r.Target.Kind == TargetFile || len(r.Where) > 0
}

// matchGlob matches a glob without '/' against the base name, and one with
// '/' against the whole path (both relative to the volume's root).
func matchGlob(glob, p string) bool {
	if !strings.Contains(glob, "/") {
		p = path.Base(p)
	}
	ok, _ := path.Match(glob, p)
	return ok
}

func (c *FileCond) holds(filePath string, fi FileInfo) bool {
	switch c.Field {
	case "file_size":
		return c.Op.compare(float64(fi.Size), float64(c.Size))
	case "file_type":
		lower := strings.ToLower(filePath)
		in := false
		for _, g := range c.Globs {
			if matchGlob(g, lower) {
				in = true
				break
			}
		}
		return in == (c.Op == OpEQ)
	}
	return false
}

// Eval evaluates a WHEN condition against a metrics snapshot (metric name
// → value for the rule's target). known is false when the answer depends on
// a metric the snapshot lacks (three-valued logic: false AND unknown is
// false, true OR unknown is true); automation then leaves the rule as it
// is, as Crystal evaluates a condition only once its metrics have values.
func (c *Cond) Eval(metrics map[string]float64) (value, known bool) {
	switch {
	case c.Metric != "":
		v, ok := metrics[c.Metric]
		if !ok {
			return false, false
		}
		return c.Op.compare(v, c.Value), true
	case c.And != nil:
		value, known = true, true
		for i := range c.And {
			v, k := c.And[i].Eval(metrics)
			if k && !v {
				return false, true
			}
			known = known && k
		}
		return known, known
	case c.Or != nil:
		known = true
		for i := range c.Or {
			v, k := c.Or[i].Eval(metrics)
			if k && v {
				return true, true
			}
			known = known && k
		}
		return false, known
	}
	return false, false
}

// Metrics lists the metrics a condition reads, sorted, once each.
func (c *Cond) Metrics() []string {
	seen := map[string]bool{}
	var walk func(c *Cond)
	walk = func(c *Cond) {
		if c.Metric != "" {
			seen[c.Metric] = true
		}
		for i := range c.And {
			walk(&c.And[i])
		}
		for i := range c.Or {
			walk(&c.Or[i])
		}
	}
	walk(c)
	return sortedKeys(seen)
}

// Step is one tick of a rule's automation controller: given whether the
// rule is in force now and the latest metrics snapshot of its target, it
// returns whether the rule is in force after the tick.
//
//   - A static rule (no WHEN) is always in force.
//   - While the condition cannot be evaluated (a metric is missing), nothing
//     changes.
//   - When the condition holds, the rule is set.
//   - When it does not hold, a TRANSIENT rule is cleared; any other rule,
//     once set, stays set (Crystal's persistent rules act once).
//
// There is no hysteresis: a TRANSIENT rule follows its condition tick by
// tick. A controller that wants a hold time keeps it itself.
func (r Rule) Step(active bool, metrics map[string]float64) bool {
	if r.When == nil {
		return true
	}
	v, known := r.When.Eval(metrics)
	switch {
	case !known:
		return active
	case v:
		return true
	case r.Transient:
		return false
	}
	return active
}
