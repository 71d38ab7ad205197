#!/usr/bin/env bash
# bench/shim.sh — the shim door (LD_PRELOAD, shared memory) vs the FUSE door
# on the same fs volume and the same files, vs native filesystems: tmpfs
# and the local disk (ext4 under /var/tmp). One run, same machine; the
# gateway's data dir (pool file + badger) lives on a tmpfs, so the doors are
# compared, not disks.
#
# Rows (fio, psync engine, O_DIRECT, one 1 GiB file; IOPS, mean and p99):
#   4K randread QD1, 4K randwrite QD1, 4K randwrite with fdatasync after
#   each, 128K sequential read and write; and 4K randread QD1 without
#   O_DIRECT (both doors' reads then come from the kernel's page cache:
#   the shim sends a read-only buffered fd's reads there). For the two doors, the gateway's
#   CPU per IO (its threads' run time from /proc/PID/task/*/schedstat).
# Then:
#   inproc   Volume.Do on the same file in one process (bench/virtioload
#            -file; gateway stopped), and the shim's added latency over it
#   virtio   the gateway's CPU per IO for the virtio door (our initiator,
#            4 KiB QD1 on a block volume), beside the shim's
#   sqlite   inserts/s, one row per transaction, WAL, synchronous=FULL
#   pgbench  TPS of `pgbench -c 8 -j 2 -T RUNTIME` at scale 10
#   db_bench fillrandom and readrandom ops/s (RocksDB 7.8), and readrandom
#   again with use_direct_reads
# The shim rows check SLUICE_SHIM_STATS: a row whose calls were not
# bypassed aborts the run.
#
# Usage: bench/shim.sh [RUNTIME_SECONDS]   (default 10; needs root and make build)
# Env:   PASSES=N     repeat the fio rows N times, median (default 1); passes
#                     alternate the targets' order
#        ROWS="4K randread QD1,128K write"   only these fio rows
#        FIO_ONLY=1   skip the in-process, virtio and database rows
#        DB_ONLY=1    only the database rows
#        DBS="sqlite dbbench pgbench"   which database rows (default all)
#        TARGETS="shim fuse"   a subset of shim, fuse, tmpfs, disk
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-10}
PASSES=${PASSES:-1}
BIN=${SLUICE_BIN:-bin/sluice}
LIB=$(dirname "$BIN")/libsluice-shim.so
PGBIN=/usr/lib/postgresql/15/bin
for t in fio python3 go; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] && [ -f "$LIB" ] || { echo "missing $BIN or $LIB (make build)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (FUSE mounts with allow_other, tmpfs, runuser)"; exit 1; }

W=$(mktemp -d /tmp/sluice-shim-bench.XXXXXX)
DISK=$(mktemp -d /var/tmp/sluice-shim-bench.XXXXXX)
mount -t tmpfs -o size=10G,mode=755 tmpfs "$W"
GW=""
cleanup() {
  [ -n "$GW" ] && kill "$GW" 2>/dev/null && wait "$GW" 2>/dev/null || true
  umount "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null || true
  umount "$W" 2>/dev/null || umount -l "$W"; rmdir "$W"; rm -rf "$DISK"
}
trap cleanup EXIT
mkdir -p "$W/mnt" "$W/native" "$W/out"
chmod 1777 "$W/native" "$DISK"
go build -o "$W/virtioload" ./bench/virtioload

S() { "$BIN" --api-socket "$W/sluice/api.sock" "$@"; }
start_gw() {
  "$BIN" gateway --data-dir "$W/sluice" --shim-socket "$W/shim.sock" --nbd-listen "" --nbd-socket none \
    --pool-size 10G --log-level warn 2>>"$W/sluice.log" &
  GW=$!
  for _ in $(seq 1 200); do S volume list >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "gateway did not start"; cat "$W/sluice.log"; exit 1
}
stop_gw() { kill "$GW"; wait "$GW" 2>/dev/null || true; GW=""; }
gw_cpu_ns() { # the gateway's threads' run time so far
  cat /proc/"$GW"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}

