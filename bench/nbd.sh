#!/usr/bin/env bash
# bench/nbd.sh — Sluice's NBD door vs nbdkit (file plugin) and qemu-nbd, in one
# run on the same machine, same 1 GiB size, same fio jobs (fio's nbd engine,
# one connection, unix sockets). Prints IOPS / MB/s per row with the ratios
# Sluice/nbdkit and Sluice/qemu-nbd, and the gateway's peak RSS.
#
# Usage: bench/nbd.sh [RUNTIME_SECONDS]   (default 10; needs bin/sluice: make build)
# Env:   PASSES=N  repeat every job N times, alternating the targets, and
#                  report the median (default 1)
#        ROWS="randwrite 4k 32,write 1m 8"  run only these rows (rw bs qd, comma-separated)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-10}
PASSES=${PASSES:-1}
SIZE=1G
BIN=${SLUICE_BIN:-bin/sluice}
for t in fio nbdkit qemu-nbd python3; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }

W=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }

# --- servers -----------------------------------------------------------------
"$BIN" gateway --data-dir "$W/sluice" --nbd-listen "" --pool-size 8G --log-level warn 2>"$W/sluice.log" &
SLUICE_PID=$!; PIDS+=($SLUICE_PID)
wait_sock "$W/sluice/api.sock"
"$BIN" --api-socket "$W/sluice/api.sock" volume create bench --tenant bench --size $SIZE >/dev/null
SLUICE_URI="nbd+unix:///bench/bench?socket=$W/sluice/nbd.sock"

truncate -s $SIZE "$W/nbdkit.img"
nbdkit -f -U "$W/nbdkit.sock" file "$W/nbdkit.img" & PIDS+=($!)
wait_sock "$W/nbdkit.sock"
NBDKIT_URI="nbd+unix:///?socket=$W/nbdkit.sock"

truncate -s $SIZE "$W/qemu.img"
qemu-nbd -f raw -t -k "$W/qemu.sock" --cache=writeback --aio=threads "$W/qemu.img" & PIDS+=($!)
wait_sock "$W/qemu.sock"
QEMU_URI="nbd+unix:///?socket=$W/qemu.sock"

# --- RSS sampler ---------------------------------------------------------------
( peak=0; while kill -0 $SLUICE_PID 2>/dev/null; do
    r=$(awk '/VmRSS/{print $2}' /proc/$SLUICE_PID/status 2>/dev/null || echo 0)
    [ "${r:-0}" -gt "$peak" ] && peak=$r && echo $peak > "$W/rss"; sleep 0.2; done ) & PIDS+=($!)

fio_job() { # uri rw bs qd → IOPS and MB/s on one line
  local out="$W/fio.json"
  fio --name=b --ioengine=nbd --uri="$1" --size=$SIZE --numjobs=1 --thread \
      --output-format=json --output="$out" --time_based --runtime="$RUNTIME" \
      --rw="$2" --bs="$3" --iodepth="$4" >/dev/null 2>&1
  python3 - "$out" "$2" <<'PY'
import json, sys
t = open(sys.argv[1]).read(); j = json.loads(t[t.index('{'):])['jobs'][0]
d = j['read'] if 'read' in sys.argv[2] else j['write']
print(f"{d['iops']:.0f} {d['bw_bytes']/1e6:.0f}")
PY
}

median() { python3 -c 'import sys,statistics; v=[list(map(float,l.split())) for l in sys.stdin]; print(" ".join(f"{statistics.median(c):.0f}" for c in zip(*v)))'; }


# Fill every target once so reads hit data (not holes), as in shared/notes/nbd.md §7.
for u in "$SLUICE_URI" "$NBDKIT_URI" "$QEMU_URI"; do
  fio --name=fill --ioengine=nbd --uri="$u" --size=$SIZE --thread --rw=write --bs=1m --iodepth=8 >/dev/null 2>&1
done

printf '%-22s %12s %12s %12s %10s %10s\n' "job" "sluice" "nbdkit-file" "qemu-nbd" "s/nbdkit" "s/qemu"
IFS=, read -ra JOBS <<< "${ROWS:-randread 4k 1,randread 4k 32,randwrite 4k 1,randwrite 4k 32,read 1m 8,write 1m 8}"
for job in "${JOBS[@]}"; do
  set -- $job
  unit=IOPS; col=1; [ "$2" = 1m ] && unit=MB/s && col=2
  # Passes alternate between the targets, so a slow spell of the machine
  # hits all three alike.
  rm -f "$W"/row.*
  for _ in $(seq 1 "$PASSES"); do
    fio_job "$SLUICE_URI" "$1" "$2" "$3" >> "$W/row.s"
    fio_job "$NBDKIT_URI" "$1" "$2" "$3" >> "$W/row.k"
    fio_job "$QEMU_URI"   "$1" "$2" "$3" >> "$W/row.q"
  done
  s=$(median < "$W/row.s" | cut -d' ' -f$col)
  k=$(median < "$W/row.k" | cut -d' ' -f$col)
  q=$(median < "$W/row.q" | cut -d' ' -f$col)
  printf '%-22s %12s %12s %12s %9.2fx %9.2fx\n' "$1 $2 QD$3 ($unit)" "$s" "$k" "$q" \
    "$(python3 -c "print($s/$k)")" "$(python3 -c "print($s/$q)")"
done
echo "sluice gateway peak RSS: $(( $(cat "$W/rss" 2>/dev/null || echo 0) / 1024 )) MiB"
