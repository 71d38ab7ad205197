package integration

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The kernel nbd attach runs where the nbd driver is: this machine has
// none (and cannot load modules), so the test boots Debian's kernel under
// QEMU with its nbd module, and runs the static sluice binary inside the
// guest: a gateway with --attach-method nbd, then the attach scenario of
// TestAttachExt4 with busybox's tools (mke2fs makes ext2, which the ext4
// driver mounts; busybox has no fsck):
//
//   - attach prints /dev/nbdN, whose backend names this gateway and whose
//     size is the volume's, in 512-byte sectors; attaching twice is
//     refused;
//   - mke2fs → mount → write files → a busy detach is refused → umount →
//     detach (the device is disconnected) → attach again → mount → the
//     files' hashes match;
//   - a read-only volume attaches as a read-only device that refuses
//     writes;
//   - a gateway killed with devices attached leaves them connected to a
//     dead socket; the next gateway on the same data directory disconnects
//     them at start-up;
//   - a gateway stopped (SIGTERM) with a filesystem still mounted on its
//     device syncs it first: a file written just before is in the volume.
const guestNBDScript = `
export SLUICE_API_SOCKET=/tmp/d/api.sock
gw() { /bin/sluice gateway --data-dir /tmp/d --pool-size 512M --nbd-listen "" --attach-method nbd --log-level warn >>/tmp/gw.log 2>&1 & GW=$!; for i in $(seq 1 300); do [ -S /tmp/d/api.sock ] && return 0; sleep 0.1; done; echo GW_NOT_READY; cat /tmp/gw.log; }
s() { /bin/sluice "$@"; }
ok() { echo "OK $1"; }
bad() { echo "BAD $1"; }
gw
s volume create t/disk --size 64M >/dev/null || bad create
s volume create t/ro --size 16M --read-only >/dev/null || bad create-ro
DEV=$(s attach t/disk) && echo "DEV=$DEV"
N=${DEV#/dev/nbd}
echo "BACKEND=$(cat /sys/block/nbd$N/backend)"
echo "SECTORS=$(cat /sys/block/nbd$N/size)"
echo "LBS=$(cat /sys/block/nbd$N/queue/logical_block_size)"
s attach t/disk 2>&1 | grep -q "already attached" && ok twice || bad twice
mke2fs -q $DEV >/dev/null 2>&1 && ok mkfs || bad mkfs
mount -t ext2 $DEV /mnt && ok mount || bad mount
mkdir /tmp/src
for i in 1 2 3 4 5; do dd if=/dev/urandom of=/tmp/src/f$i bs=64k count=$((i*3)) 2>/dev/null; cp /tmp/src/f$i /mnt/f$i; done
H1=$(cat /tmp/src/f1 /tmp/src/f2 /tmp/src/f3 /tmp/src/f4 /tmp/src/f5 | sha256sum | cut -d' ' -f1)
s detach $DEV 2>&1 | grep -q busy && ok busy || bad busy
s volume delete t/disk 2>&1 | grep -q "attached as" && ok delete-refused || bad delete-refused
umount /mnt && ok umount || bad umount
s detach $DEV && ok detach || bad detach
[ -e /sys/block/nbd$N/pid ] && bad disconnected || ok disconnected
DEV2=$(s attach t/disk) && echo "DEV2=$DEV2"
mount -t ext2 $DEV2 /mnt && ok remount || bad remount
H2=$(cat /mnt/f1 /mnt/f2 /mnt/f3 /mnt/f4 /mnt/f5 | sha256sum | cut -d' ' -f1)
[ "$H1" = "$H2" ] && ok hashes || bad "hashes $H1 $H2"
umount /mnt
s detach $DEV2 || bad detach2
RO=$(s attach t/ro) && echo "RO=$RO"
echo "RO_FLAG=$(cat /sys/block/${RO#/dev/}/ro)"
dd if=/dev/zero of=$RO bs=4k count=1 oflag=direct 2>/dev/null && bad ro-write || ok ro-write
s detach $RO || bad detach-ro
# A killed gateway leaves its device connected to nothing.
DEV3=$(s attach t/disk) && echo "DEV3=$DEV3"
kill -9 $GW; wait $GW 2>/dev/null
rm -f /tmp/d/api.sock /tmp/d/nbd.sock
[ -e /sys/block/${DEV3#/dev/}/pid ] && ok stale-left || bad stale-left
gw
for i in $(seq 1 50); do [ -e /sys/block/${DEV3#/dev/}/pid ] || break; sleep 0.1; done
[ -e /sys/block/${DEV3#/dev/}/pid ] && bad stale-cleaned || ok stale-cleaned
# SIGTERM with a filesystem mounted on the device: synced first.
DEV4=$(s attach t/disk) && echo "DEV4=$DEV4"
mount -t ext2 $DEV4 /mnt || bad mount4
dd if=/dev/urandom of=/tmp/late bs=64k count=8 2>/dev/null
cp /tmp/late /mnt/late
H3=$(sha256sum /tmp/late | cut -d' ' -f1)
kill -TERM $GW; wait $GW
rm -f /tmp/d/api.sock
gw
DEV5=$(s attach t/disk) && echo "DEV5=$DEV5"
mkdir -p /tmp/m2; mount -t ext2 -o ro $DEV5 /tmp/m2 && ok mount5 || bad mount5
H4=$(sha256sum /tmp/m2/late | cut -d' ' -f1)
[ "$H3" = "$H4" ] && ok shutdown-sync || bad "shutdown-sync $H3 $H4"
umount /tmp/m2
s detach $DEV5 || bad detach5
kill -TERM $GW; wait $GW
grep -i "error\|panic" /tmp/gw.log | head -5
`

