#!/usr/bin/env bash
# bench/xattr.sh — xattr set+get on Sluice's FUSE door vs go-fuse's loopback
# over tmpfs vs tmpfs itself, in one run on the same machine (issue 22's
# goal: set+get at least 0.5x of the loopback). Everything lives on one
# tmpfs, like bench/ranges.sh.
#
# Each pass creates FILES files and on each sets then gets 64 xattrs of
# 32 bytes (64: ext4 refuses more than about 73 such xattrs per inode, and
# stress-ng's xattr stressor sets until refused, so its bogo ops are not
# comparable across file systems: Sluice takes all 4096 of its names).
# Rows: setxattr/s, getxattr/s, set+get pairs/s (median of PASSES), with
# the ratios Sluice/loopback and Sluice/native (higher is better).
#
# Usage: bench/xattr.sh   (needs root and bin/sluice: make build)
# Env:   PASSES=N  (default 5), FILES=N (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${PASSES:-5}
FILES=${FILES:-100}
BIN=${SLUICE_BIN:-bin/sluice}
command -v python3 >/dev/null || { echo "missing python3"; exit 1; }
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (FUSE mounts, tmpfs)"; exit 1; }

W=$(mktemp -d /tmp/sluice-xattr-bench.XXXXXX)
mount -t tmpfs -o size=2G tmpfs "$W"
PIDS=()
cleanup() {
  umount "$W/mnt-sluice" 2>/dev/null || umount -l "$W/mnt-sluice" 2>/dev/null || true
  umount "$W/mnt-loop" 2>/dev/null || umount -l "$W/mnt-loop" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  umount "$W" 2>/dev/null || umount -l "$W"; rmdir "$W"
}
trap cleanup EXIT
mkdir -p "$W/mnt-sluice" "$W/mnt-loop" "$W/orig" "$W/native"
go build -o "$W/loopback" ./bench/loopback

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

"$BIN" gateway --data-dir "$W/sluice" --nbd-listen "" --nbd-socket none --pool-size 1G --log-level warn 2>"$W/sluice.log" &
PIDS+=($!)
wait_sock "$W/sluice/api.sock"
S="$BIN --api-socket $W/sluice/api.sock"
$S volume create bench/fs --size 512M --kind fs >/dev/null
$S mount bench/fs "$W/mnt-sluice" >/dev/null

"$W/loopback" "$W/mnt-loop" "$W/orig" > "$W/loop.out" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do grep -q ready "$W/loop.out" 2>/dev/null && break; sleep 0.05; done

TARGETS=(sluice loop native)
declare -A DIR=([sluice]="$W/mnt-sluice" [loop]="$W/mnt-loop" [native]="$W/native")

pass() { # dir → setxattr/s getxattr/s pairs/s
  python3 - "$1" "$FILES" <<'PY'
import os, sys, time
d, files = sys.argv[1], int(sys.argv[2])
sub = os.path.join(d, "x.%d" % os.getpid()); os.mkdir(sub)
paths = [os.path.join(sub, "f%d" % i) for i in range(files)]
for p in paths:
    open(p, "w").close()
names, val = ["user.k%02d" % i for i in range(64)], b"v" * 32
t = time.perf_counter()
for p in paths:
    for n in names:
        os.setxattr(p, n, val)
ts = time.perf_counter() - t
t = time.perf_counter()
for p in paths:
    for n in names:
        assert os.getxattr(p, n) == val
tg = time.perf_counter() - t
for p in paths:
    os.unlink(p)
os.rmdir(sub)
ops = files * len(names)
print(f"{ops/ts:.0f} {ops/tg:.0f} {ops/(ts+tg):.0f}")
PY
}
for _ in $(seq 1 "$PASSES"); do
  for t in "${TARGETS[@]}"; do pass "${DIR[$t]}" >> "$W/x.$t"; done
done
python3 - "$W" "${TARGETS[@]}" <<'PY'
import statistics, sys
w, targets = sys.argv[1], sys.argv[2:]
med = {t: [statistics.median(c) for c in zip(*[list(map(float, l.split())) for l in open(f"{w}/x.{t}")])] for t in targets}
print("%-16s" % "row (ops/s)" + "".join("%11s" % t for t in targets) + "%9s %9s" % ("s/loop", "s/native"))
for i, name in enumerate(["setxattr", "getxattr", "set+get"]):
    s = med["sluice"][i]
    print("%-16s" % name + "".join("%11.0f" % med[t][i] for t in targets)
          + " %8.2fx %8.2fx" % (s / max(med["loop"][i], 1), s / max(med["native"][i], 1)))
PY
