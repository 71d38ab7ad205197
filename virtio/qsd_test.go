package virtio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/testtool"
)

// qsd is a qemu-storage-daemon serving a raw file as a vhost-user-blk export.
type qsd struct {
	sock, image string
}

// startQSD starts qemu-storage-daemon (package qemu-system-common) on a
// sparse raw file of size bytes; it is killed by PID when the test ends.
func startQSD(t *testing.T, size int64, queues int) *qsd {
	t.Helper()
	bin := testtool.Path(t, "qemu-storage-daemon")
	dir := t.TempDir()
	q := &qsd{sock: filepath.Join(dir, "vhost.sock"), image: filepath.Join(dir, "disk.img")}
	if err := os.WriteFile(q.image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(q.image, size); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin,
		"--blockdev", "driver=file,node-name=file0,filename="+q.image,
		"--blockdev", "driver=raw,node-name=disk0,file=file0",
		"--export", fmt.Sprintf("type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=%s,writable=on,num-queues=%d", q.sock, queues))
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(q.sock); err == nil {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-storage-daemon socket did not appear: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQSDRandomIO: our initiator against a target we did not write, at QD1
// and QD32 in every wait mode; the raw file must end up holding exactly
// what the client wrote.
func TestQSDRandomIO(t *testing.T) {
	const size = 32 << 20
	for _, mode := range []WaitMode{WaitAdaptive, WaitEventfd, WaitPoll} {
		for _, qd := range []int{1, 32} {
			t.Run(fmt.Sprintf("%v/QD%d", mode, qd), func(t *testing.T) {
				q := startQSD(t, size, 2)
				c := dial(t, q.sock, Options{Queues: 2, Wait: WaitOptions{Mode: mode}})
				if c.Size() != size || c.Queues() != 2 {
					t.Fatalf("Size %d Queues %d", c.Size(), c.Queues())
				}
				ops := 150
				if qd > 1 {
					ops = 25
				}
				model := randomIO(t, c, size, qd, ops, 128<<10, uint64(qd)+uint64(mode)*100)
				if err := c.Flush(); err != nil {
					t.Fatal(err)
				}
				if err := c.Close(); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(q.image)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, model) {
					t.Errorf("image differs from the model at byte %d", firstDiff(got, model))
				}
			})
		}
	}
}

func TestQSDCommands(t *testing.T) {
	const size = 16 << 20
	q := startQSD(t, size, 1)
	c := dial(t, q.sock, Options{})
	ctx := context.Background()
	id, err := c.GetID(ctx)
	if err != nil || id != "vhost_user_blk" {
		t.Errorf("GetID = %q, %v", id, err)
	}
	ones := bytes.Repeat([]byte{0xa5}, 4<<20)
	if _, err := c.WriteAt(ones, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(ctx, 1<<20, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(ctx, 2<<20, 64<<10, true); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(ctx, 0, 512, false); err != nil {
		t.Fatal(err)
	}
	if err := c.Discard(3<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(ones)
	clear(want[0:512])
	clear(want[1<<20 : 1<<20+64<<10])
	clear(want[2<<20 : 2<<20+64<<10])
	got := make([]byte, 3<<20) // the discarded MiB may read either way
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want[:3<<20]) {
		t.Errorf("after write-zeroes: %v, mismatch at %d", err, firstDiff(got, want))
	}
	qq, s, err := c.acquire(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.wait(ctx, c.start(qq, s, 99, 0, nil, 0)); !errors.Is(err, gateway.ErrUnsupported) {
		t.Errorf("type 99 on qsd: %v, want ErrUnsupported", err)
	}
	c.Close()
	// Reconnect (qsd accepts one front-end at a time, then the next).
	c2 := dial(t, q.sock, Options{Wait: WaitOptions{Mode: WaitEventfd}})
	if _, err := c2.ReadAt(got[:4096], 1<<20-4096); err != nil || !bytes.Equal(got[:4096], ones[:4096]) {
		t.Errorf("after reconnect: %v", err)
	}
}

// TestHugePages shares hugetlbfs memory (what SPDK needs) with qsd. It runs
// only when the host has free 2 MiB huge pages.
func TestHugePages(t *testing.T) {
	if free := hugePagesFree(); free < 8 {
		t.Skipf("need 8 free 2 MiB huge pages, have %d (echo 8 > /proc/sys/vm/nr_hugepages)", free)
	}
	q := startQSD(t, 8<<20, 1)
	c := dial(t, q.sock, Options{HugePages: true, QueueDepth: 4, MaxIO: 64 << 10})
	randomIO(t, c, 8<<20, 4, 20, 64<<10, 3)
}

func hugePagesFree() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		var n int
		if _, err := fmt.Sscanf(line, "HugePages_Free: %d", &n); err == nil {
			return n
		}
	}
	return 0
}
