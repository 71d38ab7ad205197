package qos

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// JSON forms of Limits and QueueStats, as the admin API, the stored QoS
// rules and the controller's assignments carry them: snake_case keys,
// durations as seconds in keys that end in _seconds (docs/CLI.md).

// seconds is d in seconds, the unit of every duration in JSON.
func seconds(d time.Duration) float64 { return d.Seconds() }

// fromSeconds is the duration of s seconds, to the nanosecond.
func fromSeconds(s float64) time.Duration {
	return time.Duration(math.Round(s * float64(time.Second)))
}

// limitsFields are Limits' fields other than Burst, which has no JSON tag
// of its own (json:"-"): the methods below write it as burst_seconds.
type limitsFields Limits

// MarshalJSON writes Burst as burst_seconds.
func (l Limits) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		limitsFields
		BurstSeconds float64 `json:"burst_seconds,omitempty"`
	}{limitsFields(l), seconds(l.Burst)})
}

// UnmarshalJSON reads burst_seconds, and burst in nanoseconds as rules
// stored before burst_seconds have it. Unknown keys are an error, so that
// a misspelt limit is refused rather than ignored.
func (l *Limits) UnmarshalJSON(b []byte) error {
	var w struct {
		limitsFields
		BurstSeconds *float64 `json:"burst_seconds"`
		BurstNanos   *int64   `json:"burst"` // the old form
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	*l = Limits(w.limitsFields)
	switch {
	case w.BurstSeconds != nil:
		l.Burst = fromSeconds(*w.BurstSeconds)
	case w.BurstNanos != nil:
		l.Burst = time.Duration(*w.BurstNanos)
	}
	return nil
}

// queueStatsJSON is QueueStats in JSON: the per-class counters under
// their class's name.
type queueStatsJSON struct {
	Name             string  `json:"name"`
	Limits           Limits  `json:"limits"`
	AdmittedOps      uint64  `json:"admitted_ops"`
	AdmittedBytes    uint64  `json:"admitted_bytes"`
	ReservedOps      uint64  `json:"reserved_ops"`
	ThrottledSeconds float64 `json:"throttled_seconds"`
	Depth            int     `json:"depth"`
	InFlight         int     `json:"in_flight"`
	Classes          struct {
		Read  classStatsJSON `json:"read"`
		Write classStatsJSON `json:"write"`
		Other classStatsJSON `json:"other"`
	} `json:"classes"`
}

type classStatsJSON struct {
	Ops           uint64  `json:"ops"`
	Bytes         uint64  `json:"bytes"`
	Units         uint64  `json:"units"`
	WaitedSeconds float64 `json:"waited_seconds"`
	Depth         int     `json:"depth"`
	InFlight      int     `json:"in_flight"`
}

func (c ClassStats) toJSON() classStatsJSON {
	return classStatsJSON{Ops: c.Ops, Bytes: c.Bytes, Units: c.Units,
		WaitedSeconds: seconds(c.Waited), Depth: c.Depth, InFlight: c.InFlight}
}

func (c classStatsJSON) stats() ClassStats {
	return ClassStats{Ops: c.Ops, Bytes: c.Bytes, Units: c.Units,
		Waited: fromSeconds(c.WaitedSeconds), Depth: c.Depth, InFlight: c.InFlight}
}

// MarshalJSON writes the snake_case form (queueStatsJSON).
func (s QueueStats) MarshalJSON() ([]byte, error) {
	w := queueStatsJSON{Name: s.Name, Limits: s.Limits, AdmittedOps: s.AdmittedOps,
		AdmittedBytes: s.AdmittedBytes, ReservedOps: s.ReservedOps,
		ThrottledSeconds: seconds(s.ThrottledTime), Depth: s.Depth, InFlight: s.InFlight}
	w.Classes.Read = s.Classes[Read].toJSON()
	w.Classes.Write = s.Classes[Write].toJSON()
	w.Classes.Other = s.Classes[Other].toJSON()
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *QueueStats) UnmarshalJSON(b []byte) error {
	var w queueStatsJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return fmt.Errorf("queue stats: %w", err)
	}
	*s = QueueStats{Name: w.Name, Limits: w.Limits, AdmittedOps: w.AdmittedOps,
		AdmittedBytes: w.AdmittedBytes, ReservedOps: w.ReservedOps,
		ThrottledTime: fromSeconds(w.ThrottledSeconds), Depth: w.Depth, InFlight: w.InFlight}
	s.Classes[Read] = w.Classes.Read.stats()
	s.Classes[Write] = w.Classes.Write.stats()
	s.Classes[Other] = w.Classes.Other.stats()
	return nil
}