func TestAttachKernelNBD(t *testing.T) {
	k := loadGuestKit(t)
	bin, err := os.ReadFile(sluiceBin)
	if err != nil {
		t.Fatal(err)
	}
	if len(bin) < 4 || string(bin[1:4]) != "ELF" {
		t.Fatalf("%s is not an ELF binary", sluiceBin)
	}
	initrd := k.initramfs(t, guestImage{script: guestNBDScript, modules: nbdModules,
		files: []cpioFile{{name: "bin/sluice", mode: 0o100755, data: bin}}})
	out := k.boot(t, initrd, "1024M", 5*time.Minute)
	t.Logf("guest:\n%s", out)
	if strings.Contains(out, "GW_NOT_READY") {
		t.Fatal("the gateway did not start in the guest")
	}
	for _, m := range regexp.MustCompile(`(?m)^BAD .*$`).FindAllString(out, -1) {
		t.Errorf("guest: %s", strings.TrimSpace(m))
	}
	for _, want := range []string{"twice", "mkfs", "mount", "busy", "delete-refused", "umount", "detach", "disconnected",
		"remount", "hashes", "ro-write", "stale-left", "stale-cleaned", "mount5", "shutdown-sync"} {
		if !regexp.MustCompile(`(?m)^OK ` + want + `\r?$`).MatchString(out) {
			t.Errorf("guest did not report OK %s", want)
		}
	}
	field := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `=(.*?)\r?$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("guest did not print %s", name)
		}
		return m[1]
	}
	if dev := field("DEV"); !regexp.MustCompile(`^/dev/nbd\d+$`).MatchString(dev) {
		t.Errorf("attach printed %q, want /dev/nbdN", dev)
	}
	if b := field("BACKEND"); !regexp.MustCompile(`^sluice:[0-9a-f]+:t/disk$`).MatchString(b) {
		t.Errorf("backend %q, want sluice:ID:t/disk", b)
	}
	if s := field("SECTORS"); s != "131072" {
		t.Errorf("device of %s sectors, want 131072 (64 MiB)", s)
	}
	if lbs := field("LBS"); lbs != "512" {
		t.Errorf("logical block size %s, want 512 (as loop and virtio present)", lbs)
	}
	if ro := field("RO_FLAG"); ro != "1" {
		t.Errorf("read-only volume's device has ro=%s, want 1", ro)
	}
}
