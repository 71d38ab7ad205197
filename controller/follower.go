package controller

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// DefaultGrace is how long a gateway keeps the controller's assignments
// after it last heard from the controller.
const DefaultGrace = 10 * time.Second

// FollowerOptions configures a Follower.
type FollowerOptions struct {
	// Gateway is this gateway's ID; sets for another gateway are refused.
	Gateway string
	// Apply enforces a set (replacing the previous one). It must not block
	// on IO; it is never called concurrently with itself or Fallback.
	Apply func(AssignmentSet)
	// Fallback returns the gateway to its own static rules. Same rules as
	// Apply.
	Fallback func()
	// Grace (default DefaultGrace).
	Grace time.Duration
	// Clock (default qos.RealClock()).
	Clock  qos.Clock
	Logger *slog.Logger
}

// Follower is the gateway side of assignments: it applies sets with newer
// epochs, ignores stale ones, and falls back once the controller has been
// silent for the grace period. It starts in fallback (the gateway runs its
// static rules until the first set). It has no goroutine: Offer runs Apply
// on the caller's goroutine and the grace timer runs Fallback on the
// clock's.
type Follower struct {
	o  FollowerOptions
	cb sync.Mutex // held while calling Apply or Fallback

	mu        sync.Mutex
	epoch     uint64 // newest epoch accepted
	term      uint64 // newest leader's term accepted (0: none carried one)
	stale     uint64 // sets ignored because their term was older than term
	last      AssignmentSet
	following bool
	contact   time.Time
	gen       uint64 // invalidates grace timers that lost a race
	timer     qos.Timer
	stopped   bool
}

// FollowerState is a snapshot of a Follower.
type FollowerState struct {
	Following   bool      `json:"following"` // the controller's assignments are in force
	Epoch       uint64    `json:"epoch"`     // newest epoch accepted (kept after fallback)
	LastContact time.Time `json:"last_contact,omitzero"`
	// Term is the newest leader's term accepted (0: none came with one);
	// StaleTermSets counts the sets ignored because they came from an
	// older term (a deposed leader still running rounds).
	Term          uint64 `json:"term"`
	StaleTermSets uint64 `json:"stale_term_sets"`
}

// NewFollower returns a Follower in fallback.
func NewFollower(o FollowerOptions) *Follower {
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	if o.Clock == nil {
		o.Clock = qos.RealClock()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Apply == nil {
		o.Apply = func(AssignmentSet) {}
	}
	if o.Fallback == nil {
		o.Fallback = func() {}
	}
	return &Follower{o: o}
}

// Offer hands the follower a set received from the controller. Sets are
// ordered by the leader's term first, then by epoch: a set from an older
// term than the newest accepted is ignored and counted (a deposed leader
// that still runs rounds), and so is one with an older epoch in the same
// term (a reordered reply); a set without a term (a single controller)
// is ordered by its epoch alone. A set from a newer term is taken whatever
// its epoch. An accepted set counts as contact and restarts the grace
// period; it is applied if it differs from the set in force or if the
// follower was in fallback. Offer reports whether Apply was called.
func (f *Follower) Offer(set AssignmentSet) (bool, error) {
	if set.Gateway != f.o.Gateway {
		return false, fmt.Errorf("assignment set for gateway %q offered to %q: %w", set.Gateway, f.o.Gateway, ErrInvalid)
	}
	f.cb.Lock()
	defer f.cb.Unlock()
	f.mu.Lock()
	if f.stopped || set.Epoch == 0 {
		f.mu.Unlock()
		return false, nil
	}
	if set.Term != 0 && set.Term < f.term {
		f.stale++
		n, newest := f.stale, f.term
		f.mu.Unlock()
		f.o.Logger.Warn("ignoring an assignment set from an older leader's term", "term", set.Term, "newest_term", newest,
			"epoch", FormatEpoch(set.Epoch), "ignored", n)
		return false, nil
	}
	newTerm := set.Term > f.term
	if !newTerm && set.Epoch < f.epoch {
		newest := f.epoch
		f.mu.Unlock()
		f.o.Logger.Debug("ignoring a stale assignment set", "epoch", set.Epoch, "newest", newest)
		return false, nil
	}
	f.contact = f.o.Clock.Now()
	if f.timer != nil {
		f.timer.Stop()
	}
	f.gen++
	gen := f.gen
	f.timer = f.o.Clock.AfterFunc(f.o.Grace, func() { f.expire(gen) })
	apply := !f.following || (set.Epoch != f.epoch && !set.Equal(f.last))
	resumed := !f.following
	f.epoch = set.Epoch
	f.term = max(f.term, set.Term)
	f.last = set
	f.following = true
	f.mu.Unlock()
	if resumed {
		f.o.Logger.Info("following the controller's assignments", "epoch", set.Epoch, "term", set.Term, "tenants", len(set.Assignments))
	} else if newTerm && set.Term != 0 {
		f.o.Logger.Info("following a new leader's term", "term", set.Term, "epoch", FormatEpoch(set.Epoch))
	}
	if apply {
		f.o.Apply(set)
	}
	return apply, nil
}

// expire runs when the grace period after the last contact ends.
func (f *Follower) expire(gen uint64) {
	f.cb.Lock()
	defer f.cb.Unlock()
	f.mu.Lock()
	if f.stopped || gen != f.gen || !f.following {
		f.mu.Unlock()
		return
	}
	f.following = false
	since := f.contact
	f.mu.Unlock()
	f.o.Logger.Warn("lost the controller: falling back to local rules", "last_contact", since, "grace", f.o.Grace)
	f.o.Fallback()
}

// State returns a snapshot.
func (f *Follower) State() FollowerState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return FollowerState{Following: f.following, Epoch: f.epoch, LastContact: f.contact, Term: f.term, StaleTermSets: f.stale}
}

// Enforced returns the epoch of the set in force, 0 in fallback.
func (f *Follower) Enforced() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.following {
		return 0
	}
	return f.last.Epoch
}

// Stop cancels the grace timer; no callback runs after Stop returns.
// The assignments in force stay in force (the gateway decides what to do).
func (f *Follower) Stop() {
	f.cb.Lock()
	defer f.cb.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	if f.timer != nil {
		f.timer.Stop()
	}
}
