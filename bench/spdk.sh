#!/usr/bin/env bash
# bench/spdk.sh — the store on an SPDK bdev against the store on a pool file
# in tmpfs, in one run, with the same Go load generator (bench/virtioload)
# and the same jobs for every target:
#   tmpfs-inproc  Volume.Do in the load generator, store on a tmpfs pool file
#   spdk-inproc   Volume.Do in the load generator, store on an SPDK malloc
#                 bdev (spdkbackend: our initiator → SPDK's vhost target)
#   tmpfs-nbd     a minimal Go NBD client → `sluice gateway` (tmpfs pool)
#   spdk-nbd      the same → `sluice gateway --device spdk:...`
#   vhost         our initiator alone → SPDK's vhost-user-blk controller on
#                 a malloc bdev (no store: the channel's own limit)
#   tmpfs-core1, spdk-core1
#                 the two in-process rows with the load generator (the store
#                 and initiator) held to core 1 (taskset), SPDK's reactor on
#                 core 0: the same core for the store either way, as on a
#                 host with a core to spare for the reactor
# Jobs: 4 KiB random read and write at QD1 and QD32, 1 MiB sequential read
# and write at QD8. Prints IOPS, mean and p99 latency, CPU seconds per
# million IOs (load generator's getrusage + the gateway's threads' and the
# SPDK target's threads' schedstat run time: SPDK's reactor busy-polls its
# core, so its whole core is counted while a job runs), and the ratios of
# issue 20's goals. The NBD rows use virtioload's NBD client rather than
# fio so every row is measured by one loop with one CPU accounting.
#
# Needs root (2 MiB huge pages: it adds what it needs to
# /proc/sys/vm/nr_hugepages and takes them away again at the end), SPDK in
# SPDK_DIR (default /opt/sluice-spdk/v23.01.1: make deps), bin/sluice.
#
# Usage: bench/spdk.sh [RUNTIME_SECONDS]   (default 5)
# Env:   SPDK_ARGS="-E"  extra arguments for the SPDK target (-E: interrupt mode)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-5}
SIZE=512M          # the volume
BDEV_MIB=768       # the malloc bdev holding the store (volume + metadata room)
SPDK_MEM=1200      # SPDK's huge-page memory (-s), MiB: the malloc bdev and its pools
PAGES=$(( (SPDK_MEM + 256) / 2 + 40 ))  # + DPDK's own + two initiators' shared memory
SPDK_DIR=${SPDK_DIR:-/opt/sluice-spdk/v23.01.1}
BIN=${SLUICE_BIN:-bin/sluice}
LOAD=bin/virtioload
for t in go python3 taskset; do command -v $t >/dev/null || { echo "missing $t"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }
[ -x "$SPDK_DIR/bin/vhost" ] || { echo "no SPDK in $SPDK_DIR (make deps)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (huge pages)"; exit 1; }
go build -o "$LOAD" ./bench/virtioload

W=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)   # sockets, logs
T=$(mktemp -d /dev/shm/sluice-bench.XXXXXX)   # tmpfs: pools and metadata
GW="" SPDK="" ADDED=0
cleanup() {
  [ -n "$GW" ] && kill "$GW" 2>/dev/null || true
  [ -n "$SPDK" ] && kill "$SPDK" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$SPDK" ] && rm -rf "/var/run/dpdk/spdk_pid$SPDK"
  if [ "$ADDED" -gt 0 ]; then  # give back what we added (others may have added too)
    echo $(( $(cat /proc/sys/vm/nr_hugepages) - ADDED )) >/proc/sys/vm/nr_hugepages
  fi
  rm -rf "$W" "$T"
}
trap cleanup EXIT
wait_sock() { for _ in $(seq 1 400); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }
rpc() { python3 "$SPDK_DIR/scripts/rpc.py" -s "$W/spdk.sock" "$@"; }

# Huge pages: add, and take away at exit; hugetlbfs where DPDK looks.
before=$(cat /proc/sys/vm/nr_hugepages)
echo $(( before + PAGES )) >/proc/sys/vm/nr_hugepages
ADDED=$(( $(cat /proc/sys/vm/nr_hugepages) - before ))
[ "$ADDED" -ge "$PAGES" ] || { echo "could reserve only $ADDED of $PAGES huge pages"; exit 1; }
mountpoint -q /dev/hugepages || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages; }

# shellcheck disable=SC2086
LD_LIBRARY_PATH="$SPDK_DIR/lib" "$SPDK_DIR/bin/vhost" -m 0x1 -s $SPDK_MEM --huge-unlink --disable-cpumask-locks \
  -r "$W/spdk.sock" -S "$W" ${SPDK_ARGS:-} >"$W/spdk.log" 2>&1 &
SPDK=$!
wait_sock "$W/spdk.sock"
for _ in $(seq 1 100); do rpc spdk_get_version >/dev/null 2>&1 && break; sleep 0.1; done
rpc bdev_malloc_create -b M0 $BDEV_MIB 4096 >/dev/null
URI="spdk:$W/spdk.sock?bdev=M0"

start_gw() { # data dir, extra args...
  local d=$1; shift
  "$BIN" gateway --data-dir "$d" --nbd-listen "" --log-level warn "$@" 2>>"$W/g.log" &
  GW=$!
  wait_sock "$d/api.sock"
}
stop_gw() { kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""; }

