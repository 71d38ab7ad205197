package logcap

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestBurstThenSuppressed(t *testing.T) {
	var buf bytes.Buffer
	log := New(slog.New(slog.NewTextHandler(&buf, nil)), 5, time.Hour).With("conn", 1)
	for i := range 1000 {
		log.Warn("bad request", "i", i)
	}
	if n := strings.Count(buf.String(), "\n"); n != 5 {
		t.Fatalf("%d lines logged for 1000 records with a burst of 5", n)
	}
	if !strings.Contains(buf.String(), "conn=1") {
		t.Fatalf("attributes lost: %s", buf.String())
	}
}

// The bucket runs on the records' own times, so the test sets them.
func TestSuppressedCountReported(t *testing.T) {
	var buf bytes.Buffer
	h := New(slog.New(slog.NewTextHandler(&buf, nil)), 1, time.Second).Handler()
	at := time.Now()
	emit := func(msg string, d time.Duration) {
		h.Handle(context.Background(), slog.NewRecord(at.Add(d), slog.LevelWarn, msg, 0))
	}
	emit("one", 0)
	for i := range 50 {
		emit("dropped", time.Duration(i)*time.Millisecond)
	}
	emit("later", 2*time.Second)
	if strings.Contains(buf.String(), "dropped") || !strings.Contains(buf.String(), "msg=later log_lines_suppressed=50") {
		t.Fatalf("want the 50 dropped records counted on the next one that passes: %s", buf.String())
	}
}

func TestWire(t *testing.T) {
	if got := Wire("t/v"); got != `"t/v"` {
		t.Fatalf("short: %s", got)
	}
	got := Wire(strings.Repeat("x", 4096))
	if len(got) > MaxWire+40 || !strings.Contains(got, "(4096 bytes)") {
		t.Fatalf("long: %s", got)
	}
	if got := Wire([]byte("a\x1bb")); got != `"a\x1bb"` {
		t.Fatalf("control bytes not escaped: %s", got)
	}
}

// TestClientsShareBudget: a client's connections share one budget.
func TestClientsShareBudget(t *testing.T) {
	var buf bytes.Buffer
	cs := NewClients(slog.New(slog.NewTextHandler(&buf, nil)), 5, time.Hour)
	for range 100 { // a new connection per record
		cs.For("127.0.0.1").Warn("bad")
	}
	cs.For("127.0.0.2").Warn("other client")
	if n := strings.Count(buf.String(), "\n"); n != 6 {
		t.Fatalf("%d lines: want 5 for the flooding client and 1 for the other:\n%s", n, buf.String())
	}
}
