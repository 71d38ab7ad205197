#!/usr/bin/env bash
# bench/filters.sh — the cost of the filter path through the NBD door: one
# gateway, one 1 GiB volume per policy (none, noop, zstd compression,
# lz4 compression, AES-256-GCM encryption, crc32c checksum), the same fio
# jobs on each (fio's nbd engine, one
# connection, unix socket). Data is half compressible (fio
# --buffer_compress_percentage=50). Prints MB/s or IOPS per policy and each
# policy's ratio to no policy.
#
# PASSES=N (default 1) runs every row N times, each pass going over all the
# policies in turn, and prints each cell's median: single passes on a noisy
# 2-core machine move a ratio by ±0.15.
# POLICIES="none aes" runs only these policies (none first); ROWS="randread
# 4k 1,write 1m 8" only these rows (rw bs qd).
#
# Usage: [PASSES=N] bench/filters.sh [RUNTIME_SECONDS]   (default 5; needs bin/sluice: make build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-5}
PASSES=${PASSES:-1}
SIZE=1G
BIN=${SLUICE_BIN:-bin/sluice}
for t in fio python3; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }

W=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

printf 'bench %s\n' "$(head -c 32 /dev/urandom | base64)" > "$W/keyring"
chmod 600 "$W/keyring"
"$BIN" gateway --data-dir "$W/g" --nbd-listen "" --pool-size 8G --keyring "$W/keyring" --log-level warn 2>"$W/g.log" &
PIDS+=($!)
wait_sock "$W/g/api.sock"
S() { "$BIN" --api-socket "$W/g/api.sock" "$@"; }
read -ra POLICIES <<< "${POLICIES:-none noop zstd lz4 aes crc}" # "none" first: the ratios' base
declare -A TEXT=([noop]="SET noop" [zstd]="SET compression WITH algo=zstd, level=1" [lz4]="SET compression WITH algo=lz4"
                 [aes]="SET encryption" [crc]="SET checksum")
for p in "${POLICIES[@]}"; do
  S volume create "$p" --tenant bench --size $SIZE >/dev/null
  [ "$p" = none ] || S policy add "FOR VOLUME bench/$p DO ${TEXT[$p]}" >/dev/null
done
uri() { echo "nbd+unix:///bench/$1?socket=$W/g/nbd.sock"; }

fio_job() { # uri rw bs qd → IOPS and MB/s on one line
  local out="$W/fio.json"
  fio --name=b --ioengine=nbd --uri="$1" --size=$SIZE --numjobs=1 --thread \
      --output-format=json --output="$out" --time_based --runtime="$RUNTIME" \
      --buffer_compress_percentage=50 --refill_buffers \
      --rw="$2" --bs="$3" --iodepth="$4" >/dev/null 2>&1
  python3 - "$out" "$2" <<'PY'
import json, sys
t = open(sys.argv[1]).read(); j = json.loads(t[t.index('{'):])['jobs'][0]
d = j['read'] if 'read' in sys.argv[2] else j['write']
print(f"{d['iops']:.0f} {d['bw_bytes']/1e6:.0f}")
PY
}

# Fill every volume once (1 MiB writes) so reads hit data, not holes.
for p in "${POLICIES[@]}"; do
  fio --name=fill --ioengine=nbd --uri="$(uri $p)" --size=$SIZE --thread --rw=write --bs=1m --iodepth=8 \
      --buffer_compress_percentage=50 --refill_buffers >/dev/null 2>&1
done
printf 'pool space per volume after filling each 1 GiB: '
S stats --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(", ".join("%s=%.0fMiB" % (v["name"], v["allocated"] / 2**20) for v in s["volumes"]))'

median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
printf '%-24s' job; for p in "${POLICIES[@]}"; do printf ' %8s' "$p"; done
for p in "${POLICIES[@]:1}"; do printf ' %8s' "$p/none"; done; echo
IFS=, read -ra JOBS <<< "${ROWS:-write 1m 8,read 1m 8,randread 4k 1,randread 4k 16,randwrite 4k 1,randwrite 4k 16}"
for job in "${JOBS[@]}"; do
  set -- $job
  unit=IOPS; col=1; [ "$2" = 1m ] && unit=MB/s && col=2
  declare -A r=()
  for _ in $(seq "$PASSES"); do
    for p in "${POLICIES[@]}"; do r[$p]+=" $(fio_job "$(uri $p)" "$1" "$2" "$3" | cut -d' ' -f$col)"; done
  done
  for p in "${POLICIES[@]}"; do r[$p]=$(median ${r[$p]}); done
  printf '%-24s' "$1 $2 QD$3 ($unit)"; for p in "${POLICIES[@]}"; do printf ' %8s' "${r[$p]}"; done
  for p in "${POLICIES[@]:1}"; do printf ' %8s' "$(ratio "${r[$p]}" "${r[none]}")"; done; echo
done
