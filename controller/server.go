package controller

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// Options configures a Server. Zero fields take the defaults below.
type Options struct {
	// DataDir holds the badger database of desired state; "" keeps it in
	// memory (tests). Ignored when Store is set.
	DataDir string
	// Store, if set, holds the desired state instead (OpenEtcdStore); the
	// Server closes it.
	Store Store
	// Algorithm computes assignments (default Crystal{Headroom:
	// DefaultHeadroom}).
	Algorithm Algorithm
	// Interval is the time between rounds (default 1 s).
	Interval time.Duration
	// ReportTimeout: a gateway that has not reported for this long is left
	// out of rounds and its share goes to the others (default 5 s).
	ReportTimeout time.Duration
	// Warmup: no round runs until this long after Open, so that a restarted
	// controller hears from every live gateway before it reassigns (default
	// 2×Interval). Gateways keep their last assignments meanwhile.
	Warmup time.Duration
	// Advertise is this controller's URL as clients reach it: shown in
	// the status as the replica that answered (and, on a store without
	// replicas, as the leader).
	Advertise string
	// Token, if set, is the bearer token every API call but /v1/health must
	// carry.
	Token string
	// Clock is the time source for liveness (default qos.RealClock()).
	Clock qos.Clock
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Registry receives the controller's metrics and is what /metrics
	// serves (default a new registry).
	Registry *prometheus.Registry
}

// Defaults.
const (
	// DefaultListen is where `sluice controller` listens, and DefaultURL
	// where the CLI looks for it.
	DefaultListen        = "127.0.0.1:7470"
	DefaultURL           = "http://" + DefaultListen
	DefaultInterval      = time.Second
	DefaultReportTimeout = 5 * time.Second
	// MaxWait bounds a long poll for assignments.
	MaxWait = time.Minute
)

// Server is the controller: desired state, the gateways' reports, and the
// rounds that turn them into assignment sets. Its methods are safe for
// concurrent use; Handler serves them over HTTP.
type Server struct {
	opts    Options
	alg     Algorithm
	clock   qos.Clock
	log     *slog.Logger
	store   Store
	reg     *prometheus.Registry
	metrics *metrics
	gen     uint64    // under mu
	start   time.Time // under mu
	done    chan struct{}
	once    sync.Once

	writeMu sync.Mutex // serialises desired-state writes (db, then memory)
	roundMu sync.Mutex // one round at a time

	mu         sync.Mutex
	closed     bool
	term       uint64 // the store's term this server leads in; 0: a follower
	slos       map[string]SLO
	gws        map[string]GatewayRegistration
	reports    map[string]received
	round      uint64
	epoch      uint64
	roundAt    time.Time
	sets       map[string]AssignmentSet // gateway → its set of the last round
	limits     map[string]gatewayLimits // gateway → the last round's limits there
	known      map[string]bool          // the tenants of the last round's input
	shortfalls []Shortfall
	wake       chan struct{} // closed and replaced after every round
}

type received struct {
	rep Report
	at  time.Time
}

// Open loads the desired state from opts.DataDir and returns a Server.
// Call Run to start rounds and Close when done.
func Open(ctx context.Context, opts Options) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Algorithm == nil {
		opts.Algorithm = Crystal{Headroom: DefaultHeadroom}
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.ReportTimeout <= 0 {
		opts.ReportTimeout = DefaultReportTimeout
	}
	if opts.Warmup <= 0 {
		opts.Warmup = 2 * opts.Interval
	}
	if opts.Clock == nil {
		opts.Clock = qos.RealClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	d := opts.Store
	if d == nil {
		var err error
		if d, err = OpenBadgerStore(opts.DataDir, opts.Logger); err != nil {
			return nil, err
		}
	}
	slos, gws, err := d.Load(ctx)
	if err != nil {
		d.Close()
		return nil, err
	}
	now := opts.Clock.Now()
	// A store that is writable at once (badger) starts the term here; a
	// replicated one when Run sees this replica win the election.
	var gen uint64
	term := d.Term()
	if term != 0 {
		if gen, err = d.NextGeneration(ctx, now); err != nil {
			d.Close()
			return nil, err
		}
	}
	s := &Server{
		opts: opts, alg: opts.Algorithm, clock: opts.Clock, log: opts.Logger, store: d, reg: opts.Registry,
		gen: gen, term: term, start: now, done: make(chan struct{}),
		slos: slos, gws: gws, reports: map[string]received{},
		sets: map[string]AssignmentSet{}, limits: map[string]gatewayLimits{}, wake: make(chan struct{}),
	}
	s.metrics = newMetrics(s)
	if err := s.reg.Register(s.metrics); err != nil {
		d.Close()
		return nil, fmt.Errorf("registering controller metrics: %w", err)
	}
	s.log.Info("controller state loaded", "slos", len(slos), "gateways", len(gws), "generation", gen)
	return s, nil
}

// Close stops long polls and closes the database. Stop Run first.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		close(s.done)
		s.writeMu.Lock()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		err = s.store.Close()
		s.writeMu.Unlock()
		s.reg.Unregister(s.metrics)
	})
	return err
}

