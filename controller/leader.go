package controller

import (
	"context"
)

// Leading reports whether this replica leads (always, on a badger store).
func (s *Server) Leading() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.term != 0
}

// Leader is the leading replica's URL as the store knows it ("" on a badger
// store, or while no replica leads).
func (s *Server) Leader(ctx context.Context) string {
	return s.store.Leader(ctx)
}

// leading returns a NotLeaderError naming the leader unless this replica
// leads in the store (it may not have started its term yet: it then takes
// reports while it warms up). Reports and assignment polls are runtime
// state, kept by the leader alone.
func (s *Server) leading(ctx context.Context) error {
	if s.store.Term() != 0 {
		return nil
	}
	return &NotLeaderError{Leader: s.store.Leader(ctx)}
}

// syncLeadership follows the store's election, once per Run tick, and
// reports whether a round is due. A follower reloads the desired state
// (the leader writes it); a replica that has just won reloads it, starts a
// new generation (a fenced write, so it fails if the term is already lost)
// and warms up before its first round, hearing the gateways' reports.
func (s *Server) syncLeadership(ctx context.Context) bool {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.syncLocked(ctx)
}

// syncLocked is syncLeadership under writeMu.
func (s *Server) syncLocked(ctx context.Context) bool {
	term := s.store.Term()
	s.mu.Lock()
	cur, closed := s.term, s.closed
	s.mu.Unlock()
	if closed {
		return false
	}
	switch {
	case term == cur && term != 0:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.clock.Now().Sub(s.start) >= s.opts.Warmup
	case term == 0 && cur != 0:
		s.mu.Lock()
		s.term = 0
		// Drop this term's sets and release the long polls: they
		// reconnect, are refused, and find the new leader.
		s.sets, s.limits, s.known, s.shortfalls = map[string]AssignmentSet{}, map[string]gatewayLimits{}, nil, nil
		close(s.wake)
		s.wake = make(chan struct{})
		s.mu.Unlock()
		s.log.Warn("controller: no longer the leader: rounds stop here", "leader", s.store.Leader(ctx))
	}
	slos, gws, err := s.store.Load(ctx)
	if err != nil {
		s.log.Warn("controller: reloading the desired state", "err", err)
		return false
	}
	if term == 0 {
		s.mu.Lock()
		s.slos, s.gws = slos, gws
		s.mu.Unlock()
		return false
	}
	now := s.clock.Now()
	gen, err := s.store.NextGeneration(ctx, now)
	if err != nil {
		s.log.Warn("controller: starting a term", "term", term, "err", err)
		return false
	}
	s.mu.Lock()
	s.slos, s.gws = slos, gws
	s.term, s.gen, s.round, s.start = term, gen, 0, now
	s.mu.Unlock()
	s.log.Info("controller: leading", "term", term, "generation", gen, "slos", len(slos), "gateways", len(gws))
	return false
}
