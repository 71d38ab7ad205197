#!/usr/bin/env bash
# bench/virtio.sh — the shared-memory virtio door against its limit and the
# NBD door, one 1 GiB volume, the same jobs and the same Go load generator
# (bench/virtioload) for every target:
#   inproc    Volume.Do called in the load generator's process (the limit;
#             no gateway process runs then)
#   adaptive, eventfd, poll
#             our initiator (virtio.Dial) → `sluice gateway --virtio-wait M`
#             in its own process, both sides in wait mode M
#   nbd       a minimal Go NBD client → the gateway's NBD unix socket
# Jobs: 4 KiB random read and write at QD1 and QD32, 1 MiB sequential read
# and write at QD8, and the idle-ish point: 4 KiB random read at QD1 capped
# at 1,000 IOPS. Prints IOPS, mean and p99 latency, CPU seconds per million
# IOs (load generator's getrusage + the gateway's threads' schedstat run
# time), and the ratios the issue's goals are stated in.
#
# Usage: bench/virtio.sh [RUNTIME_SECONDS]   (default 5; needs bin/sluice: make build)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-5}
SIZE=1G
BIN=${SLUICE_BIN:-bin/sluice}
LOAD=bin/virtioload
for t in go python3; do command -v $t >/dev/null || { echo "missing $t"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
go build -o "$LOAD" ./bench/virtioload

W=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
GW=""
cleanup() { [ -n "$GW" ] && kill "$GW" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }
S() { "$BIN" --api-socket "$W/g/api.sock" "$@"; }

start_gw() { # wait mode
  "$BIN" gateway --data-dir "$W/g" --nbd-listen "" --pool-size 8G --virtio-wait "$1" --log-level warn 2>>"$W/g.log" &
  GW=$!
  wait_sock "$W/g/api.sock"
}
stop_gw() { kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""; }

JOBS=(randread:4k:1 randwrite:4k:1 randread:4k:32 randwrite:4k:32 read:1m:8 write:1m:8 randread:4k:1:1000)
TARGETS=(inproc adaptive eventfd poll nbd)

# One volume, filled once (1 MiB writes through NBD) so reads hit data.
start_gw adaptive
S volume create bench --tenant bench --size $SIZE >/dev/null
"$LOAD" -target nbd -socket "$W/g/nbd.sock" -volume bench/bench -fill -runtime 1s >/dev/null
stop_gw

for t in "${TARGETS[@]}"; do
  case $t in
  inproc) "$LOAD" -target inproc -dir "$W/g" -volume bench/bench -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out" ;;
  nbd)    start_gw adaptive
          "$LOAD" -target nbd -socket "$W/g/nbd.sock" -volume bench/bench -pid "$GW" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out"
          stop_gw ;;
  *)      start_gw "$t"
          sock=$(S virtio export bench/bench)
          "$LOAD" -target virtio -socket "$sock" -wait "$t" -pid "$GW" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out"
          stop_gw ;;
  esac
done

python3 - "$W" "${TARGETS[@]}" <<'PY'
import sys
w, targets = sys.argv[1], sys.argv[2:]
res = {}  # target -> job -> fields
jobs = []
for t in targets:
    res[t] = {}
    for line in open(f"{w}/{t}.out"):
        f = line.split()
        job = f[0]
        if job not in jobs:
            jobs.append(job)
        ios, secs, iops, mbs, mean, p99, cself, cpeer = map(float, f[1:])
        res[t][job] = dict(ios=ios, iops=iops, mbs=mbs, mean=mean, p99=p99, cpu=(cself + cpeer) / ios * 1e6)

def label(j):
    rw, bs, qd, *rate = j.split(":")
    s = f"{rw} {bs} QD{qd}"
    return s + (f" @{rate[0]}/s" if rate else "")

def table(title, key, fmt):
    print(f"\n{title}")
    print(f"{'job':<26}" + "".join(f"{t:>10}" for t in targets))
    for j in jobs:
        print(f"{label(j):<26}" + "".join(f"{fmt(res[t][j][key]):>10}" for t in targets))

unit = lambda j: "MB/s" if ":1m:" in j else "IOPS"
print(f"\n{'throughput':<26}" + "".join(f"{t:>10}" for t in targets))
for j in jobs:
    k = "mbs" if unit(j) == "MB/s" else "iops"
    print(f"{label(j) + ' (' + unit(j) + ')':<26}" + "".join(f"{res[t][j][k]:>10.0f}" for t in targets))
table("mean latency (µs)", "mean", lambda v: f"{v:.1f}")
table("p99 latency (µs)", "p99", lambda v: f"{v:.1f}")
table("CPU seconds per million IOs (client + gateway)", "cpu", lambda v: f"{v:.1f}")

def r(t, j, k="iops"):
    return res[t][j][k]
if {"inproc", "adaptive", "eventfd"} <= set(targets):
    print("\ngoals")
    q32 = [j for j in jobs if j.endswith(":32")]
    for j in q32:
        print(f"  adaptive/inproc IOPS, {label(j)}: {r('adaptive', j) / r('inproc', j):.2f}x (goal ≥ 0.9x)")
    for j in [j for j in jobs if j.endswith(":4k:1")]:
        print(f"  added mean latency, {label(j)}: {r('adaptive', j, 'mean') - r('inproc', j, 'mean'):.1f} µs (goal ≤ 10 µs)")
        print(f"  adaptive/eventfd IOPS, {label(j)}: {r('adaptive', j) / r('eventfd', j):.2f}x (goal ≥ 2x)")
    for j in [j for j in jobs if j.count(":") == 3]:
        print(f"  adaptive/eventfd CPU per IO, {label(j)}: {r('adaptive', j, 'cpu') / r('eventfd', j, 'cpu'):.2f}x (goal ≤ 1.5x)")
    if "nbd" in targets:
        for j in jobs:
            k = "mbs" if unit(j) == "MB/s" else "iops"
            if j.count(":") == 2:
                print(f"  adaptive/nbd, {label(j)}: {r('adaptive', j, k) / r('nbd', j, k):.2f}x")
PY
