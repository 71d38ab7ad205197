#!/usr/bin/env bash
# bench/filterab.sh — one filter against no filter, side by side: one
# gateway, two 1 GiB volumes (`none`, and one under the policy), both
# filled once with 1 MiB writes, then the same fio job alternating between
# the two volumes for PASSES passes per queue depth, so a slow spell of the
# machine hits both alike. Prints each pass and the median of the per-pass
# ratios (policy/none). This is the measurement behind issue 7's "4 KiB
# random read with encryption ≥ 85% of plain".
#
# Usage: [PASSES=5] [QDS="1 16"] [RW=randread] [POLICY="SET encryption"]
#        bench/filterab.sh [RUNTIME_SECONDS]   (default 5; needs bin/sluice: make build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-5}
PASSES=${PASSES:-5}
QDS=${QDS:-1 16}
RW=${RW:-randread}
POLICY=${POLICY:-SET encryption}
BIN=${SLUICE_BIN:-bin/sluice}
for t in fio python3; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }

W=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
GP=
cleanup() { [ -n "$GP" ] && kill "$GP" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
printf 'bench %s\n' "$(head -c 32 /dev/urandom | base64)" > "$W/keyring"
chmod 600 "$W/keyring"
"$BIN" gateway --data-dir "$W/g" --nbd-listen "" --pool-size 4G --keyring "$W/keyring" --log-level warn 2>"$W/g.log" &
GP=$!
for _ in $(seq 1 200); do [ -S "$W/g/api.sock" ] && break; sleep 0.05; done
S() { "$BIN" --api-socket "$W/g/api.sock" "$@"; }
for v in none filtered; do S volume create $v --tenant bench --size 1G >/dev/null; done
S policy add "FOR VOLUME bench/filtered DO $POLICY" >/dev/null
uri() { echo "nbd+unix:///bench/$1?socket=$W/g/nbd.sock"; }
for v in none filtered; do
  fio --name=fill --ioengine=nbd --uri="$(uri $v)" --size=1G --thread --rw=write --bs=1m --iodepth=8 \
      --buffer_compress_percentage=50 --refill_buffers >/dev/null 2>&1
done
iops() { # volume qd → IOPS
  fio --name=b --ioengine=nbd --uri="$(uri "$1")" --size=1G --numjobs=1 --thread --time_based \
      --runtime="$RUNTIME" --rw="$RW" --bs=4k --iodepth="$2" --buffer_compress_percentage=50 --refill_buffers \
      --output-format=json --output="$W/fio.json" >/dev/null 2>&1
  python3 -c "import json; t=open('$W/fio.json').read(); j=json.loads(t[t.index('{'):])['jobs'][0]; print(round(j['read']['iops'] + j['write']['iops']))"
}
echo "policy: $POLICY; fio $RW 4k, $RUNTIME s per pass"
for qd in $QDS; do
  ratios=()
  for p in $(seq 1 "$PASSES"); do
    n=$(iops none "$qd"); f=$(iops filtered "$qd")
    r=$(python3 -c "print(f'{$f/$n:.2f}')")
    ratios+=("$r")
    printf 'QD%-3s pass %d: none %7d  filtered %7d  %sx\n' "$qd" "$p" "$n" "$f" "$r"
  done
  printf 'QD%-3s median filtered/none: %sx\n' "$qd" "$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')"
done
