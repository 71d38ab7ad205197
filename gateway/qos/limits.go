package qos

import (
	"fmt"
	"math"
	"time"
)

// Class is the kind of IO a request is, as far as limits are concerned.
type Class uint8

// The classes. Other covers flush, discard, write-zeroes and anything else
// that is neither a read nor a write.
const (
	Read Class = iota
	Write
	Other
	numClasses
)

func (c Class) String() string {
	switch c {
	case Read:
		return "read"
	case Write:
		return "write"
	case Other:
		return "other"
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Error is the type of this package's sentinel errors; they are constants so
// that callers can test them with errors.Is.
type Error string

func (e Error) Error() string { return string(e) }

// Sentinel errors. Errors returned by this package wrap one of these (or a
// context error) with %w.
const (
	ErrInvalidLimits = Error("qos: invalid limits")
	ErrClosed        = Error("qos: queue closed")
	ErrForeignQueue  = Error("qos: queue belongs to another scheduler")
	ErrInvalidClass  = Error("qos: invalid class")
	ErrInvalidBytes  = Error("qos: negative byte count")
)

// Defaults and bounds for Limits fields.
const (
	// DefaultBurst is the bank used when Limits.Burst is 0: 100 ms worth of
	// each limit. Small enough that a limit measured over 1 s after an idle
	// period is off by at most 10 %, and over 20 s by 0.5 %; large enough to
	// absorb Go's ~1 ms timer lateness without losing tokens.
	DefaultBurst = 100 * time.Millisecond
	// MinBurst is the smallest non-zero Burst Validate accepts: below it the
	// bank is shorter than timer lateness and a limit under-delivers.
	MinBurst = 10 * time.Millisecond
	// MaxBurst is the largest Burst Validate accepts.
	MaxBurst = time.Hour
	// DefaultWeight is the weight used when Limits.Weight is 0.
	DefaultWeight = 1.0
	// MinWeight and MaxWeight bound a non-zero weight (the ratio between
	// any two queues' weights is at most 10^7; beyond that the virtual-time
	// arithmetic loses precision).
	MinWeight = 1e-3
	MaxWeight = 1e4
)

// Limits is the service description of one queue. A zero field is unset.
//
// IOPS limits and the IOPS reservation count cost units (see
// Options.CostUnit), not raw operations: at the default 8 KiB unit a 64 KiB
// read costs 8. BPS limits count bytes.
type Limits struct {
	// Hard limits; a request waits until every limit that applies to its
	// class has budget. IOPS and BPS apply to all classes, the Read* ones to
	// reads only and the Write* ones to writes only.
	IOPS      float64 `json:"iops,omitempty"`       // cost units per second
	ReadIOPS  float64 `json:"read_iops,omitempty"`  // cost units per second
	WriteIOPS float64 `json:"write_iops,omitempty"` // cost units per second
	BPS       float64 `json:"bps,omitempty"`        // bytes per second
	ReadBPS   float64 `json:"read_bps,omitempty"`   // bytes per second
	WriteBPS  float64 `json:"write_bps,omitempty"`  // bytes per second

	// Burst is how much of each limit an idle queue may bank: a token
	// bucket of depth limit × Burst. 0 means DefaultBurst.
	Burst time.Duration `json:"-"` // burst_seconds in JSON (json.go)

	// Reservations: minimum service under contention. If both are set the
	// queue gets at least both (whichever is more generous for its IO mix).
	ReservationIOPS float64 `json:"reservation_iops,omitempty"` // cost units per second
	ReservationBPS  float64 `json:"reservation_bps,omitempty"`  // bytes per second

	// Weight is the queue's share of capacity left over after
	// reservations. 0 means DefaultWeight.
	Weight float64 `json:"weight,omitempty"`

	// Priority orders queues in the weight phase: a queue is served from
	// spare capacity only when no queue of higher priority is eligible.
	// Reservations are served before any priority. Default 0.
	Priority int `json:"priority,omitempty"`
}

// Validate reports whether l is usable, with a one-line reason if not. The
// error wraps ErrInvalidLimits.
func (l Limits) Validate() error {
	fields := []struct {
		name string
		v    float64
	}{
		{"IOPS", l.IOPS}, {"ReadIOPS", l.ReadIOPS}, {"WriteIOPS", l.WriteIOPS},
		{"BPS", l.BPS}, {"ReadBPS", l.ReadBPS}, {"WriteBPS", l.WriteBPS},
		{"ReservationIOPS", l.ReservationIOPS}, {"ReservationBPS", l.ReservationBPS},
		{"Weight", l.Weight},
	}
	for _, f := range fields {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return fmt.Errorf("%w: %s is not a finite number", ErrInvalidLimits, f.name)
		}
		if f.v < 0 {
			return fmt.Errorf("%w: %s is negative (%g)", ErrInvalidLimits, f.name, f.v)
		}
	}
	if l.Weight != 0 && (l.Weight < MinWeight || l.Weight > MaxWeight) {
		return fmt.Errorf("%w: Weight %g is outside [%g, %g]", ErrInvalidLimits, l.Weight, MinWeight, MaxWeight)
	}
	if l.Burst < 0 {
		return fmt.Errorf("%w: Burst is negative (%v)", ErrInvalidLimits, l.Burst)
	}
	if l.Burst != 0 && l.Burst < MinBurst {
		return fmt.Errorf("%w: Burst %v is below the minimum %v", ErrInvalidLimits, l.Burst, MinBurst)
	}
	if l.Burst > MaxBurst {
		return fmt.Errorf("%w: Burst %v is above the maximum %v", ErrInvalidLimits, l.Burst, MaxBurst)
	}
	if l.IOPS > 0 && l.ReservationIOPS > l.IOPS {
		return fmt.Errorf("%w: ReservationIOPS %g is above the IOPS limit %g", ErrInvalidLimits, l.ReservationIOPS, l.IOPS)
	}
	if l.BPS > 0 && l.ReservationBPS > l.BPS {
		return fmt.Errorf("%w: ReservationBPS %g is above the BPS limit %g", ErrInvalidLimits, l.ReservationBPS, l.BPS)
	}
	return nil
}

// IsZero reports whether no field of l is set.
func (l Limits) IsZero() bool { return l == Limits{} }

// burst returns the effective bank duration.
func (l Limits) burst() time.Duration {
	if l.Burst == 0 {
		return DefaultBurst
	}
	return l.Burst
}

// weight returns the effective weight.
func (l Limits) weight() float64 {
	if l.Weight == 0 {
		return DefaultWeight
	}
	return l.Weight
}

// hasReservation reports whether a reservation is set.
func (l Limits) hasReservation() bool { return l.ReservationIOPS > 0 || l.ReservationBPS > 0 }
