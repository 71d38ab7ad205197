#!/usr/bin/env bash
# bench/fuse.sh — Sluice's FUSE door vs go-fuse's loopback (passthrough off:
# the same classic FUSE path) vs the native directory, in one run on the same
# machine. Everything lives on one tmpfs, so no target waits for a disk the
# others do not: Sluice's data dir (pool file + badger), the loopback's
# backing directory, and the native directory.
#
# Rows: fio 4 KiB random read and write at QD1 (psync) and QD16 (io_uring),
# 1 MiB sequential read and write, all O_DIRECT on a 1 GiB file (every IO
# reaches the daemon, none is served from the mount's page cache); then a
# metadata run: create, stat and unlink of 10,000 empty files.
# Prints each figure with the ratios Sluice/loopback and Sluice/native.
#
# Usage: bench/fuse.sh [RUNTIME_SECONDS]   (default 10; needs root and bin/sluice: make build)
# Env:   PASSES=N  repeat every job N times and report the median (default 1);
#                  passes alternate between the targets
#        META_ONLY=1  skip the fio rows (the metadata run alone)
#        FIO_ONLY=1   skip the metadata rows
#        ROWS="4K randread QD1,4K randwrite QD1"  run only these fio rows
#        SLUICE_BIN_B=PATH  a second Sluice build as a fourth target
#                  ("sluiceB", its own gateway and mount): an A/B of two
#                  builds in one run, printed as sluice/sluiceB
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-10}
PASSES=${PASSES:-1}
SIZE=1G
FILES=10000
BIN=${SLUICE_BIN:-bin/sluice}
for t in fio python3; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (FUSE mounts with allow_other, tmpfs)"; exit 1; }

W=$(mktemp -d /tmp/sluice-fuse-bench.XXXXXX)
mount -t tmpfs -o size=6G tmpfs "$W"
PIDS=()
cleanup() {
  umount "$W/mnt-sluice" 2>/dev/null || umount -l "$W/mnt-sluice" 2>/dev/null || true
  umount "$W/mnt-loop" 2>/dev/null || umount -l "$W/mnt-loop" 2>/dev/null || true
  umount "$W/mnt-sluiceB" 2>/dev/null || umount -l "$W/mnt-sluiceB" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  umount "$W" 2>/dev/null || umount -l "$W"; rmdir "$W"
}
trap cleanup EXIT
mkdir -p "$W/mnt-sluice" "$W/mnt-loop" "$W/orig" "$W/native"
go build -o "$W/loopback" ./bench/loopback
go build -o "$W/fsmeta" ./bench/fsmeta

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

# --- targets -------------------------------------------------------------------
"$BIN" gateway --data-dir "$W/sluice" --nbd-listen "" --nbd-socket none --pool-size 5G --log-level warn 2>"$W/sluice.log" &
SLUICE_PID=$!; PIDS+=($SLUICE_PID)
wait_sock "$W/sluice/api.sock"
S="$BIN --api-socket $W/sluice/api.sock"
$S volume create bench/fs --size 4G --kind fs >/dev/null
$S mount bench/fs "$W/mnt-sluice" >/dev/null

"$W/loopback" "$W/mnt-loop" "$W/orig" > "$W/loop.out" 2>&1 & PIDS+=($!)
for _ in $(seq 1 100); do grep -q ready "$W/loop.out" 2>/dev/null && break; sleep 0.05; done

TARGETS=(sluice loop native)
declare -A DIR=([sluice]="$W/mnt-sluice" [loop]="$W/mnt-loop" [native]="$W/native")
if [ -n "${SLUICE_BIN_B:-}" ]; then
  mkdir -p "$W/mnt-sluiceB"
  "$SLUICE_BIN_B" gateway --data-dir "$W/sluiceB" --nbd-listen "" --nbd-socket none --pool-size 5G --log-level warn 2>"$W/sluiceB.log" &
  PIDS+=($!)
  wait_sock "$W/sluiceB/api.sock"
  SB="$SLUICE_BIN_B --api-socket $W/sluiceB/api.sock"
  $SB volume create bench/fs --size 4G --kind fs >/dev/null
  $SB mount bench/fs "$W/mnt-sluiceB" >/dev/null
  TARGETS+=(sluiceB); DIR[sluiceB]="$W/mnt-sluiceB"
fi

