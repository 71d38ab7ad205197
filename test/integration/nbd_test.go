package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
)

const MiB = 1 << 20

func TestQemuIOPatterns(t *testing.T) {
	testtool.Need(t, "qemu-io")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/vm", "1G")
	uri := g.uri("acme/vm")
	// Aligned, unaligned, chunk-straddling, and a hole in between; FUA and
	// flush; zero and discard.
	qemuIO(t, uri,
		"write -P 0xa1 0 1M",
		"write -P 0xb2 1048577 4097",
		"write -P 0xc3 65000 1000",
		"write -f -P 0xd4 512M 128k",
		"flush",
		"write -P 0xe5 900M 2M",
		"write -z 900M 64k",
		"discard 960M 64k",
	)
	qemuIO(t, uri,
		"read -P 0xa1 0 65000",
		"read -P 0xc3 65000 1000",
		"read -P 0xa1 66000 982576",
		"read -P 0x00 1M 1",
		"read -P 0xb2 1048577 4097",
		"read -P 0x00 2M 500M", // never written: a hole
		"read -P 0xd4 512M 128k",
		"read -P 0x00 900M 64k",
		"read -P 0xe5 901M 1M",
		"read -P 0x00 1023M 1M",
	)
}

type nbdinfoJSON struct {
	Exports []struct {
		Name         string   `json:"export-name"`
		Size         int64    `json:"export-size"`
		CanFlush     bool     `json:"can_flush"`
		CanFUA       bool     `json:"can_fua"`
		CanTrim      bool     `json:"can_trim"`
		CanZero      bool     `json:"can_zero"`
		CanMultiConn bool     `json:"can_multi_conn"`
		IsReadOnly   bool     `json:"is_read_only"`
		Contexts     []string `json:"contexts"`
	} `json:"exports"`
}

func TestNbdinfo(t *testing.T) {
	testtool.Need(t, "nbdinfo", "qemu-io")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/disk", "256M")
	uri := g.uri("acme/disk")
	var info nbdinfoJSON
	if err := json.Unmarshal([]byte(run(t, time.Minute, "nbdinfo", "--json", uri)), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %+v", info)
	}
	e := info.Exports[0]
	if e.Size != 256*MiB || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanMultiConn || e.IsReadOnly {
		t.Fatalf("nbdinfo export: %+v", e)
	}
	if !strings.Contains(strings.Join(e.Contexts, ","), "base:allocation") {
		t.Fatalf("base:allocation not offered: %v", e.Contexts)
	}

	// Data at [1M, 3M) and [128M, 128M+64K); everything else is a hole.
	qemuIO(t, uri, "write -P 1 1M 2M", "write -P 2 128M 64k")
	type ext struct {
		Offset int64 `json:"offset"`
		Length int64 `json:"length"`
		Type   int   `json:"type"`
	}
	var m []ext
	if err := json.Unmarshal([]byte(run(t, time.Minute, "nbdinfo", "--map", "--json", uri)), &m); err != nil {
		t.Fatal(err)
	}
	want := []ext{{0, MiB, 3}, {MiB, 2 * MiB, 0}, {3 * MiB, 125 * MiB, 3}, {128 * MiB, 64 << 10, 0}, {128*MiB + 64<<10, 128*MiB - 64<<10, 3}}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n got %v\nwant %v (type 3 = hole,zero; 0 = data)", m, want)
	}

	// The export list names every volume as tenant/name.
	g.createVolume("other/x", "1M")
	list := run(t, time.Minute, "nbdinfo", "--list", "--json", fmt.Sprintf("nbd+unix:///?socket=%s", g.nbdSock))
	if !strings.Contains(list, `"acme/disk"`) || !strings.Contains(list, `"other/x"`) {
		t.Fatalf("nbdinfo --list:\n%s", list)
	}
}

func TestNbdcopyRoundTrip(t *testing.T) {
	testtool.Need(t, "nbdcopy")
	dir := t.TempDir()
	g := startGateway(t, dir)
	g.createVolume("acme/img", "256M")
	src := filepath.Join(t.TempDir(), "src")
	data := make([]byte, 256*MiB)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	run(t, 5*time.Minute, "nbdcopy", "--flush", src, g.uri("acme/img"))
	dst := filepath.Join(t.TempDir(), "dst")
	run(t, 5*time.Minute, "nbdcopy", g.uri("acme/img"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != want {
		t.Fatal("nbdcopy out differs from what nbdcopy put in")
	}
	// And it survives a restart.
	g.stop()
	g.restart()
	os.Remove(dst)
	run(t, 5*time.Minute, "nbdcopy", g.uri("acme/img"), dst)
	got, _ = os.ReadFile(dst)
	if sha256.Sum256(got) != want {
		t.Fatal("data differs after a gateway restart")
	}
}

func TestFioVerify(t *testing.T) {
	testtool.Need(t, "fio")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/fio", "512M")
	for _, job := range [][]string{
		{"--rw=randwrite", "--bs=4k", "--size=128m"},
		{"--rw=randwrite", "--bsrange=512-256k", "--size=256m"},
		{"--rw=write", "--bs=1m", "--size=256m", "--offset=256m"},
	} {
		args := append([]string{"--name=verify", "--ioengine=nbd", "--uri=" + g.uri("acme/fio"),
			"--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--thread"}, job...)
		out := run(t, 5*time.Minute, "fio", args...)
		if !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
			t.Fatalf("fio %v:\n%s", job, out)
		}
	}
}

func TestThinProvisioningAndTrim(t *testing.T) {
	testtool.Need(t, "qemu-io")
	g := startGateway(t, t.TempDir())
	g.createVolume("acme/thin", "10G")
	before := g.poolAllocated()
	qemuIO(t, g.uri("acme/thin"), "write -P 7 3G 100M", "flush")
	used := g.poolAllocated() - before
	if used < 100*MiB || used > 110*MiB {
		t.Fatalf("10GiB volume with 100MiB written uses %d MiB of the pool file", used/MiB)
	}
	if st := g.stats(); st.Pool.Used != 100*MiB || st.Volumes[0].Allocated != 100*MiB {
		t.Fatalf("stats: pool used %d, volume allocated %d; want 100MiB", st.Pool.Used, st.Volumes[0].Allocated)
	}
	qemuIO(t, g.uri("acme/thin"), "discard 3G 100M", "flush", "read -P 0 3G 100M")
	if after := g.poolAllocated() - before; after > 2*MiB {
		t.Fatalf("after TRIM the pool file still holds %d MiB", after/MiB)
	}
	if st := g.stats(); st.Pool.Used != 0 {
		t.Fatalf("after TRIM and flush pool used %d, want 0", st.Pool.Used)
	}
	// Deleting a volume returns its space too.
	g.createVolume("acme/gone", "1G")
	qemuIO(t, g.uri("acme/gone"), "write -P 9 0 64M")
	g.mustSluice("volume", "delete", "acme/gone")
	if st := g.stats(); st.Pool.Used != 0 {
		t.Fatalf("after delete pool used %d, want 0", st.Pool.Used)
	}
}
