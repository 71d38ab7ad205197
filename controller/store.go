package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// ErrNotLeader: a write reached a replica that does not lead, or a
// deposed leader's fenced write was refused. The error names the leader
// when one is known.
const ErrNotLeader = Error("not the leader")

// NotLeaderError is the ErrNotLeader a follower returns: Leader is the
// leading replica's URL ("" when none is elected right now).
type NotLeaderError struct {
	Leader string
}

func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return "this controller replica is not the leader and no leader is elected right now: retry shortly"
	}
	return fmt.Sprintf("this controller replica is not the leader: send writes to the leader at %s", e.Leader)
}

// Unwrap makes errors.Is(err, ErrNotLeader) hold.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// Store keeps the controller's desired state: SLOs, the gateway registry
// and the generation. Keys are relative ("slo/<tenant>", "gw/<id>").
// Reports, assignments and liveness are not stored: a controller rebuilds
// them from the gateways' reports.
type Store interface {
	// Load reads every SLO and registration. Any error is fatal to the
	// caller: a failed read must never look like empty desired state.
	Load(ctx context.Context) (map[string]SLO, map[string]GatewayRegistration, error)
	// NextGeneration stores and returns a generation greater than the
	// stored one and not less than now's second.
	NextGeneration(ctx context.Context, now time.Time) (uint64, error)
	// Put stores v as JSON under key; Delete removes key. On a replicated
	// store both are fenced on this replica's leadership.
	Put(ctx context.Context, key string, v any) error
	Delete(ctx context.Context, key string) error
	// Term is nonzero while this replica may write (for a replicated
	// store: leads); a new value means a new term. Leader names the
	// leading replica ("" if unknown).
	Term() uint64
	Leader(ctx context.Context) string
	Close() error
}

// decodeRecord decodes one stored record into slos or gws by its relative
// key; keys of other kinds are skipped.
func decodeRecord(key string, v []byte, slos map[string]SLO, gws map[string]GatewayRegistration) error {
	var err error
	switch {
	case strings.HasPrefix(key, keySLO):
		var s SLO
		if err = json.Unmarshal(v, &s); err == nil {
			if err = s.Validate(); err == nil {
				slos[s.Tenant] = s
			}
		}
	case strings.HasPrefix(key, keyGateway):
		var g GatewayRegistration
		if err = json.Unmarshal(v, &g); err == nil {
			if err = g.Validate(); err == nil {
				gws[g.ID] = g
			}
		}
	}
	if err != nil {
		return fmt.Errorf("record %q: %w", key, err)
	}
	return nil
}

// nextGen is the generation after prev at now.
func nextGen(prev uint64, now time.Time) uint64 {
	return max(prev+1, uint64(max(now.Unix(), 1)))
}