// Run runs a round every Interval (after the warm-up) until ctx ends or
// the server is closed.
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case <-t.C:
			if s.syncLeadership(ctx) {
				s.runRound()
			}
		}
	}
}

// Epoch returns the newest epoch (0 before the first round).
func (s *Server) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// SLOs returns every SLO, sorted by tenant.
func (s *Server) SLOs() []SLO {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SLO, 0, len(s.slos))
	for _, k := range slices.Sorted(maps.Keys(s.slos)) {
		out = append(out, s.slos[k])
	}
	return out
}

// SLO returns one tenant's SLO.
func (s *Server) SLO(tenant string) (SLO, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	slo, ok := s.slos[tenant]
	if !ok {
		return SLO{}, fmt.Errorf("tenant %q has no SLO: %w", tenant, ErrNotFound)
	}
	return slo, nil
}

// SetSLO creates or replaces a tenant's SLO. It applies from the next
// round.
func (s *Server) SetSLO(ctx context.Context, slo SLO) (SLO, error) {
	if err := slo.Validate(); err != nil {
		return SLO{}, err
	}
	if err := s.lockWrite(ctx); err != nil {
		return SLO{}, err
	}
	defer s.writeMu.Unlock()
	if err := s.store.Put(ctx, keySLO+slo.Tenant, slo); err != nil {
		return SLO{}, err
	}
	s.mu.Lock()
	s.slos[slo.Tenant] = slo
	s.mu.Unlock()
	s.log.Info("SLO set", "tenant", slo.Tenant, "min", slo.Min, "max", slo.Max)
	return slo, nil
}

// DeleteSLO removes a tenant's SLO; the tenant is then best effort.
func (s *Server) DeleteSLO(ctx context.Context, tenant string) error {
	if err := s.lockWrite(ctx); err != nil {
		return err
	}
	defer s.writeMu.Unlock()
	if _, err := s.SLO(tenant); err != nil {
		return err
	}
	if err := s.store.Delete(ctx, keySLO+tenant); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.slos, tenant)
	s.mu.Unlock()
	s.log.Info("SLO deleted", "tenant", tenant)
	return nil
}

// lockWrite takes writeMu for a write that writable allows. A replica
// that neither leads nor has just won refuses at once, without waiting
// for writeMu: a follower's reload may hold it for as long as etcd takes
// to answer (up to the store's call timeout when etcd has no quorum).
func (s *Server) lockWrite(ctx context.Context) error {
	if s.store.Term() == 0 && !s.Leading() {
		return &NotLeaderError{Leader: s.store.Leader(ctx)}
	}
	s.writeMu.Lock()
	if err := s.writable(ctx); err != nil {
		s.writeMu.Unlock()
		return err
	}
	return nil
}

// writable checks, under writeMu, that a write may proceed: the server is
// open and leads.
func (s *Server) writable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	closed, term := s.closed, s.term
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if term != s.store.Term() {
		// Won or lost since Run last looked: follow now rather than
		// refuse a write this replica may make (or make one it may not).
		s.syncLocked(ctx)
		s.mu.Lock()
		term = s.term
		s.mu.Unlock()
	}
	if term == 0 {
		// A follower: its memory lags the leader's by up to an interval.
		// The store fences writes on leadership in any case.
		return &NotLeaderError{Leader: s.store.Leader(ctx)}
	}
	return nil
}

