package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

func uri(sock, name string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, sock)
}

func TestNbdinfo(t *testing.T) {
	testtool.Need(t, "nbdinfo")
	m, sock := newTestServer(t, 64<<20, Options{})
	m.put(bytes.Repeat([]byte{1}, 1<<20), 4<<20) // data at [4M, 5M)

	out := run(t, "nbdinfo", "--json", uri(sock, testName))
	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name         string   `json:"export-name"`
			Size         int64    `json:"export-size"`
			CanFlush     bool     `json:"can_flush"`
			CanFUA       bool     `json:"can_fua"`
			CanTrim      bool     `json:"can_trim"`
			CanZero      bool     `json:"can_zero"`
			CanFastZero  bool     `json:"can_fast_zero"`
			CanMultiConn bool     `json:"can_multi_conn"`
			CanCache     bool     `json:"can_cache"`
			CanDF        bool     `json:"can_df"`
			IsReadOnly   bool     `json:"is_read_only"`
			Contexts     []string `json:"contexts"`
			BlockMin     int      `json:"block_size_minimum"`
			BlockPref    int      `json:"block_size_preferred"`
			BlockMax     int      `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo json: %v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e := info.Exports[0]
	if e.Name != testName || e.Size != 64<<20 || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero ||
		!e.CanMultiConn || !e.CanCache || !e.CanDF || e.IsReadOnly || e.CanFastZero || !info.Structured {
		t.Fatalf("nbdinfo reports %+v\n%s", e, out)
	}
	if e.BlockMin != 1 || e.BlockPref != 4096 || e.BlockMax != DefaultMaxPayload {
		t.Errorf("block sizes %d/%d/%d", e.BlockMin, e.BlockPref, e.BlockMax)
	}
	if len(e.Contexts) != 1 || e.Contexts[0] != metaAllocation {
		t.Errorf("contexts %q", e.Contexts)
	}

	// --map: hole, data, hole.
	out = run(t, "nbdinfo", "--map", uri(sock, testName))
	var got [][3]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("map line %q", line)
		}
		got = append(got, [3]string{f[0], f[1], f[2]})
	}
	want := [][3]string{{"0", "4194304", "3"}, {"4194304", "1048576", "0"}, {"5242880", "61865984", "3"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n%s\nwant %v", out, want)
	}

	// --list shows both exports.
	out = run(t, "nbdinfo", "--list", "--json", fmt.Sprintf("nbd+unix://?socket=%s", sock))
	if !strings.Contains(out, `"`+testName+`"`) || !strings.Contains(out, `"other/vol"`) {
		t.Fatalf("nbdinfo --list:\n%s", out)
	}

	// Read-only server.
	_, rosock := newTestServer(t, 1<<20, Options{ReadOnly: true})
	out = run(t, "nbdinfo", "--json", uri(rosock, testName))
	if !strings.Contains(out, `"is_read_only": true`) {
		t.Fatalf("read-only nbdinfo:\n%s", out)
	}
	if m.outside.Load() != 0 {
		t.Fatal("out-of-bounds request reached the export")
	}
}

func TestQemuIO(t *testing.T) {
	testtool.Need(t, "qemu-io")
	m, sock := newTestServer(t, 16<<20, Options{})
	u := uri(sock, testName)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 1M 64k",
		"-c", "write -z 2M 1M", "-c", "discard 1M 4k", "-c", "aio_write -P 0x11 3M 4k",
		"-c", "aio_write -P 0x22 4M 4k", "-c", "aio_flush", "-c", "flush", u)
	out := run(t, "qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1M", "-c", "read -P 0 1M 4k",
		"-c", "read -P 0xcd 1028k 60k", "-c", "read -P 0 2M 1M", "-c", "read -P 0x11 3M 4k",
		"-c", "read -P 0x22 4M 4k", u)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io read:\n%s", out)
	}
	if m.flushes.Load() == 0 {
		t.Error("qemu-io flush did not reach the export")
	}
	// Unaligned IO.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1000 3000", u)
	out = run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 1000 3000", "-c", "read -P 0xab 0 1000", u)
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io unaligned:\n%s", out)
	}
	// Past the end fails cleanly.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, _ := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "read 16M 4k", u).CombinedOutput()
	if !strings.Contains(string(b), "failed") && !strings.Contains(string(b), "error") {
		t.Fatalf("read past end did not fail:\n%s", b)
	}
	if m.outside.Load() != 0 {
		t.Fatal("out-of-bounds request reached the export")
	}
}

func TestNbdcopy(t *testing.T) {
	testtool.Need(t, "nbdcopy")
	m, sock := newTestServer(t, 32<<20, Options{})
	src := filepath.Join(t.TempDir(), "src.img")
	data := make([]byte, 32<<20)
	for i := 0; i < len(data); i += 1 << 20 {
		if (i>>20)%3 != 0 {
			continue // leave sparse regions
		}
		for j := i; j < i+(1<<20); j++ {
			data[j] = byte(j * 7)
		}
	}
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// File → NBD with 4 connections (multi-conn), then NBD → file.
	run(t, "nbdcopy", "--connections=4", "--requests=32", src, uri(sock, testName))
	dst := filepath.Join(t.TempDir(), "dst.img")
	run(t, "nbdcopy", uri(sock, testName), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy round trip differs")
	}
	if m.outside.Load() != 0 {
		t.Fatal("out-of-bounds request reached the export")
	}
}
