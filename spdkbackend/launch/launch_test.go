package launch

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/spdktest"
	"github.com/sluice-storage/sluice/internal/testwait"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// TestStartStop: the vhost target started with --wait-for-rpc is
// initialised when Start returns (a runtime method works, a second
// framework_start_init is refused); a second target on the same socket is
// refused; SIGTERM stops it, with exit status 0, and its socket no longer
// answers.
func TestStartStop(t *testing.T) {
	dir := spdktest.Dir(t)
	spdktest.ReserveHugePages(t, 300)
	run, err := os.MkdirTemp("", "launch")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	opt := Options{Program: filepath.Join(dir, "bin", "vhost"), RPCSocket: filepath.Join(run, "rpc.sock"), LogPath: filepath.Join(run, "spdk.log"), StopTimeout: 5 * time.Second}
	tg, err := Start(t.Context(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Stop() })
	rc, err := rpc.Dial(t.Context(), tg.RPCSocket, rpc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := rc.BdevMallocCreate(t.Context(), rpc.MallocBdev{Name: "M0", NumBlocks: 2048, BlockSize: 4096}); err != nil {
		t.Fatalf("a runtime method after Start: %v", err)
	}
	if err := rc.FrameworkStartInit(t.Context()); !errors.Is(err, rpc.ErrAlreadyInitialized) {
		t.Fatalf("framework_start_init after Start: %v", err)
	}
	if _, err := Start(t.Context(), opt); err == nil || !strings.Contains(err.Error(), "already serves") {
		t.Fatalf("a second target on the socket: %v", err)
	}
	if killed := tg.Stop(); killed {
		t.Fatal("the target needed SIGKILL")
	}
	if err := tg.Err(); err != nil {
		t.Fatalf("exit status after SIGTERM: %v", err)
	}
	if _, err := net.Dial("unix", tg.RPCSocket); err == nil {
		t.Fatal("the RPC socket still answers")
	}

}

// TestStopKills: a target that ignores SIGTERM is killed after
// StopTimeout (a shell that traps TERM stands in for a hung SPDK); a
// program that exits at once fails Start with its exit status.
func TestStopKills(t *testing.T) {
	run := t.TempDir()
	sh := filepath.Join(run, "stubborn")
	if err := os.WriteFile(sh, []byte("#!/bin/sh\ntrap '' TERM\necho ready > \"$0.ready\"\nwhile :; do sleep 0.1; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tg, err := spawn(sh, Options{RPCSocket: filepath.Join(run, "rpc.sock"), StopTimeout: time.Second, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the script to trap SIGTERM", func() bool {
		_, err := os.Stat(sh + ".ready")
		return err == nil
	})
	start := time.Now()
	if killed := tg.Stop(); !killed {
		t.Fatalf("Stop of a process ignoring SIGTERM: not killed (exit %v)", tg.Err())
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("killed after %v, before StopTimeout", d)
	}

	quits := filepath.Join(run, "quits")
	if err := os.WriteFile(quits, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Start(t.Context(), Options{Program: quits, RPCSocket: filepath.Join(run, "q.sock"), HugePageDir: fakeHugePages(t, 1000, 0)})
	if err == nil || !strings.Contains(err.Error(), "exited before serving RPC: exit status 3") {
		t.Fatalf("Start of a program that exits: %v", err)
	}
}

func TestResolveProgram(t *testing.T) {
	dir := spdktest.Dir(t)
	for in, want := range map[string]string{
		dir:                                filepath.Join(dir, "bin", "spdk_tgt"),
		filepath.Join(dir, "bin", "vhost"): filepath.Join(dir, "bin", "vhost"),
	} {
		if got, err := ResolveProgram(in); err != nil || got != want {
			t.Errorf("ResolveProgram(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{filepath.Join(dir, "nope"), filepath.Join(dir, "lib")} {
		if _, err := ResolveProgram(bad); err == nil {
			t.Errorf("ResolveProgram(%s) succeeded", bad)
		}
	}
}

// TestHugePagePreflight: Start refuses, before starting anything, when
// fewer 2 MiB huge pages are free than the target takes at start, and
// names the number; spdk_tgt needs more than the vhost app.
func TestHugePagePreflight(t *testing.T) {
	hp := t.TempDir()
	set := func(free, resv int) { writeHugePages(t, hp, free, resv) }
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(bin, "spdk_tgt")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	opt := Options{Program: prog, RPCSocket: filepath.Join(run, "rpc.sock"), MemMiB: 256, HugePageDir: hp}
	set(300, 0)
	_, err := Start(t.Context(), opt)
	if err == nil || !strings.Contains(err.Error(), "takes about 388 free 2 MiB huge pages") || !strings.Contains(err.Error(), "300 are free") {
		t.Fatalf("spdk_tgt with 300 free pages: %v", err)
	}
	set(500, 150) // reserved but not yet faulted pages are not free
	if _, err := Start(t.Context(), opt); err == nil || !strings.Contains(err.Error(), "350 are free") {
		t.Fatalf("spdk_tgt with 500 free, 150 reserved: %v", err)
	}
	if got := pagesNeeded(filepath.Join(bin, "vhost"), 256); got != 258 {
		t.Errorf("vhost at -s 256 needs %d pages, want 258", got)
	}
	// Enough pages: the check passes and the program runs (and fails:
	// it is a stand-in that exits at once).
	set(400, 0)
	if _, err := Start(t.Context(), opt); err == nil || strings.Contains(err.Error(), "huge pages") {
		t.Fatalf("spdk_tgt with 400 free pages: %v; want the stand-in's own failure", err)
	}
}

// fakeHugePages is a directory laid out as the kernel's
// hugepages-2048kB, with free and reserved counts, for a stand-in target.
func fakeHugePages(t *testing.T, free, resv int) string {
	dir := t.TempDir()
	writeHugePages(t, dir, free, resv)
	return dir
}

func writeHugePages(t *testing.T, dir string, free, resv int) {
	t.Helper()
	for name, n := range map[string]int{"free_hugepages": free, "resv_hugepages": resv} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(strconv.Itoa(n)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
