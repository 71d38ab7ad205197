// Package badgerlog sends badger's log lines to a log/slog logger. Both
// badger databases (the gateway store's metadata and the controller's
// state) log through it, so their lines look alike: each carries
// component=badger, errors and warnings keep their level, badger's info
// lines (compactions, flushes) go to debug and its debug lines are dropped.
package badgerlog

import (
	"fmt"
	"log/slog"
)

// Logger is a badger.Logger that writes to an slog.Logger.
type Logger struct{ l *slog.Logger }

// New returns a Logger writing to l.
func New(l *slog.Logger) Logger { return Logger{l: l} }

// Errorf logs an error line.
func (b Logger) Errorf(f string, a ...any) {
	b.l.Error(fmt.Sprintf(f, a...), "component", "badger")
}

// Warningf logs a warning line.
func (b Logger) Warningf(f string, a ...any) {
	b.l.Warn(fmt.Sprintf(f, a...), "component", "badger")
}

// Infof logs an info line at debug level: badger's info lines are routine.
func (b Logger) Infof(f string, a ...any) {
	b.l.Debug(fmt.Sprintf(f, a...), "component", "badger")
}

// Debugf drops the line.
func (b Logger) Debugf(string, ...any) {}
