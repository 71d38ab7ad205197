package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
)

// WatchdogFromEnv returns the watchdog interval the manager asks of this
// process (WATCHDOG_USEC), or 0 when none is: the variable is unset, or
// WATCHDOG_PID names another process. It unsets both variables.
func WatchdogFromEnv() (time.Duration, error) {
	usec, _ := os.LookupEnv("WATCHDOG_USEC")
	pid, _ := os.LookupEnv("WATCHDOG_PID")
	os.Unsetenv("WATCHDOG_USEC")
	os.Unsetenv("WATCHDOG_PID")
	return parseWatchdog(usec, pid, os.Getpid())
}

// parseWatchdog is sd_watchdog_enabled on the variables' values ("" for
// unset) and our pid.
func parseWatchdog(usec, pid string, self int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	u, err := strconv.ParseUint(usec, 10, 64)
	// USEC_INFINITY (2^64-1) and anything that overflows a Duration are
	// not an interval.
	if err != nil || u == 0 || u > uint64(1<<63-1)/uint64(time.Microsecond) {
		return 0, fmt.Errorf("WATCHDOG_USEC %q: want a positive number of microseconds", usec)
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil || p <= 0 {
			return 0, fmt.Errorf("WATCHDOG_PID %q: not a pid", pid)
		}
		if p != self {
			return 0, nil // meant for another process (our parent)
		}
	}
	return time.Duration(u) * time.Microsecond, nil
}

// Watchdog is how RunWatchdog pings.
type Watchdog struct {
	// Interval is the manager's (WatchdogFromEnv); pings go at half of it.
	Interval time.Duration
	// Check reports the daemon's health before each ping; an error skips
	// the ping. It is given half the interval. Nil: always healthy.
	Check func(context.Context) error
	// Status is the STATUS line sent when a failing check passes again
	// (replacing "unhealthy: ..."); empty sends "healthy".
	Status string
	// Log receives failed checks and sends; nil is silent.
	Log *slog.Logger
}

// RunWatchdog sends WATCHDOG=1 at once and then every Interval/2 while
// w.Check passes, until ctx ends. A failed check sends no ping and sets
// STATUS to say why; the manager kills the daemon if checks keep failing
// for the whole interval. It returns at once on a nil Notifier or a zero
// Interval.
func (n *Notifier) RunWatchdog(ctx context.Context, w Watchdog) {
	if n == nil || w.Interval <= 0 {
		return
	}
	period := w.Interval / 2
	tick := time.NewTicker(period)
	defer tick.Stop()
	failing := false
	for {
		err := w.check(ctx, period)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing && w.Log != nil {
				w.Log.Error("watchdog: health check failed; not pinging the service manager", "err", err)
			}
			failing = true
			n.Status("unhealthy: " + err.Error())
		default:
			if failing {
				w.recovered(n)
			}
			failing = false
			if err := n.WatchdogPing(); err != nil && w.Log != nil {
				w.Log.Warn("watchdog ping", "err", err)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

func (w Watchdog) recovered(n *Notifier) {
	if w.Log != nil {
		w.Log.Info("watchdog: health check passes again")
	}
	status := w.Status
	if status == "" {
		status = "healthy"
	}
	n.Status(status)
}

func (w Watchdog) check(ctx context.Context, limit time.Duration) error {
	if w.Check == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	return w.Check(cctx)
}
