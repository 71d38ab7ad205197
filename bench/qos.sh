#!/usr/bin/env bash
# bench/qos.sh — what QoS costs, and how accurately its limits hold next to
# the Linux kernel's own limiter. Run as root (cgroup v1 blkio, losetup).
#
# Part 1, overhead: 4 KiB random read QD32 over NBD (fio nbd engine, unix
#   socket, 1 GiB volume filled first) with no QoS rule, and with a rule that
#   never throttles (the request goes through the scheduler). With
#   BASE_REF=<git ref> it also builds and runs that revision (e.g. the commit
#   before QoS landed) for the "no rules vs before" figure.
# Part 2, accuracy: the same write job (64 KiB random writes, QD32, 20 s)
#   against (a) a loop device (--direct-io=on) over a file, from a cgroup v1
#   blkio.throttle.write_bps_device limit, fio libaio O_DIRECT; and (b) a
#   Sluice volume with `qos set --op write --bw`, fio nbd. Prints each one's
#   error against the target over 1 s and 10 s windows.
#
# Usage: bench/qos.sh [RUNTIME_SECONDS=10] [LIMIT_MIB=20]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-10}
LIMIT_MIB=${2:-20}
BIN=${SLUICE_BIN:-bin/sluice}
for t in fio python3 losetup; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
W=$(mktemp -d /var/tmp/sluice-qos.XXXXXX)
CG=/sys/fs/cgroup/blkio/sluice-bench-$$
LOOP=""
GW=""
cleanup() {
  [ -n "$GW" ] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null || true
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
  [ -d "$CG" ] && rmdir "$CG" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

start_gw() { # binary datadir
  "$1" gateway --data-dir "$2" --nbd-listen "" --pool-size 8G --log-level warn 2>>"$W/gw.log" &
  GW=$!
  for _ in $(seq 1 200); do [ -S "$2/api.sock" ] && return 0; sleep 0.05; done
  echo "gateway did not start"; cat "$W/gw.log"; exit 1
}
stop_gw() { kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""; }
iops() { python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):]); print(int(j["jobs"][0]["read"]["iops"]))' "$1"; }
randread() { # uri → IOPS
  fio --name=r --ioengine=nbd --uri="$1" --size=1g --thread --rw=randread --bs=4k --iodepth=32 \
      --time_based --runtime="$RUNTIME" --output-format=json --output="$W/r.json" >/dev/null 2>&1
  iops "$W/r.json"
}

echo "== overhead: 4k randread QD32 over NBD, ${RUNTIME}s each =="
measure() { # binary label [rule...]
  local d="$W/gw-$2"; start_gw "$1" "$d"
  "$1" --api-socket "$d/api.sock" volume create v --tenant t --size 1G >/dev/null
  local uri="nbd+unix:///t/v?socket=$d/nbd.sock"
  fio --name=fill --ioengine=nbd --uri="$uri" --size=1g --thread --rw=write --bs=1m --iodepth=8 >/dev/null 2>&1
  local none; none=$(randread "$uri")
  local ruled=""
  if [ "${3:-}" = rule ]; then
    "$1" --api-socket "$d/api.sock" qos set --volume t/v --iops 100000000 >/dev/null
    ruled=$(randread "$uri")
  fi
  stop_gw
  echo "$none $ruled"
}
if [ -n "${BASE_REF:-}" ]; then
  mkdir -p "$W/base" && git archive "$BASE_REF" | tar -x -C "$W/base"
  (cd "$W/base" && go build -o sluice ./cmd/sluice)
  base=$(measure "$W/base/sluice" base)
fi
read -r none ruled <<<"$(measure "$BIN" new rule)"
printf '%-44s %10s\n' "no rules (this build)" "$none"
printf '%-44s %10s %8.3fx\n' "rule that never throttles" "$ruled" "$(python3 -c "print($ruled/$none)")"
[ -n "${base:-}" ] && printf '%-44s %10s %8.3fx\n' "no rules, $BASE_REF (before QoS)" "$base" "$(python3 -c "print($none/$base)")"

echo
echo "== accuracy: ${LIMIT_MIB} MiB/s write limit, 64k randwrite QD32, 20 s =="
LIMIT=$((LIMIT_MIB << 20))
JOB=(--rw=randwrite --bs=64k --iodepth=32 --time_based --runtime=20 --log_avg_msec=1000)
# (a) kernel: loop device + cgroup v1 blkio throttle
truncate -s 1G "$W/loop.img"
LOOP=$(losetup -f --show --direct-io=on "$W/loop.img")
mkdir -p "$CG"
echo "$(lsblk -ndo MAJ:MIN "$LOOP" | tr -d ' ') $LIMIT" > "$CG/blkio.throttle.write_bps_device"
( echo $BASHPID > "$CG/cgroup.procs"; exec fio --name=k --ioengine=libaio --direct=1 --filename="$LOOP" --size=1g \
    "${JOB[@]}" --write_bw_log="$W/kernel" >/dev/null 2>&1 )
# (b) sluice: NBD with a qos rule
start_gw "$BIN" "$W/gw-acc"
"$BIN" --api-socket "$W/gw-acc/api.sock" volume create v --tenant t --size 1G >/dev/null
"$BIN" --api-socket "$W/gw-acc/api.sock" qos set --volume t/v --op write --bw "${LIMIT_MIB}MiB" >/dev/null
fio --name=s --ioengine=nbd --uri="nbd+unix:///t/v?socket=$W/gw-acc/nbd.sock" --size=1g --thread \
    "${JOB[@]}" --write_bw_log="$W/sluice" >/dev/null 2>&1
stop_gw
python3 - "$LIMIT" "$W/kernel_bw.1.log" "$W/sluice_bw.1.log" <<'PY'
import sys
target = int(sys.argv[1])
def load(p):
    v = [float(l.split(',')[1]) * 1024 for l in open(p) if l.strip()]
    return v[1:]  # drop the first (partial) second
print(f"{'limiter':10} {'1s mean |err|':>14} {'1s max |err|':>13} {'10s mean |err|':>15} {'total':>9}")
for name, path in (("kernel", sys.argv[2]), ("sluice", sys.argv[3])):
    s = load(path)
    e1 = [abs(x - target) / target * 100 for x in s]
    w10 = [sum(s[i:i+10]) / 10 for i in range(0, len(s) - 9)]
    e10 = [abs(x - target) / target * 100 for x in w10]
    tot = sum(s) / len(s) / target
    print(f"{name:10} {sum(e1)/len(e1):13.2f}% {max(e1):12.2f}% {sum(e10)/len(e10):14.2f}% {tot:8.3f}x")
PY