// Register adds a gateway to the registry, or updates its address and
// labels. It is idempotent.
func (s *Server) Register(ctx context.Context, g GatewayRegistration) (GatewayRegistration, error) {
	if err := g.Validate(); err != nil {
		return GatewayRegistration{}, err
	}
	if err := s.lockWrite(ctx); err != nil {
		return GatewayRegistration{}, err
	}
	defer s.writeMu.Unlock()
	s.mu.Lock()
	old, known := s.gws[g.ID]
	s.mu.Unlock()
	if known {
		g.Registered = old.Registered
		if old.Address == g.Address && maps.Equal(old.Labels, g.Labels) {
			return old, nil
		}
	} else {
		g.Registered = s.clock.Now().UTC()
	}
	if err := s.store.Put(ctx, keyGateway+g.ID, g); err != nil {
		return GatewayRegistration{}, err
	}
	s.mu.Lock()
	s.gws[g.ID] = g
	s.mu.Unlock()
	s.log.Info("gateway registered", "gateway", g.ID, "address", g.Address, "again", known)
	return g, nil
}

// Deregister removes a gateway; its share is released at the next round.
func (s *Server) Deregister(ctx context.Context, id string) error {
	if err := s.lockWrite(ctx); err != nil {
		return err
	}
	defer s.writeMu.Unlock()
	s.mu.Lock()
	_, ok := s.gws[id]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("gateway %q: %w", id, ErrNotFound)
	}
	if err := s.store.Delete(ctx, keyGateway+id); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.gws, id)
	delete(s.reports, id)
	delete(s.sets, id)
	delete(s.limits, id)
	s.mu.Unlock()
	s.log.Info("gateway deregistered", "gateway", id)
	return nil
}

// Report records a gateway's heartbeat. The gateway must be registered
// (ErrNotFound otherwise: register and retry).
func (s *Server) Report(ctx context.Context, rep Report) (ReportReply, error) {
	if err := ctx.Err(); err != nil {
		return ReportReply{}, err
	}
	if err := rep.Validate(); err != nil {
		return ReportReply{}, err
	}
	if err := s.leading(ctx); err != nil {
		return ReportReply{}, err // runtime state goes to the leader only
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ReportReply{}, ErrClosed
	}
	if _, ok := s.gws[rep.Gateway]; !ok {
		return ReportReply{}, fmt.Errorf("gateway %q is not registered: %w", rep.Gateway, ErrNotFound)
	}
	s.reports[rep.Gateway] = received{rep: rep, at: s.clock.Now()}
	return ReportReply{Epoch: s.epoch}, nil
}

// Assignments returns the gateway's newest assignment set if its epoch is
// above after. Otherwise it waits up to wait for a round that produces one
// and reports false if none came. A gateway gets sets only while it
// reports.
func (s *Server) Assignments(ctx context.Context, gateway string, after uint64, wait time.Duration) (AssignmentSet, bool, error) {
	wait = min(wait, MaxWait)
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		if err := s.leading(ctx); err != nil {
			return AssignmentSet{}, false, err
		}
		s.mu.Lock()
		_, registered := s.gws[gateway]
		set, ok := s.sets[gateway]
		wake := s.wake
		closed := s.closed
		s.mu.Unlock()
		switch {
		case closed:
			return AssignmentSet{}, false, ErrClosed
		case !registered:
			return AssignmentSet{}, false, fmt.Errorf("gateway %q is not registered: %w", gateway, ErrNotFound)
		case ok && set.Epoch > after:
			return set, true, nil
		case wait <= 0:
			return AssignmentSet{}, false, nil
		}
		select {
		case <-wake:
		case <-timeout:
			return AssignmentSet{}, false, nil
		case <-ctx.Done():
			return AssignmentSet{}, false, ctx.Err()
		case <-s.done:
			return AssignmentSet{}, false, ErrClosed
		}
	}
}
