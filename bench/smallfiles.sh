#!/usr/bin/env bash
# bench/smallfiles.sh — what a tree of small files costs in pool space
# (issue 22: "a Go source tree copied onto an fs volume allocates ~4x its
# size"). Copies a source tree (default: Go's GOROOT/src) onto a Sluice fs
# volume (its FUSE door), onto tmpfs and onto ext4 on a loop device, and
# prints for each the apparent size (the sum of the regular files'
# lengths), the space allocated and the ratio allocated/apparent.
#
# Allocation is measured the same way everywhere: the sum of the regular
# files' st_blocks (directories and inodes left out, they hold no chunks
# in Sluice). For Sluice the gateway's own figure is printed too: the
# volume's "allocated" from `sluice volume list --json` (pool space its
# chunks hold), and the pool's "used" from `sluice stats --json`.
# Everything lives on one tmpfs: Sluice's data dir (pool file + badger),
# the ext4 image and the tmpfs copy.
#
# Usage: bench/smallfiles.sh [SRC]   (needs root and bin/sluice: make build)
# Env:   CHUNK=65536   the fs volume's chunk size
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SLUICE_BIN:-bin/sluice}
SRC=${1:-$(go env GOROOT)/src}
CHUNK=${CHUNK:-65536}
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (FUSE mount, tmpfs, loop device)"; exit 1; }
[ -d "$SRC" ] || { echo "no source tree $SRC"; exit 1; }
command -v mkfs.ext4 >/dev/null || { echo "missing mkfs.ext4"; exit 1; }

W=$(mktemp -d /tmp/sluice-smallfiles-bench.XXXXXX)
mount -t tmpfs -o size=8G tmpfs "$W"
GW=""
LOOPDEV=""
cleanup() {
  umount "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null || true
  if [ -n "$LOOPDEV" ]; then umount "$W/ext4" 2>/dev/null || true; losetup -d "$LOOPDEV" 2>/dev/null || true; fi
  if [ -n "$GW" ]; then kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; fi
  umount "$W" 2>/dev/null || umount -l "$W"; rmdir "$W"
}
trap cleanup EXIT
mkdir -p "$W/mnt" "$W/tmpfs" "$W/ext4"

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

"$BIN" gateway --data-dir "$W/sluice" --nbd-listen "" --nbd-socket none --pool-size 6G --log-level warn 2>"$W/sluice.log" &
GW=$!
wait_sock "$W/sluice/api.sock"
S="$BIN --api-socket $W/sluice/api.sock"
$S volume create bench/src --size 4G --kind fs --chunk-size "$CHUNK" >/dev/null
$S mount bench/src "$W/mnt" >/dev/null

truncate -s 2G "$W/ext4.img"
mkfs.ext4 -q "$W/ext4.img"
LOOPDEV=$(losetup -f --show "$W/ext4.img")
mount "$LOOPDEV" "$W/ext4"

# apparent and allocated bytes of the regular files under a directory.
sizes() { find "$1" -type f -printf '%s %b\n' | awk '{a += $1; b += $2 * 512} END {printf "%d %d %d\n", NR, a, b}'; }

declare -A SECS
for t in sluice tmpfs ext4; do
  case $t in sluice) d="$W/mnt" ;; tmpfs) d="$W/tmpfs" ;; ext4) d="$W/ext4" ;; esac
  start=$(date +%s.%N)
  cp -r "$SRC" "$d/src"
  sync -f "$d/src"
  SECS[$t]=$(echo "$(date +%s.%N) - $start" | bc)
done

read -r files apparent _ < <(sizes "$SRC")
echo "source: $SRC, $files files, $apparent bytes apparent; fs volume chunk size $CHUNK"
printf "%-22s %14s %14s %8s %8s\n" target apparent allocated ratio "cp (s)"
for t in sluice tmpfs ext4; do
  case $t in sluice) d="$W/mnt" ;; tmpfs) d="$W/tmpfs" ;; ext4) d="$W/ext4" ;; esac
  read -r n a b < <(sizes "$d/src")
  [ "$n" = "$files" ] && [ "$a" = "$apparent" ] || { echo "$t: copy has $n files, $a bytes; source $files, $apparent"; exit 1; }
  printf "%-22s %14d %14d %7.2fx %8.1f\n" "$t (st_blocks)" "$a" "$b" "$(echo "$b / $a" | bc -l)" "${SECS[$t]}"
done
alloc=$($S volume list --json | python3 -c 'import json,sys; print(next(v["allocated"] for v in json.load(sys.stdin) if v["ref"] == "bench/src"))')
used=$($S stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["used"])' 2>/dev/null || echo "?")
printf "%-22s %14d %14d %7.2fx\n" "sluice (gateway)" "$apparent" "$alloc" "$(echo "$alloc / $apparent" | bc -l)"
echo "sluice pool used (stats): $used bytes"
# What the store held before short chunks: every file's chunks whole.
full=$(find "$SRC" -type f -printf '%s\n' | awk -v c="$CHUNK" '{n += int(($1 + c - 1) / c)} END {printf "%d", n * c}')
printf "%-22s %14d %14d %7.2fx\n" "whole chunks (computed)" "$apparent" "$full" "$(echo "$full / $apparent" | bc -l)"
fsck=$($S fsck bench/src) || { echo "fsck: $fsck"; exit 1; }
echo "fsck: $fsck"
