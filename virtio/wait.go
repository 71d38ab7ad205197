package virtio

import "github.com/sluice-storage/sluice/internal/waiter"

// The pollers' waiting (package doc, "Waiting for work") lives in
// internal/waiter, shared with the shim door; these names keep virtio's
// options as they were.

// WaitMode says how a queue's poller waits for work: new requests on the
// target, completions on the initiator.
type WaitMode = waiter.Mode

// Wait modes (internal/waiter's doc gives the algorithm).
const (
	WaitAdaptive = waiter.Adaptive
	WaitEventfd  = waiter.Eventfd
	WaitPoll     = waiter.Poll
)

// WaitOptions tune a poller. The zero value is the default adaptive mode.
type WaitOptions = waiter.Options

// WaitStats count what the pollers of a client or server did while
// waiting, summed over their queues.
type WaitStats = waiter.Stats

// ParseWaitMode parses "adaptive", "eventfd" or "poll".
func ParseWaitMode(s string) (WaitMode, error) { return waiter.ParseMode(s) }

// signalFd adds 1 to an eventfd (a kick or a call).
func signalFd(fd int) { waiter.Signal(fd) }
