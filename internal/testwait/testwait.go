// Package testwait is how tests wait for evidence (a counter reaching a
// value, a connection leaving a registry) instead of sleeping a fixed time:
// For polls a condition until it holds, and fails the test only when it
// has not held for a long time, so a loaded CI machine slows a test down
// but does not fail it.
package testwait

import (
	"testing"
	"time"
)

// Timeout is how long For waits before it fails the test.
const Timeout = 30 * time.Second

// For polls cond until it returns true, and fails t (naming what it waited
// for) if it has not after Timeout.
func For(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Poll(Timeout, cond) {
		t.Fatalf("%s: not after %v", what, Timeout)
	}
}

// Poll polls cond until it returns true (true) or limit has passed
// (false): for a caller that words its own failure, waits longer than
// Timeout, or waits outside the test's goroutine. The poll interval starts
// at 100 µs and doubles up to 10 ms, so a condition that holds soon is
// seen soon.
func Poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for pause := 100 * time.Microsecond; !cond(); pause = min(2*pause, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
	}
	return true
}