JOBS=(randread:4k:1 randwrite:4k:1 randread:4k:32 randwrite:4k:32 read:1m:8 write:1m:8)
TARGETS=(tmpfs-inproc spdk-inproc tmpfs-core1 spdk-core1 tmpfs-nbd spdk-nbd vhost) # vhost last: it writes over the store's bdev

# Two stores, each with one volume filled once (so reads hit data).
start_gw "$T/tmpfs" --pool-size $BDEV_MIB"M"
"$BIN" --api-socket "$T/tmpfs/api.sock" volume create bench --tenant bench --size $SIZE >/dev/null
stop_gw
start_gw "$T/spdk" --device "$URI"
"$BIN" --api-socket "$T/spdk/api.sock" volume create bench --tenant bench --size $SIZE >/dev/null
stop_gw
"$LOAD" -target inproc -dir "$T/tmpfs" -fill -runtime 1s >/dev/null
"$LOAD" -target inproc -dir "$T/spdk" -device "$URI" -fill -runtime 1s >/dev/null

for t in "${TARGETS[@]}"; do
  case $t in
  tmpfs-inproc) "$LOAD" -target inproc -dir "$T/tmpfs" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out" ;;
  spdk-inproc)  "$LOAD" -target inproc -dir "$T/spdk" -device "$URI" -pid "$SPDK" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out" ;;
  tmpfs-core1)  taskset -c 1 "$LOAD" -target inproc -dir "$T/tmpfs" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out" ;;
  spdk-core1)   taskset -c 1 "$LOAD" -target inproc -dir "$T/spdk" -device "$URI" -pid "$SPDK" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out" ;;
  tmpfs-nbd)    start_gw "$T/tmpfs"
                "$LOAD" -target nbd -socket "$T/tmpfs/nbd.sock" -pid "$GW" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out"
                stop_gw ;;
  spdk-nbd)     start_gw "$T/spdk" --device "$URI"
                "$LOAD" -target nbd -socket "$T/spdk/nbd.sock" -pid "$GW,$SPDK" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out"
                stop_gw ;;
  vhost)        # The store's bdev, no gateway on it now: a controller of our own.
                rpc vhost_create_blk_controller bench.0 M0 >/dev/null
                "$LOAD" -target virtio -socket "$W/bench.0" -hugepages -pid "$SPDK" -runtime "${RUNTIME}s" "${JOBS[@]}" >"$W/$t.out"
                rpc vhost_delete_controller bench.0 >/dev/null ;;
  esac
done

python3 - "$W" "$(nproc)" "${TARGETS[@]}" <<'PY'
import sys
w, ncpu, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
res, jobs = {}, []
for t in targets:
    res[t] = {}
    for line in open(f"{w}/{t}.out"):
        f = line.split()
        job = f[0]
        if job not in jobs:
            jobs.append(job)
        ios, secs, iops, mbs, mean, p99, cself, cpeer = map(float, f[1:])
        res[t][job] = dict(iops=iops, mbs=mbs, mean=mean, p99=p99, cpu=(cself + cpeer) / ios * 1e6,
                           self=cself / ios * 1e6, peer=cpeer / ios * 1e6)

def label(j):
    rw, bs, qd = j.split(":")[:3]
    return f"{rw} {bs} QD{qd}"

unit = lambda j: "MB/s" if ":1m:" in j else "IOPS"
def table(title, key, fmt):
    print(f"\n{title}")
    print(f"{'job':<24}" + "".join(f"{t:>14}" for t in targets))
    for j in jobs:
        k = key(j) if callable(key) else key
        print(f"{label(j):<24}" + "".join(f"{fmt(res[t][j][k]):>14}" for t in targets))

table("throughput (IOPS; MB/s for 1m)", lambda j: "mbs" if unit(j) == "MB/s" else "iops", lambda v: f"{v:.0f}")
table("mean latency (µs)", "mean", lambda v: f"{v:.1f}")
table("p99 latency (µs)", "p99", lambda v: f"{v:.1f}")
table("CPU seconds per million IOs (load generator + gateway + SPDK target)", "cpu", lambda v: f"{v:.1f}")

r = lambda t, j, k="iops": res[t][j][k]
print("\nratios")
for j in jobs:
    k = "mbs" if unit(j) == "MB/s" else "iops"
    print(f"  {label(j):<20} spdk/tmpfs in process {r('spdk-inproc', j, k) / r('tmpfs-inproc', j, k):.2f}x,"
          f" through NBD {r('spdk-nbd', j, k) / r('tmpfs-nbd', j, k):.2f}x;"
          f" CPU per IO in process {r('spdk-inproc', j, 'cpu') / r('tmpfs-inproc', j, 'cpu'):.2f}x")
print("\ngoals")
for j in [j for j in jobs if j.endswith(":4k:32")]:
    print(f"  in-process {label(j)} SPDK/tmpfs IOPS: {r('spdk-inproc', j) / r('tmpfs-inproc', j):.2f}x (goal ≥ 0.8x)")
    print(f"    with one core for the store either way (load generator on core 1, the reactor on core 0):"
          f" {r('spdk-core1', j) / r('tmpfs-core1', j):.2f}x")
for j in [j for j in jobs if ":4k:" in j]:
    print(f"  the channel alone (vhost), {label(j)}: {r('vhost', j, 'cpu'):.2f} µs CPU per IO, initiator and reactor"
          f" (goal ≤ 2 µs; the reactor's core is busy-polled, so at low IOPS most of it is polling):"
          f" our initiator {r('vhost', j, 'self'):.2f} µs, SPDK's reactor {r('vhost', j, 'peer'):.2f} µs")
PY
