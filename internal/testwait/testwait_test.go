package testwait

import (
	"sync/atomic"
	"testing"
)

// For returns once the condition holds, having asked until it did.
func TestForSeesEvidence(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 5 {
			n.Add(1)
		}
	}()
	calls := 0
	For(t, "five increments", func() bool { calls++; return n.Load() == 5 })
	if n.Load() != 5 || calls == 0 {
		t.Fatalf("returned with n=%d after %d calls", n.Load(), calls)
	}
}
