#!/usr/bin/env bash
# bench/ranges.sh — big-range operations on Sluice's FUSE door vs go-fuse's
# loopback over tmpfs vs tmpfs itself (and ext4 on a loop device with
# EXT4=1), in one run on the same machine (issue 22: "big ranges in
# O(extents)"). Everything lives on one tmpfs: Sluice's data dir (pool file +
# badger), the loopback's backing directory, the native directory.
#
# Rows, each timed around the one system call (milliseconds, median of
# PASSES):
#   fallocate 1G     posix_fallocate(fd, 0, 1 GiB) of a new file
#   truncate 1G->0   ftruncate(fd, 0) of that file
#   unlink 2G        unlink of a closed 2 GiB file laid out by fallocate
#                    (WRITTEN=1: by writing 2 GiB of data instead)
# Prints each figure with the ratios Sluice/loopback and Sluice/native
# (lower is better: these are times).
#
# Usage: bench/ranges.sh   (needs root and bin/sluice: make build)
# Env:   PASSES=N   repeat every row N times, report the median (default 5)
#        WRITTEN=1  lay the 2 GiB file out by writing it
#        EXT4=1     add ext4 on a loop device (an image file on the tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${PASSES:-5}
BIN=${SLUICE_BIN:-bin/sluice}
command -v python3 >/dev/null || { echo "missing python3"; exit 1; }
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (FUSE mounts, tmpfs)"; exit 1; }

W=$(mktemp -d /tmp/sluice-ranges-bench.XXXXXX)
mount -t tmpfs -o size=12G tmpfs "$W"
PIDS=()
LOOPDEV=""
cleanup() {
  umount "$W/mnt-sluice" 2>/dev/null || umount -l "$W/mnt-sluice" 2>/dev/null || true
  umount "$W/mnt-loop" 2>/dev/null || umount -l "$W/mnt-loop" 2>/dev/null || true
  if [ -n "$LOOPDEV" ]; then umount "$W/ext4" 2>/dev/null || true; losetup -d "$LOOPDEV" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  umount "$W" 2>/dev/null || umount -l "$W"; rmdir "$W"
}
trap cleanup EXIT
mkdir -p "$W/mnt-sluice" "$W/mnt-loop" "$W/orig" "$W/native"
go build -o "$W/loopback" ./bench/loopback

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

"$BIN" gateway --data-dir "$W/sluice" --nbd-listen "" --nbd-socket none --pool-size 5G --log-level warn 2>"$W/sluice.log" &
PIDS+=($!)
wait_sock "$W/sluice/api.sock"
S="$BIN --api-socket $W/sluice/api.sock"
$S volume create bench/fs --size 4G --kind fs >/dev/null
$S mount bench/fs "$W/mnt-sluice" >/dev/null

"$W/loopback" "$W/mnt-loop" "$W/orig" > "$W/loop.out" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do grep -q ready "$W/loop.out" 2>/dev/null && break; sleep 0.05; done

TARGETS=(sluice loop native)
declare -A DIR=([sluice]="$W/mnt-sluice" [loop]="$W/mnt-loop" [native]="$W/native")
if [ -n "${EXT4:-}" ]; then
  truncate -s 5G "$W/ext4.img"; mkfs.ext4 -q "$W/ext4.img"
  LOOPDEV=$(losetup -f --show "$W/ext4.img"); mkdir -p "$W/ext4"; mount "$LOOPDEV" "$W/ext4"
  TARGETS+=(ext4); DIR[ext4]="$W/ext4"
fi

# One pass of the three rows in a directory: three times in ms.
pass() {
  python3 - "$1" "${WRITTEN:-}" <<'PY'
import os, sys, time
d, written = sys.argv[1], sys.argv[2]
G = 1 << 30
def timed(fn):
    t = time.perf_counter(); fn(); return (time.perf_counter() - t) * 1e3
p = os.path.join(d, "r1")
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
fa = timed(lambda: os.posix_fallocate(fd, 0, G))
tr = timed(lambda: os.ftruncate(fd, 0))
os.close(fd); os.unlink(p)
q = os.path.join(d, "r2")
fd = os.open(q, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
if written:
    buf = b"\xa5" * (1 << 20)
    for _ in range(2048):
        os.write(fd, buf)
else:
    os.posix_fallocate(fd, 0, 2 * G)
os.fsync(fd)
os.close(fd)
ul = timed(lambda: os.unlink(q))
os.sync()
print(f"{fa:.2f} {tr:.2f} {ul:.2f}")
PY
}
for _ in $(seq 1 "$PASSES"); do
  for t in "${TARGETS[@]}"; do pass "${DIR[$t]}" >> "$W/r.$t"; done
done
python3 - "$W" "${TARGETS[@]}" <<'PY'
import statistics, sys
w, targets = sys.argv[1], sys.argv[2:]
med = {}
for t in targets:
    rows = [list(map(float, l.split())) for l in open(f"{w}/r.{t}")]
    med[t] = [statistics.median(c) for c in zip(*rows)]
hdr = "%-16s" % "row (ms)" + "".join("%11s" % t for t in targets) + "%9s %9s" % ("s/loop", "s/native")
print(hdr)
for i, name in enumerate(["fallocate 1G", "truncate 1G->0", "unlink 2G"]):
    s = med["sluice"][i]
    out = "%-16s" % name + "".join("%11.2f" % med[t][i] for t in targets)
    out += " %8.2fx %8.2fx" % (s / max(med["loop"][i], 0.01), s / max(med["native"][i], 0.01))
    print(out)
PY
