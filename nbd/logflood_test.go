package nbd

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// brokenExports fails every lookup with an error the server logs.
type brokenExports struct{}

func (brokenExports) Lookup(string) (Export, error) { return nil, errors.New("backend unavailable") }
func (brokenExports) Names() []string               { return nil }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogFloodCapped: one client sending thousands of options with 4 KB
// export names that make the server log, over several connections, costs
// a bounded number of short log lines: the budget is the client's (its
// uid here), not the connection's (issue 17: 81,000 NBD_OPT_INFO grew
// the log by 628 MiB).
func TestLogFloodCapped(t *testing.T) {
	var logs lockedBuffer
	_, sock := startServer(t, brokenExports{}, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	name := strings.Repeat("x", 4000)
	const conns, perConn = 3, 1000 // the server hangs up after 1024 options: a flood reconnects
	n := conns * perConn
	for range conns {
		rc := dial(t, sock)
		rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
		for range perConn {
			rc.sendOpt(optInfo, infoData(name))
			if r := rc.readOptReply(); r.typ != repErrUnknown {
				t.Fatalf("reply %#x, want an error", r.typ)
			}
		}
	}
	out := logs.String()
	lines := strings.Count(out, "\n")
	if lines > 40 || len(out) > 40*400 {
		t.Fatalf("%d options made %d log lines, %d bytes", n, lines, len(out))
	}
	if strings.Contains(out, strings.Repeat("x", 100)) {
		t.Fatal("a log line holds the client's whole export name")
	}
	t.Logf("%d options: %d log lines, %d bytes", n, lines, len(out))
}
