package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testtool"
	"github.com/sluice-storage/sluice/virtio"
)

// A real front-end on our target: QEMU (TCG) boots Debian's kernel with a
// vhost-user-blk-pci disk served by the gateway; the guest writes 16 MiB
// with O_DIRECT and reads it back, and the host checks the SHA-256 through
// the NBD door on the same volume.
func TestVirtioQEMUGuest(t *testing.T) {
	k := loadGuestKit(t)
	testtool.Need(t, "nbdcopy")
	g := startGateway(t, t.TempDir())
	g.mustSluice("volume", "create", "t/vm", "--size", "16M")
	sock := strings.TrimSpace(g.mustSluice("virtio", "export", "t/vm"))
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v (mode %v), want mode 0600", sock, err, fi.Mode().Perm())
	}
	guest := guestSHA(t, k.bootGuest(t, sock, guestDirectIO))
	out := filepath.Join(t.TempDir(), "vm.raw")
	run(t, time.Minute, "nbdcopy", g.uri("t/vm"), out)
	b, err := os.ReadFile(out)
	must(t, err)
	if host := fmt.Sprintf("%x", sha256.Sum256(b)); host != guest {
		t.Fatalf("guest wrote sha256 %s, the volume holds %s", guest, host)
	}
}

// Our initiator against the gateway's target, both real processes' worth:
// verified random IO at QD32 over the exported socket, then the export's
// bad input.
func TestVirtioInitiatorAgainstGateway(t *testing.T) {
	g := startGateway(t, t.TempDir())
	g.mustSluice("volume", "create", "t/blk", "--size", "64M")
	g.mustSluice("volume", "create", "t/files", "--size", "64M", "--kind", "fs")
	sock := filepath.Join(t.TempDir(), "blk.sock")
	if got := strings.TrimSpace(g.mustSluice("virtio", "export", "t/blk", "--socket", sock)); got != sock {
		t.Fatalf("export printed %q, want %q", got, sock)
	}
	ctx := context.Background()
	c, err := virtio.Dial(ctx, sock, virtio.Options{Queues: 2})
	must(t, err)
	if c.Size() != 64<<20 {
		t.Fatalf("size over virtio %d, want 64 MiB", c.Size())
	}
	// 32 writers of distinct 64 KiB blocks, then read everything back.
	const n, bs = 32, 64 << 10
	blocks := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range blocks {
		blocks[i] = make([]byte, bs)
		rand.Read(blocks[i])
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if _, err := c.WriteAt(blocks[i], int64(i)*3*bs); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	must(t, c.Flush())
	for i := range blocks {
		got := make([]byte, bs)
		if _, err := c.ReadAt(got, int64(i)*3*bs); err != nil || !bytes.Equal(got, blocks[i]) {
			t.Fatalf("block %d read back wrong (err %v)", i, err)
		}
	}
	must(t, c.Close())
	// The same bytes through NBD.
	got := qemuIO(t, g.uri("t/blk"), fmt.Sprintf("read -v %d 16", 5*3*bs))
	if !strings.Contains(got, fmt.Sprintf("%02x", blocks[5][0])) {
		t.Errorf("NBD does not see the virtio write: %s", got)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"virtio", "export", "t/blk", "--socket", sock + ".other"}, "already exported over vhost-user at " + sock},
		{[]string{"virtio", "export", "t/files"}, "fs volume"},
		{[]string{"virtio", "export", "t/none"}, "not found"},
		{[]string{"virtio", "unexport", "t/files"}, "not exported"},
		{[]string{"volume", "delete", "t/blk"}, "exported over vhost-user at " + sock},
	} {
		if out, code := g.sluice(c.args...); code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("sluice %v: exit %d, %q; want an error containing %q", c.args, code, out, c.want)
		}
	}
	// Exporting again where it is exported (or with no path) is no error:
	// the export as it is.
	for _, args := range [][]string{{"virtio", "export", "t/blk", "--socket", sock}, {"virtio", "export", "t/blk"}} {
		if got := strings.TrimSpace(g.mustSluice(args...)); got != sock {
			t.Errorf("sluice %v printed %q, want %q", args, got, sock)
		}
	}
	// The export is remembered: after a stop and after a SIGKILL the next
	// gateway serves it on the same socket, with the same bytes.
	g.stop()
	g.restart()
	checkVirtioBlock(t, sock, blocks[5], 5*3*bs)
	g.kill()
	g.restart()
	checkVirtioBlock(t, sock, blocks[7], 7*3*bs)
	if out := g.mustSluice("virtio", "list"); !strings.Contains(out, sock) {
		t.Errorf("virtio list after the restarts: %q, want %s", out, sock)
	}
	g.mustSluice("virtio", "unexport", "t/blk")
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still there after unexport: %v", err)
	}
	// An unexport is remembered too.
	g.stop()
	g.restart()
	if out := g.mustSluice("virtio", "list"); strings.Contains(out, "t/blk") {
		t.Errorf("virtio list after unexport and a restart: %q", out)
	}
	g.mustSluice("volume", "delete", "t/blk") // no longer in use
}

// checkVirtioBlock connects to sock with our initiator and checks that
// the block at off holds want.
func checkVirtioBlock(t *testing.T, sock string, want []byte, off int64) {
	t.Helper()
	c, err := virtio.Dial(context.Background(), sock, virtio.Options{Queues: 1})
	if err != nil {
		t.Fatalf("virtio connect to %s after the restart: %v", sock, err)
	}
	defer c.Close()
	got := make([]byte, len(want))
	if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
		t.Errorf("block at %d over virtio after the restart: read back wrong (err %v)", off, err)
	}
}
