package gateway

import (
	"encoding/json"
	"maps"
	"strings"
	"time"

	"github.com/sluice-storage/sluice/policy"
)

// Automation controllers (Crystal): every policy with WHEN watches the
// one-second workload metrics of its target and is put in force when its
// condition becomes true; a TRANSIENT one is taken out again when the
// condition stops holding, any other stays in force (and stays so across
// restarts: the record remembers that it fired).
//
// One goroutine ticks once a second. Each tick it reads every volume's
// counters (counters.go: ops and bytes per door and operation, summed over
// doors), turns the change since the last tick into rates — read_iops,
// write_iops (operations/s) and read_bw, write_bw (bytes/s) — per volume
// and per tenant (the sum of its volumes), and evaluates each WHEN rule
// against its target's rates: a volume or file rule reads its volume's, a
// tenant rule its tenant's, a group rule the sum of its members'. A rule
// whose target has no rates yet (the first tick, a volume that does not
// exist) stays as it is. When any rule changes state the policy epoch goes
// up and every volume is reclassified.

// Workload is one target's one-second workload metrics.
type Workload map[string]float64

// workloadSample is one volume's cumulative counters at one instant.
type workloadSample struct {
	readOps, writeOps, readBytes, writeBytes uint64
}

func (v *Volume) sample() workloadSample {
	var s workloadSample
	for d := Door(0); d < numDoors; d++ {
		r, w := &v.counters.byDoorOp[d][OpRead], &v.counters.byDoorOp[d][OpWrite]
		s.readOps += r.ops.Load()
		s.writeOps += w.ops.Load()
		s.readBytes += r.bytes.Load()
		s.writeBytes += w.bytes.Load()
	}
	return s
}

// automation is the controllers' state between ticks (only the ticking
// goroutine, or a test calling tick, touches it).
type automation struct {
	last    time.Time
	samples map[string]workloadSample // by volume ref
}

// automate ticks the controllers every interval until stop closes.
func (g *Gateway) automate(every time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			g.tick(now)
		}
	}
}

// tick samples the counters, computes rates since the last tick and steps
// every WHEN rule.
func (g *Gateway) tick(now time.Time) {
	a := &g.auto
	samples := map[string]workloadSample{}
	vols := map[string]Workload{}
	tenants := map[string]Workload{}
	dt := now.Sub(a.last).Seconds()
	for _, v := range g.Volumes() {
		ref := v.Ref()
		s := v.sample()
		samples[ref] = s
		prev, ok := a.samples[ref]
		if !ok || dt <= 0 {
			continue
		}
		w := Workload{
			"read_iops":  float64(s.readOps-prev.readOps) / dt,
			"write_iops": float64(s.writeOps-prev.writeOps) / dt,
			"read_bw":    float64(s.readBytes-prev.readBytes) / dt,
			"write_bw":   float64(s.writeBytes-prev.writeBytes) / dt,
		}
		vols[ref] = w
		tenant, _, _ := strings.Cut(ref, "/")
		addWorkload(tenants, tenant, w)
	}
	a.last, a.samples = now, samples
	g.stepRules(now, vols, tenants)
}

func addWorkload(m map[string]Workload, key string, w Workload) {
	sum := m[key]
	if sum == nil {
		sum = Workload{}
		m[key] = sum
	}
	for k, x := range w {
		sum[k] += x
	}
}

// workloadOf returns the metrics of a rule's target, nil if unknown.
func workloadOf(t policy.Target, vols, tenants map[string]Workload) Workload {
	switch t.Kind {
	case policy.TargetVolume, policy.TargetFile:
		return vols[t.Tenant+"/"+t.Volume]
	case policy.TargetTenant:
		return tenants[t.Tenant]
	case policy.TargetGroup:
		var sum Workload
		for _, m := range t.Members {
			w := tenants[m]
			if strings.Contains(m, "/") {
				w = vols[m]
			}
			if w == nil {
				continue
			}
			if sum == nil {
				sum = Workload{}
			}
			for k, x := range w {
				sum[k] += x
			}
		}
		return sum
	}
	return nil
}

// stepRules runs one step of every WHEN rule and reclassifies the volumes
// if any changed state.
func (g *Gateway) stepRules(now time.Time, vols, tenants map[string]Workload) {
	p := &g.policies
	p.mu.Lock()
	defer p.mu.Unlock()
	changed := false
	for _, id := range p.order() {
		st := p.byID[id]
		if st.rule.When == nil {
			continue
		}
		w := workloadOf(st.rule.Target, vols, tenants)
		if w != nil {
			st.metrics = maps.Clone(w)
		}
		next := st.rule.Step(st.active, w)
		if next == st.active {
			continue
		}
		st.active, st.since, changed = next, now, true
		if next {
			g.log.Info("policy condition holds: filters set", "policy", id, "rule", st.rule.String(), "metrics", w)
		} else {
			g.log.Info("policy condition no longer holds: filters cleared", "policy", id, "rule", st.rule.String(), "metrics", w)
		}
		if !st.rule.Transient {
			doc, _ := json.Marshal(storedPolicy{Rule: st.rule, Fired: next})
			if err := g.store.PutConfig(policyKind, id, doc); err != nil {
				g.log.Error("recording that a policy fired failed", "policy", id, "err", err)
			}
		}
	}
	if changed {
		p.epoch.Add(1)
		g.refilter()
	}
}
