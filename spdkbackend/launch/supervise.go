package launch

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Supervisor keeps a launched target running for the gateway that owns
// it: when the target exits (killed, crashed) while supervised, it is
// started again with the same options, and so with the same RPC socket and
// configuration file, which re-creates its bdevs; the SPDK device then
// reconnects and re-creates its controller (spdkbackend, Faults). At most
// MaxRestarts restarts in the supervisor's life, waiting 1 s before the
// first and doubling up to 30 s, so a target that cannot run (its
// configuration broken, its huge pages gone) is not restarted in a tight
// loop forever; after that the device's calls fail with EIO and the
// gateway says so in its log.
type Supervisor struct {
	log    *slog.Logger
	max    int
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	tg       *Target
	restarts int
}

// DefaultMaxRestarts is the gateway's bound on restarts of its target.
const DefaultMaxRestarts = 5

// Supervise watches tg (started by Start) and restarts it when it exits,
// at most maxRestarts times, until Release.
func Supervise(tg *Target, maxRestarts int) *Supervisor {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Supervisor{log: tg.opt.Logger, max: maxRestarts, cancel: cancel, done: make(chan struct{}), tg: tg}
	go s.watch(ctx)
	return s
}

func (s *Supervisor) watch(ctx context.Context) {
	defer close(s.done)
	backoff := time.Second
	for {
		s.mu.Lock()
		tg := s.tg
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tg.Exited():
		}
		s.mu.Lock()
		if s.restarts >= s.max {
			s.mu.Unlock()
			s.log.Error("the SPDK target exited and has been restarted too often; not restarting it", "pid", tg.Pid(), "exit", tg.Err(), "restarts", s.max)
			return
		}
		s.restarts++
		n := s.restarts
		s.mu.Unlock()
		s.log.Warn("the SPDK target exited; restarting it", "pid", tg.Pid(), "exit", tg.Err(), "restart", n, "of", s.max, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
		ntg, err := Start(ctx, tg.opt)
		if err != nil {
			s.log.Error("restarting the SPDK target failed", "err", err)
			continue // tg has exited: the loop tries again, counted
		}
		s.mu.Lock()
		s.tg = ntg
		s.mu.Unlock()
	}
}

// Target is the target running now (or the last one, if it exited).
func (s *Supervisor) Target() *Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tg
}

// Restarts is how many times the target was restarted.
func (s *Supervisor) Restarts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restarts
}

// Release stops supervising (a restart in progress is abandoned and its
// child killed) and returns the current target, for the caller to Stop.
func (s *Supervisor) Release() *Target {
	s.cancel()
	<-s.done
	return s.Target()
}
