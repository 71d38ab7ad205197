package testtool

import (
	"os"
	"path/filepath"
	"testing"
)

// recorder is a testing.TB whose Skipf and Fatalf record the call instead of
// stopping the test, so the outcome of Need and Path can be checked.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(f string, a ...any) {
	if r.skipped == "" {
		r.skipped = f
	}
}
func (r *recorder) Fatalf(f string, a ...any) {
	if r.failed == "" {
		r.failed = f
	}
}

// pathWith sets PATH to a new directory holding one executable, name.
func pathWith(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	return p
}

func TestPathFindsProgram(t *testing.T) {
	want := pathWith(t, "sluice-test-tool")
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := &recorder{TB: t}
		if got := Path(r, "sluice-test-tool"); got != want {
			t.Errorf("CI=%q: Path = %q, want %q", ci, got, want)
		}
		Need(r, "sluice-test-tool")
		if r.skipped != "" || r.failed != "" {
			t.Errorf("CI=%q: a present program skipped (%q) or failed (%q)", ci, r.skipped, r.failed)
		}
	}
}

func TestMissingProgramSkipsOutsideCI(t *testing.T) {
	pathWith(t, "sluice-test-tool")
	t.Setenv("CI", "")
	r := &recorder{TB: t}
	if got := Path(r, "sluice-no-such-tool"); got != "" {
		t.Errorf("Path of a missing program = %q", got)
	}
	if r.skipped == "" || r.failed != "" {
		t.Errorf("outside CI a missing program must skip: skipped %q, failed %q", r.skipped, r.failed)
	}
}

func TestMissingProgramFailsInCI(t *testing.T) {
	pathWith(t, "sluice-test-tool")
	t.Setenv("CI", "true")
	r := &recorder{TB: t}
	Need(r, "sluice-test-tool", "sluice-no-such-tool")
	if r.failed == "" || r.skipped != "" {
		t.Errorf("under CI=true a missing program must fail, never skip: skipped %q, failed %q", r.skipped, r.failed)
	}
}
