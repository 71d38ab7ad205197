package gateway

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/gateway/store"
	"github.com/sluice-storage/sluice/gateway/store/fsns"
	"github.com/sluice-storage/sluice/policy"
)

// The classify step's filter half: which filter chain a request runs
// through, decided by the policies in force (policy.go, automation.go).
//
// Each volume caches its decision in an atomic pointer (Volume.filt):
// nil when no policy in force can match the volume — the request then takes
// the plain path for one atomic load — or a volFilters holding the chain
// for block IO and for files no path-dependent rule targets. Whenever the
// rules in force change (a policy added or deleted, an automation
// controller setting or clearing one, a registry change), the policy epoch
// goes up and every volume's pointer is recomputed at once, so the hot path
// never compares epochs.
//
// Volumes with path-dependent rules in force (FILE targets, WHERE
// conditions) resolve requests that carry a file path one by one
// (policy.Resolve over the volume's candidate rules, under the policy
// mutex); the chain for each combination of winning rules is built once per
// epoch and cached by the rule ids.
//
// The cache filter gives the volume one LRU read cache in RAM (store:
// Volume.SetCache), sized by the largest cache rule that can match it;
// requests whose resolved chain holds the cache filter read through it, and
// every change to a chunk invalidates it. Turning the cache off drops it.

// volFilters is one volume's classification.
type volFilters struct {
	epoch   uint64
	base    store.Filters // requests without a path, and every request if !perFile
	match   policy.Match  // what base came from
	perFile bool          // some candidate rule needs the request's path
	rules   []policy.Rule // rules in force that can match this volume (perFile only)
}

// filtersFor returns the filters of one request. The caller has loaded a
// non-nil vf.
func (v *Volume) filtersFor(ctx context.Context, vf *volFilters, req *Request) store.Filters {
	if !vf.perFile || req.Path == "" {
		return vf.base
	}
	var fi policy.FileInfo
	if fs := fsns.Of(v.sv); fs != nil {
		fi.Size, _ = fs.Length(ctx, req.Inode)
	}
	info := v.sv.Info()
	m := policy.Resolve(vf.rules, info.Tenant, info.Name, req.Path, fi)
	return v.g.filtersForMatch(vf.epoch, m)
}

// filtersForMatch returns the store filters of a resolved match, built once
// per epoch (at most 1,024 combinations are kept; more are built each time).
func (g *Gateway) filtersForMatch(epoch uint64, m policy.Match) store.Filters {
	if len(m.Rules) == 0 {
		return store.Filters{}
	}
	key := matchKey(m)
	c := g.policies.chainsAt(epoch)
	if c != nil {
		if f, ok := c.m.Load(key); ok {
			return f.(store.Filters)
		}
	}
	f, _, err := g.buildFilters(m)
	if err != nil {
		g.log.Error("policy filters cannot be built; request runs plain", "rules", key, "err", err)
	}
	if c != nil && c.n.Add(1) <= 1024 {
		c.m.Store(key, f)
	}
	return f
}

// chainsAt returns the chain cache of epoch, starting it if epoch is newer
// than the cache's; nil if the cache already belongs to a newer epoch (the
// caller's request was classified just before a change: it builds its
// filters without caching them).
func (p *policies) chainsAt(epoch uint64) *chainCache {
	for {
		c := p.chains.Load()
		switch {
		case c != nil && c.epoch == epoch:
			return c
		case c != nil && c.epoch > epoch:
			return nil
		}
		if p.chains.CompareAndSwap(c, &chainCache{epoch: epoch}) {
			continue
		}
	}
}

func matchKey(m policy.Match) string {
	var b strings.Builder
	for i, id := range m.Rules {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(id, 10))
	}
	return b.String()
}

// buildFilters makes the store filters of a match: transforms in the
// match's order, and whether the cache filter is among them (with its size).
func (g *Gateway) buildFilters(m policy.Match) (store.Filters, int64, error) {
	var fs []*filter.Filter
	var cacheSize int64
	for _, a := range m.Actions {
		f, err := filter.New(g.env, a.Filter, a.Params)
		if err != nil {
			return store.Filters{}, 0, err
		}
		if f.Name() == "cache" {
			cacheSize = f.Params().Int("size")
		}
		fs = append(fs, f)
	}
	c, err := filter.NewChain(fs...)
	if err != nil {
		return store.Filters{}, 0, err
	}
	sf := store.Filters{Cache: cacheSize > 0}
	if !c.Plain() {
		sf.Chain = c
	}
	return sf, cacheSize, nil
}