start_gw
S volume create bench/fs --size 6G --kind fs >/dev/null
S volume create bench/blk --size 1G >/dev/null
S mount bench/fs "$W/mnt" >/dev/null
chmod 1777 "$W/mnt"
RUN_SHIM=("$BIN" --api-socket "$W/sluice/api.sock" run --shim-lib "$LIB" --mount "$W/mnt" --)

read -r -a TARGETS <<<"${TARGETS:-shim fuse tmpfs disk}"
declare -A DIR=([shim]="$W/mnt" [fuse]="$W/mnt" [tmpfs]="$W/native" [disk]="$DISK")
# with TARGET ARGS...: ARGS run as the target needs (the shim: under `sluice run`)
with() {
  local t=$1; shift
  if [ "$t" = shim ]; then SLUICE_SHIM_STATS=1 "${RUN_SHIM[@]}" "$@"; else "$@"; fi
}
# bypassed STATS CALL...: the shim's bypassed count of CALLs in a stats file
bypassed() {
  local f=$1; shift; local n=0
  for c in "$@"; do
    n=$((n + $(grep -o "call=$c bypassed=[0-9]*" "$f" | awk -F= '{s += $3} END {print s + 0}')))
  done
  echo $n
}
need_bypass() { # STATS WHAT CALL...
  local f=$1 what=$2; shift 2
  if [ "$(bypassed "$f" "$@")" = 0 ]; then echo "$what: the shim bypassed none of $* (see $f)"; cat "$f"; exit 1; fi
}
# need_cached STATS WHAT CALL...: a read-only buffered fd's reads went to
# the page cache (docs/SHIM.md, "Reads the page cache serves")
need_cached() {
  local f=$1 what=$2 n=0; shift 2
  for c in "$@"; do
    n=$((n + $(awk -v c="call=$c " 'index($0, c) && match($0, /page_cache=[0-9]+/) {s += substr($0, RSTART + 11, RLENGTH - 11)}
      END {print s + 0}' "$f")))
  done
  if [ "$n" = 0 ]; then echo "$what: none of $* went to the page cache (see $f)"; cat "$f"; exit 1; fi
}

# --- fio rows ------------------------------------------------------------------
FIO_ROWS=("4K randread QD1|randread|4k|" "4K randwrite QD1|randwrite|4k|" "4K randwrite+fdatasync|randwrite|4k|--fdatasync=1"
          "128K read|read|128k|" "128K write|write|128k|" "4K randread QD1 buffered|randread|4k|--direct=0")
fio_job() { # target row-spec pass → one result line in $W/out/fio
  local t=$1 spec=$2 name rw bs extra before after st="$W/out/stats"
  IFS='|' read -r name rw bs extra <<<"$spec"
  before=0; [ "$t" = shim ] || [ "$t" = fuse ] && before=$(gw_cpu_ns)
  # shellcheck disable=SC2086
  with "$t" fio --thread --name=b --directory="${DIR[$t]}" --filename=bench.dat --size=1G --direct=1 \
    --ioengine=psync --iodepth=1 --rw="$rw" --bs="$bs" $extra --time_based --runtime="$RUNTIME" \
    --output-format=json --output="$W/out/fio.json" >/dev/null 2>"$st"
  after=0; [ "$t" = shim ] || [ "$t" = fuse ] && after=$(gw_cpu_ns)
  if [ "$t" = shim ] && [ "$rw" = randread ] && [[ "$extra" == *--direct=0* ]]; then
    need_cached "$st" "$name" pread64 pread # fio opens a read job's file read-only
  elif [ "$t" = shim ]; then
    need_bypass "$st" "$name" pread64 pwrite64 pread pwrite
  fi
  python3 - "$W/out/fio.json" "$rw" "$name" "$t" "$before" "$after" >>"$W/out/fio" <<'PY'
import json, sys
f, rw, name, t, before, after = sys.argv[1:]
j = json.load(open(f))["jobs"][0]
k = "read" if "read" in rw else "write"
ios = j[k]["total_ios"]
cpu = (int(after) - int(before)) / 1e3 / ios if ios and int(after) else 0
print(f"{name}|{t}|{j[k]['iops']:.0f}|{j[k]['clat_ns']['mean'] / 1e3:.1f}|{j[k]['clat_ns']['percentile']['99.000000'] / 1e3:.1f}|{cpu:.2f}")
PY
}

if [ -z "${DB_ONLY:-}" ]; then
  # lay the file out once per directory (the two doors share theirs)
  for t in fuse tmpfs disk; do
    fio --name=lay --directory="${DIR[$t]}" --filename=bench.dat --size=1G --rw=write --bs=1m --end_fsync=1 --output=/dev/null
  done
  for p in $(seq 1 "$PASSES"); do
    order=("${TARGETS[@]}"); [ $((p % 2)) = 0 ] && for ((i = ${#TARGETS[@]} - 1, k = 0; i >= 0; i--, k++)); do order[k]=${TARGETS[i]}; done
    for spec in "${FIO_ROWS[@]}"; do
      name=${spec%%|*}
      [ -n "${ROWS:-}" ] && [[ ",$ROWS," != *",$name,"* ]] && continue
      for t in "${order[@]}"; do fio_job "$t" "$spec"; done
    done
  done
fi

# --- virtio CPU, then in-process ------------------------------------------------
if [ -z "${FIO_ONLY:-}" ] && [ -z "${DB_ONLY:-}" ]; then
  sock=$(S virtio export bench/blk)
  "$W/virtioload" -target virtio -socket "$sock" -pid "$GW" -fill -runtime "${RUNTIME}s" randread:4k:1 randwrite:4k:1 >"$W/out/virtio"
  stop_gw
  "$W/virtioload" -target inproc -dir "$W/sluice" -volume bench/fs -file bench.dat -runtime "${RUNTIME}s" \
    randread:4k:1 randwrite:4k:1 >"$W/out/inproc"
  start_gw
  S mount bench/fs "$W/mnt" >/dev/null
fi

# --- databases ------------------------------------------------------------------
sqlite_row() { # target → inserts/s
  local t=$1 d="${DIR[$1]}/sqlite" st="$W/out/stats"
  rm -rf "$d"; mkdir -p "$d"
  with "$t" python3 - "$d/db" "$RUNTIME" 2>"$st" <<'PY' >>"$W/out/sqlite"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
n, start, end = 0, time.time(), time.time() + float(sys.argv[2])
while time.time() < end:
    db.execute("INSERT INTO t (v) VALUES (randomblob(200))"); n += 1
print(f"{n / (time.time() - start):.0f}")
PY
  [ "$t" = shim ] && need_bypass "$st" "sqlite" pwrite64 pwrite fdatasync fsync
  echo "$t" >>"$W/out/sqlite.targets"
}

dbbench_row() { # target → fillrandom and readrandom ops/s
  local t=$1 d="${DIR[$1]}/rocks" st="$W/out/stats"
  rm -rf "$d"
  with "$t" db_bench --db="$d" --benchmarks=fillrandom,readrandom --num=300000 --reads=300000 --value_size=400 \
    --threads=1 --compression_type=none --disable_wal=0 --sync=0 2>"$st" >"$W/out/dbbench.txt"
  [ "$t" = shim ] && need_bypass "$st" "db_bench" pwrite64 pwrite pread64 pread write read
  awk -v t="$t" '/^fillrandom|^readrandom/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^ops\/sec/) print $1 "|" t "|" $i}' \
    "$W/out/dbbench.txt" >>"$W/out/dbbench"
  # The same reads with O_DIRECT (RocksDB's use_direct_reads): no page
  # cache on either side, every read a request to the gateway.
  with "$t" db_bench --db="$d" --use_existing_db=1 --benchmarks=readrandom --use_direct_reads=1 --num=300000 --reads=100000 \
    --value_size=400 --threads=1 --compression_type=none 2>"$st" >"$W/out/dbbench.txt"
  [ "$t" = shim ] && need_bypass "$st" "db_bench direct reads" pread64 pread
  awk -v t="$t" '/^readrandom/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^ops\/sec/) print "readrandom(direct)|" t "|" $i}' \
    "$W/out/dbbench.txt" >>"$W/out/dbbench"
}

pgbench_row() { # target → TPS
  local t=$1 d="${DIR[$1]}/pg" sock="$W/pgsock" st="$W/out/stats"
  rm -rf "$d" "$sock"; mkdir -p "$d" "$sock"; chown postgres "$d" "$sock"
  with "$t" runuser -u postgres -- "$PGBIN/initdb" -D "$d/data" -A trust -U postgres >/dev/null 2>"$st"
  with "$t" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d/data" -l "$d/log" -w \
    -o "-k $sock -c listen_addresses='' -c max_connections=20 -c huge_pages=off" start >/dev/null 2>>"$st"
  runuser -u postgres -- "$PGBIN/pgbench" -h "$sock" -i -s 10 -q postgres >/dev/null 2>&1
  local before after
  before=$(gw_cpu_ns)
  runuser -u postgres -- "$PGBIN/pgbench" -h "$sock" -c 8 -j 2 -T "$RUNTIME" postgres 2>/dev/null >"$W/out/pgbench.txt"
  after=$(gw_cpu_ns)
  # target|TPS|gateway CPU µs per transaction (0 for the native targets)
  awk -v t="$t" -v cpu=$((after - before)) '/actually processed/ {n = $NF} /^tps/ {tps = $3}
    END {printf "%s|%s|%.1f\n", t, tps, (t == "shim" || t == "fuse") && n ? cpu / 1e3 / n : 0}' \
    "$W/out/pgbench.txt" >>"$W/out/pgbench"
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null
  if [ "$t" = shim ]; then cat "$d/log" >>"$st"; need_bypass "$st" "pgbench" pwrite64 pwrite pread64 pread; fi
}

if [ -z "${FIO_ONLY:-}" ]; then
  DBS=${DBS:-sqlite dbbench pgbench}
  if [[ " $DBS " == *" sqlite "* ]]; then for t in "${TARGETS[@]}"; do sqlite_row "$t"; done; fi
  if [[ " $DBS " != *" dbbench "* ]]; then :
  elif command -v db_bench >/dev/null; then for t in "${TARGETS[@]}"; do dbbench_row "$t"; done
  else echo "db_bench missing: no RocksDB rows (make deps)"; fi
  if [[ " $DBS " != *" pgbench "* ]]; then :
  elif [ -x "$PGBIN/pgbench" ] && id postgres >/dev/null 2>&1; then
    chmod 755 "$W/sluice" 2>/dev/null || true
    for t in "${TARGETS[@]}"; do pgbench_row "$t"; done
  else echo "PostgreSQL 15 missing: no pgbench rows (make deps)"; fi
fi

python3 - "$W/out" <<'PY'
import os, statistics, sys
out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [l.split("|") for l in open(p).read().split("\n") if l] if os.path.exists(p) else []
targets = ["shim", "fuse", "tmpfs", "disk"]

rows = {}
for name, t, iops, mean, p99, cpu in lines("fio"):
    rows.setdefault(name, {}).setdefault(t, []).append((float(iops), float(mean), float(p99), float(cpu)))
if rows:
    print(f"{'fio (psync, O_DIRECT)':24} " + " ".join(f"{t:>22}" for t in targets) + "   shim/fuse shim/tmpfs shim/disk")
    print(f"{'':24} " + " ".join(f"{'IOPS  mean  p99 µs':>22}" for t in targets))
    med = {}
    for name, per in rows.items():
        cells = []
        for t in targets:
            if t not in per:
                cells.append(f"{'-':>22}"); continue
            iops, mean, p99, cpu = (statistics.median(x[i] for x in per[t]) for i in range(4))
            med[(name, t)] = (iops, mean, p99, cpu)
            cells.append(f"{iops:>8.0f} {mean:>6.1f} {p99:>6.1f}")
        r = lambda a: f"{med[(name, 'shim')][0] / med[(name, a)][0]:.2f}x" if (name, a) in med and (name, "shim") in med else "-"
        print(f"{name:24} " + " ".join(cells) + f"   {r('fuse'):>9} {r('tmpfs'):>10} {r('disk'):>9}")
    print()
    print("gateway CPU per IO (µs):  " + "  ".join(f"{name}: shim {med[(name, 'shim')][3]:.1f}, fuse {med[(name, 'fuse')][3]:.1f}"
                                                for name in rows if (name, "shim") in med and (name, "fuse") in med))

def load(name):  # virtioload lines: JOB IOS SECONDS IOPS MB/S MEAN_US P99_US CPU_SELF_S CPU_PEER_S
    p = os.path.join(out, name)
    return {l.split()[0]: list(map(float, l.split()[1:])) for l in open(p) if l.strip()} if os.path.exists(p) else {}
inproc, virtio = load("inproc"), load("virtio")
for job, name in (("randread:4k:1", "4K randread QD1"), ("randwrite:4k:1", "4K randwrite QD1")):
    if job in inproc and (name, "shim") in med:
        ip = inproc[job]
        print(f"{name}: in-process Volume.Do {ip[2]:.0f} IOPS, mean {ip[4]:.1f} µs; shim mean {med[(name, 'shim')][1]:.1f} µs: "
              f"added {med[(name, 'shim')][1] - ip[4]:.1f} µs")
    if job in virtio and (name, "shim") in med:
        v = virtio[job]
        vc = v[7] / v[0] * 1e6
        print(f"{name}: gateway CPU per IO, virtio door {vc:.1f} µs, shim {med[(name, 'shim')][3]:.1f} µs: "
              f"shim/virtio {med[(name, 'shim')][3] / vc:.2f}x ({v[2]:.0f} IOPS on virtio)")

for title, name, unit in (("sqlite inserts (WAL, synchronous=FULL)", "sqlite", "inserts/s"),):
    p = os.path.join(out, name)
    if os.path.exists(p):
        vals = dict(zip(open(p + ".targets").read().split(), open(p).read().split()))
        print(f"\n{title}: " + ", ".join(f"{t} {vals[t]}" for t in targets if t in vals) + f" {unit}"
              + (f"; shim/fuse {float(vals['shim']) / float(vals['fuse']):.2f}x" if "shim" in vals and "fuse" in vals else ""))
db = {}
for bench, t, ops in lines("dbbench"):
    db.setdefault(bench, {})[t] = float(ops)
for bench, per in db.items():
    print(f"db_bench {bench}: " + ", ".join(f"{t} {per[t]:.0f}" for t in targets if t in per) + " ops/s"
          + (f"; shim/fuse {per['shim'] / per['fuse']:.2f}x" if "shim" in per and "fuse" in per else ""))
pg = {t: (float(v), float(c)) for t, v, c in lines("pgbench")}
if pg:
    print("pgbench -c 8 -j 2 (scale 10): " + ", ".join(f"{t} {pg[t][0]:.0f}" for t in targets if t in pg) + " TPS"
          + (f"; shim/fuse {pg['shim'][0] / pg['fuse'][0]:.2f}x" if "shim" in pg and "fuse" in pg else "")
          + (f"; shim/tmpfs {pg['shim'][0] / pg['tmpfs'][0]:.2f}x, tmpfs/fuse {pg['tmpfs'][0] / pg['fuse'][0]:.2f}x (the shim's ceiling)"
             if "shim" in pg and "tmpfs" in pg and "fuse" in pg else ""))
    print("pgbench: gateway CPU per transaction: " + ", ".join(f"{t} {pg[t][1]:.0f} µs" for t in ("shim", "fuse") if t in pg))
PY