fio_job() { # dir rw bs qd engine → IOPS and MB/s on one line
  local out="$W/fio.json"
  fio --name=b --directory="$1" --filename=bench.dat --size=$SIZE --direct=1 \
      --ioengine="$5" --iodepth="$4" --rw="$2" --bs="$3" --numjobs=1 \
      --output-format=json --output="$out" --time_based --runtime="$RUNTIME" >/dev/null 2>&1
  python3 - "$out" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))['jobs'][0]
d = j['read'] if 'read' in sys.argv[2] else j['write']
print(f"{d['iops']:.0f} {d['bw_bytes']/1e6:.0f}")
PY
}

median() { python3 -c 'import sys,statistics; v=[list(map(float,l.split())) for l in sys.stdin]; print(" ".join(f"{statistics.median(c):.0f}" for c in zip(*v)))'; }

# Lay the file out once per target, so reads read data and writes overwrite.
for t in "${TARGETS[@]}"; do
  fio --name=prep --directory="${DIR[$t]}" --filename=bench.dat --size=$SIZE --rw=write --bs=1M \
      --direct=1 --ioengine=psync >/dev/null 2>&1
done

B=${SLUICE_BIN_B:+1}
header() { printf "%-22s %12s %12s %12s %9s %9s" "row" "sluice" "loopback" "native" "s/loop" "s/native"; [ -n "$B" ] && printf " %12s %9s" "sluiceB" "s/sB"; echo; }
line() { # name sluice loop native [sluiceB]
  python3 -c "
import sys
name, s, l, n = sys.argv[1], *map(float, sys.argv[2:5])
out = '%-22s %12.0f %12.0f %12.0f %8.2fx %8.2fx' % (name, s, l, n, s/max(l,1), s/max(n,1))
if len(sys.argv) > 5:
    b = float(sys.argv[5]); out += ' %12.0f %8.2fx' % (b, s/max(b,1))
print(out)" "$@"
}
rss() { echo "gateway RSS: $(awk '/VmRSS/{print $2/1024 " MiB"}' /proc/$SLUICE_PID/status)"; }
header
row() { # name rw bs qd engine metric(iops|mbs)
  local name=$1; shift; local metric=${@: -1}; set -- "${@:1:$#-1}"
  if [ -n "${ROWS:-}" ] && [[ ",$ROWS," != *",$name,"* ]]; then return; fi
  declare -A v
  rm -f "$W"/row.*
  for _ in $(seq 1 "$PASSES"); do
    for t in "${TARGETS[@]}"; do fio_job "${DIR[$t]}" "$@" >> "$W/row.$t"; done
  done
  for t in "${TARGETS[@]}"; do
    r=$(median < "$W/row.$t")
    if [ "$metric" = iops ]; then v[$t]=${r%% *}; else v[$t]=${r##* }; fi
  done
  line "$name ($metric)" "${v[sluice]}" "${v[loop]}" "${v[native]}" ${B:+"${v[sluiceB]}"}
}
if [ -z "${META_ONLY:-}" ]; then
  row "4K randread QD1"   randread  4k 1  psync    iops
  row "4K randwrite QD1"  randwrite 4k 1  psync    iops
  row "4K randread QD16"  randread  4k 16 io_uring iops
  row "4K randwrite QD16" randwrite 4k 16 io_uring iops
  row "1M read"           read      1M 4  io_uring mbs
  row "1M write"          write     1M 4  io_uring mbs
fi
if [ -n "${FIO_ONLY:-}" ]; then rss; exit 0; fi

for t in "${TARGETS[@]}"; do rm -f "${DIR[$t]}/bench.dat"; done
declare -A M
for _ in $(seq 1 "$PASSES"); do
  for t in "${TARGETS[@]}"; do
    d="${DIR[$t]}/meta.$RANDOM"; mkdir "$d"; "$W/fsmeta" "$d" $FILES | awk '{print $2, $4, $6}' >> "$W/meta.$t"; rmdir "$d"
  done
done
for t in "${TARGETS[@]}"; do M[$t]=$(median < "$W/meta.$t"); done
for i in 1 2 3; do
  name=$(echo create stat unlink | cut -d' ' -f$i)
  args=()
  for t in "${TARGETS[@]}"; do args+=("$(echo ${M[$t]} | cut -d' ' -f$i)"); done
  line "$FILES files $name/s" "${args[@]}"
done
rss
