package qos

// Bucket indices within a queue: each of the six limits is one bucket.
const (
	bIOPS = iota
	bBPS
	bReadIOPS
	bReadBPS
	bWriteIOPS
	bWriteBPS
	numBuckets
)

// bucket is a token bucket used as a meter with debt, as QEMU's throttling
// does: a request may go when the level is not negative, and then takes its
// whole amount, possibly driving the level below zero. So a request larger
// than the bank is never stuck, and over any window of length T a bucket
// lets through at most rate×T + depth plus one request.
//
// Times are seconds since the scheduler's epoch. A bucket with rate 0 is
// disabled: always ready, takes nothing.
type bucket struct {
	rate  float64 // tokens per second; 0 = no limit
	depth float64 // maximum level: rate × burst
	level float64 // tokens available now (negative = debt)
	last  float64 // time of the last refill
}

// set changes the rate and bank of b at time now, keeping what was accrued
// at the old rate. A bucket that is switched on starts empty (no bank), so a
// new limit holds from its first second.
func (b *bucket) set(rate, burstSeconds, now float64) {
	if rate <= 0 {
		*b = bucket{}
		return
	}
	if b.rate == 0 {
		*b = bucket{rate: rate, depth: rate * burstSeconds, last: now}
		return
	}
	b.refill(now)
	b.rate = rate
	b.depth = rate * burstSeconds
	if b.level > b.depth {
		b.level = b.depth
	}
}

func (b *bucket) refill(now float64) {
	if now <= b.last {
		return
	}
	b.level += (now - b.last) * b.rate
	if b.level > b.depth {
		b.level = b.depth
	}
	b.last = now
}

// wait returns 0 if b lets a request through at now, or else how many
// seconds until it will (assuming nothing else takes from it).
func (b *bucket) wait(now float64) float64 {
	if b.rate == 0 {
		return 0
	}
	b.refill(now)
	// Tolerate float rounding worth up to a nanosecond of refill, so a
	// timer set for the computed instant does find the bucket ready.
	if b.level >= -b.rate*1e-9 {
		return 0
	}
	return -b.level / b.rate
}

// take charges amount tokens at now.
func (b *bucket) take(amount, now float64) {
	if b.rate == 0 {
		return
	}
	b.refill(now)
	b.level -= amount
}