// couldMatch reports whether a rule can match some request on the volume
// (its target names the volume; WHERE conditions and globs aside).
func couldMatch(r *policy.Rule, tenant, volume string) bool {
	t := &r.Target
	switch t.Kind {
	case policy.TargetFile, policy.TargetVolume:
		return t.Tenant == tenant && t.Volume == volume
	case policy.TargetTenant:
		return t.Tenant == tenant
	case policy.TargetGroup:
		return slices.Contains(t.Members, tenant) || slices.Contains(t.Members, tenant+"/"+volume)
	}
	return false
}

// classifyFilters computes one volume's filters from the rules in force.
// Callers hold policies.mu.
func (g *Gateway) classifyFilters(v *Volume) *volFilters {
	p := &g.policies
	info := v.sv.Info()
	var cands []policy.Rule
	perFile := false
	var cacheSize int64
	for _, id := range p.order() {
		st := p.byID[id]
		if !st.inForce() || !couldMatch(&st.rule, info.Tenant, info.Name) {
			continue
		}
		cands = append(cands, st.rule)
		perFile = perFile || st.rule.NeedsPath()
		for _, a := range st.rule.Actions {
			if a.Filter == "cache" {
				n, _ := strconv.ParseInt(a.Params["size"], 10, 64)
				cacheSize = max(cacheSize, n)
			}
		}
	}
	v.setCache(cacheSize)
	if len(cands) == 0 {
		return nil
	}
	vf := &volFilters{epoch: p.epoch.Load(), perFile: perFile}
	if perFile {
		vf.rules = cands
	}
	vf.match = policy.Resolve(cands, info.Tenant, info.Name, "", policy.FileInfo{})
	base, _, err := g.buildFilters(vf.match)
	if err != nil {
		g.log.Error("policy filters cannot be built; volume runs plain", "volume", info.Ref(), "err", err)
	}
	vf.base = base
	return vf
}

// setCache gives the volume a read cache of size bytes (0: none), keeping
// the one it has when the size is unchanged.
func (v *Volume) setCache(size int64) {
	c := v.sv.Cache()
	switch {
	case size == 0 && c != nil:
		v.sv.SetCache(nil)
		v.g.log.Info("read cache off", "volume", v.Ref())
	case size == 0:
	case c == nil:
		v.sv.SetCache(filter.NewCache(size))
		v.g.log.Info("read cache on", "volume", v.Ref(), "size", size)
	case c.Stats().Capacity != size:
		c.SetCapacity(size)
	}
}

// refilter recomputes every known volume's filters. Callers hold
// policies.mu and have bumped the epoch.
func (g *Gateway) refilter() {
	g.mu.Lock()
	vols := make([]*Volume, 0, len(g.vols))
	for _, v := range g.vols {
		vols = append(vols, v)
	}
	g.mu.Unlock()
	for _, v := range vols {
		v.filt.Store(g.classifyFilters(v))
	}
}

// Filters describes what the policies in force do to a volume now: the
// winning level and rules, and the pipeline of block IO (and of files no
// file rule targets).
func (v *Volume) Filters() VolumeFilters {
	out := VolumeFilters{Volume: v.Ref(), Chain: "plain"}
	if vf := v.filt.Load(); vf != nil {
		out.Level, out.Rules, out.PerFile = string(vf.match.Level), vf.match.Rules, vf.perFile
		out.Chain = vf.base.Chain.String()
		if vf.base.Cache {
			out.Chain = fmt.Sprintf("%s + cache", out.Chain)
		}
	}
	if c := v.sv.Cache(); c != nil {
		st := c.Stats()
		out.Cache = &st
	}
	return out
}

// VolumeFilters is a volume's classification as the API shows it.
type VolumeFilters struct {
	Volume  string             `json:"volume"`
	Level   string             `json:"level,omitempty"` // target kind of the winning rules
	Rules   []uint64           `json:"rules,omitempty"`
	Chain   string             `json:"chain"`              // transforms of block IO, "plain" when none
	PerFile bool               `json:"per_file,omitempty"` // file rules pick other chains per file
	Cache   *filter.CacheStats `json:"cache,omitempty"`
}
