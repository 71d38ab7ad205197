package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sluice-storage/sluice/gateway/qos"
)

// AgentOptions configures an Agent.
type AgentOptions struct {
	// Client reaches the controller.
	Client *Client
	// Registration identifies the gateway; its ID is the gateway ID.
	Registration GatewayRegistration
	// Report returns the gateway's report for the interval just ended
	// (see Meter). The agent fills in Gateway and Epoch. It is called from
	// the agent's goroutine every ReportInterval and must not block on IO.
	Report func() Report
	// Apply and Fallback are the Follower's callbacks.
	Apply    func(AssignmentSet)
	Fallback func()
	// ReportInterval (default 1 s), Grace (default DefaultGrace), PollWait:
	// how long one long poll for assignments waits (default 10 s).
	ReportInterval time.Duration
	Grace          time.Duration
	PollWait       time.Duration
	// Clock drives the Follower's grace timer (default qos.RealClock()).
	Clock  qos.Clock
	Logger *slog.Logger
}

// Agent is everything a gateway runs to follow a controller: it registers,
// reports every ReportInterval, long-polls for its assignment set and
// hands each set to a Follower. Nothing in it is on the IO path: when the
// controller is slow or gone, reports and polls fail in the agent's own
// goroutines and the Follower falls back after the grace period.
type Agent struct {
	o AgentOptions
	f *Follower

	mu         sync.Mutex
	registered bool
	lastErr    map[string]string // op → last failure ("" none)
	replica    string            // the replica last reached (logged when it changes)
}

// NewAgent checks o and returns an Agent; call Run.
func NewAgent(o AgentOptions) (*Agent, error) {
	if o.Client == nil || o.Report == nil {
		return nil, fmt.Errorf("agent: %w: Client and Report are required", ErrInvalid)
	}
	if err := o.Registration.Validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if o.ReportInterval <= 0 {
		o.ReportInterval = time.Second
	}
	if o.PollWait <= 0 {
		o.PollWait = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Logger = o.Logger.With("controller", strings.Join(o.Client.URLs(), ","), "gateway", o.Registration.ID)
	f := NewFollower(FollowerOptions{Gateway: o.Registration.ID, Apply: o.Apply, Fallback: o.Fallback,
		Grace: o.Grace, Clock: o.Clock, Logger: o.Logger})
	return &Agent{o: o, f: f, lastErr: map[string]string{}}, nil
}

// Follower returns the agent's Follower (for status).
func (a *Agent) Follower() *Follower { return a.f }

// Run follows the controller until ctx ends, then stops the Follower
// (the assignments in force stay in force) and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.reportLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		a.pollLoop(ctx)
	}()
	wg.Wait()
	a.f.Stop()
	return nil
}

func (a *Agent) reportLoop(ctx context.Context) {
	t := time.NewTicker(a.o.ReportInterval)
	defer t.Stop()
	for {
		a.reportOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reportOnce registers if needed and sends one report.
func (a *Agent) reportOnce(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, 2*a.o.ReportInterval+time.Second)
	defer cancel()
	a.mu.Lock()
	registered := a.registered
	a.mu.Unlock()
	if !registered {
		if _, err := a.o.Client.Register(cctx, a.o.Registration); err != nil {
			a.trouble(ctx, "report", err)
			return
		}
		a.mu.Lock()
		a.registered = true
		a.mu.Unlock()
		a.o.Logger.Info("registered with the controller")
	}
	rep := a.o.Report()
	rep.Gateway = a.o.Registration.ID
	rep.Epoch = a.f.Enforced()
	_, err := a.o.Client.Report(cctx, rep)
	if errors.Is(err, ErrNotFound) {
		a.mu.Lock()
		a.registered = false // the controller forgot us: register again
		a.mu.Unlock()
	}
	if err != nil {
		a.trouble(ctx, "report", err)
		return
	}
	a.trouble(ctx, "report", nil)
	a.reached()
}

// reached logs the replica a call just reached when it is another one
// than before: the leader moved, or the client found it.
func (a *Agent) reached() {
	u := a.o.Client.URL()
	a.mu.Lock()
	prev := a.replica
	a.replica = u
	a.mu.Unlock()
	if u != prev {
		a.o.Logger.Info("reaching the controller's leader", "leader", u, "before", prev)
	}
}

// Leader is the controller replica the agent talks to: the leader, as far
// as it knows.
func (a *Agent) Leader() string { return a.o.Client.URL() }

func (a *Agent) pollLoop(ctx context.Context) {
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, a.o.PollWait+5*time.Second)
		set, ok, err := a.o.Client.Assignments(cctx, a.o.Registration.ID, a.f.State().Epoch, a.o.PollWait)
		cancel()
		switch {
		case err != nil:
			a.trouble(ctx, "poll", err)
			sleep(ctx, a.o.ReportInterval)
		case ok:
			a.trouble(ctx, "poll", nil)
			a.reached()
			if _, err := a.f.Offer(set); err != nil {
				a.o.Logger.Warn("assignment set refused", "err", err)
			}
		}
	}
}

// trouble logs a failure of op ("report" or "poll") once per change of
// error (not every second), and the recovery.
func (a *Agent) trouble(ctx context.Context, op string, err error) {
	if ctx.Err() != nil {
		return
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	a.mu.Lock()
	prev := a.lastErr[op]
	a.lastErr[op] = msg
	a.mu.Unlock()
	switch {
	case msg == prev:
	case err != nil:
		a.o.Logger.Warn("controller unreachable or refusing", "op", op, "err", err)
	default:
		a.o.Logger.Info("controller reachable again", "op", op)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
