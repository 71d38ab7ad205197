package badgerlog

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

var _ badger.Logger = Logger{}

// records is an slog.Handler that keeps every record at any level.
type records struct {
	mu  sync.Mutex
	got []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, rec)
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

func TestLevelsAndComponent(t *testing.T) {
	h := &records{}
	l := New(slog.New(h))
	l.Errorf("e %d", 1)
	l.Warningf("w %s", "x")
	l.Infof("i %v", true)
	l.Debugf("d")
	want := []struct {
		level slog.Level
		msg   string
	}{{slog.LevelError, "e 1"}, {slog.LevelWarn, "w x"}, {slog.LevelDebug, "i true"}}
	if len(h.got) != len(want) {
		t.Fatalf("%d records, want %d (Debugf drops its line)", len(h.got), len(want))
	}
	for i, w := range want {
		rec := h.got[i]
		if rec.Level != w.level || rec.Message != w.msg {
			t.Errorf("record %d: %v %q, want %v %q", i, rec.Level, rec.Message, w.level, w.msg)
		}
		var comp string
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "component" {
				comp = a.Value.String()
			}
			return true
		})
		if comp != "badger" {
			t.Errorf("record %d: component %q, want badger", i, comp)
		}
	}
}
