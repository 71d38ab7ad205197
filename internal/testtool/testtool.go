// Package testtool finds the external programs that tests drive (qemu-io,
// nbdinfo, fio, mkfs.ext4, ...). A missing program skips the test on a
// developer's machine and fails it under CI=true, where `make deps` must
// have installed everything: CI never passes by skipping.
package testtool

import (
	"os"
	"os/exec"
	"testing"
)

// Need checks that every named program is on PATH; for the first one that
// is not, it skips t, or fails it when CI=true.
func Need(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if Path(t, n) == "" {
			return
		}
	}
}

// Path returns the path of the named program on PATH. When it is missing it
// skips t, or fails it when CI=true.
func Path(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed (make deps installs it); CI=true requires it", name)
	} else {
		t.Skipf("%s is not installed (make deps installs it)", name)
	}
	return ""
}
