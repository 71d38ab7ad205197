#!/usr/bin/env bash
# bench/nbd-tls.sh — Sluice's NBD door with TLS required vs nbdkit
# --tls=require (file plugin), in one run: same certificates (one CA, a
# server certificate, a client certificate whose common name is the
# tenant), same 1 GiB size, same fio jobs (fio's nbd engine through
# libnbd, nbds:// over loopback TCP, one connection). Prints IOPS / MB/s
# per row with the ratio Sluice/nbdkit.
#
# fio runs as nobody: libnbd takes client certificates from
# $HOME/.pki/libnbd (root's are fixed at /etc/pki/libnbd, and fio's nbd
# engine refuses a tls-certificates=DIR in the URI); TLS, not the uid, is
# what both servers check.
#
# Usage: bench/nbd-tls.sh [RUNTIME_SECONDS]   (default 10; needs bin/sluice: make build)
# Env:   PASSES=N  repeat every job N times, alternating the targets, and
#                  report the median (default 1)
#        ROWS="randread 4k 32,write 1m 8"  run only these rows (rw bs qd)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNTIME=${1:-10}
PASSES=${PASSES:-1}
SIZE=1G
BIN=${SLUICE_BIN:-bin/sluice}
for t in fio nbdkit python3 go setpriv; do command -v $t >/dev/null || { echo "missing $t (make deps)"; exit 1; }; done
[ -x "$BIN" ] || { echo "missing $BIN (make build)"; exit 1; }

W=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

wait_sock() { for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1"; exit 1; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "no port $1"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

go run ./bench/tlscerts "$W/pki" bench
mkdir -p "$W/home/.pki" && cp -r "$W/pki/client" "$W/home/.pki/libnbd"
chmod 755 "$W" "$W/home" "$W/home/.pki" "$W/home/.pki/libnbd" && chmod 644 "$W"/home/.pki/libnbd/*
asfio() { setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$W/home" "$@"; }
SP=$(free_port)
"$BIN" gateway --data-dir "$W/sluice" --nbd-listen "127.0.0.1:$SP" --pool-size 8G --log-level warn \
  --nbd-tls-cert "$W/pki/server/server-cert.pem" --nbd-tls-key "$W/pki/server/server-key.pem" \
  --nbd-tls-ca "$W/pki/server/ca-cert.pem" 2>"$W/sluice.log" & PIDS+=($!)
wait_sock "$W/sluice/api.sock"
"$BIN" --api-socket "$W/sluice/api.sock" volume create bench --tenant bench --size $SIZE >/dev/null
SLUICE_URI="nbds://127.0.0.1:$SP/bench/bench"

KP=$(free_port)
truncate -s $SIZE "$W/nbdkit.img"
nbdkit -f -i 127.0.0.1 -p "$KP" --tls=require --tls-certificates="$W/pki/server" --tls-verify-peer \
  file "$W/nbdkit.img" 2>"$W/nbdkit.log" & PIDS+=($!)
wait_port "$KP"
NBDKIT_URI="nbds://127.0.0.1:$KP/"

fio_job() { # uri rw bs qd → IOPS and MB/s on one line
  local out="$W/out/fio.json"
  asfio fio --name=b --ioengine=nbd --uri="$1" --size=$SIZE --numjobs=1 --thread \
      --output-format=json --output="$out" --time_based --runtime="$RUNTIME" \
      --rw="$2" --bs="$3" --iodepth="$4" >/dev/null 2>&1
  python3 - "$out" "$2" <<'PY'
import json, sys
t = open(sys.argv[1]).read(); j = json.loads(t[t.index('{'):])['jobs'][0]
d = j['read'] if 'read' in sys.argv[2] else j['write']
print(f"{d['iops']:.0f} {d['bw_bytes']/1e6:.0f}")
PY
}
mkdir -m 777 "$W/out"
median() { python3 -c 'import sys,statistics; v=[list(map(float,l.split())) for l in sys.stdin]; print(" ".join(f"{statistics.median(c):.0f}" for c in zip(*v)))'; }

for u in "$SLUICE_URI" "$NBDKIT_URI"; do
  asfio fio --name=fill --ioengine=nbd --uri="$u" --size=$SIZE --thread --rw=write --bs=1m --iodepth=8 >/dev/null 2>&1 \
    || { echo "fio cannot write $u"; cat "$W"/*.log; exit 1; }
done

printf '%-22s %12s %12s %10s\n' "job (TLS)" "sluice" "nbdkit-file" "s/nbdkit"
IFS=, read -ra JOBS <<< "${ROWS:-randread 4k 1,randread 4k 32,randwrite 4k 1,randwrite 4k 32,read 1m 8,write 1m 8}"
for job in "${JOBS[@]}"; do
  set -- $job
  unit=IOPS; col=1; [ "$2" = 1m ] && unit=MB/s && col=2
  rm -f "$W"/row.*
  for _ in $(seq 1 "$PASSES"); do
    fio_job "$SLUICE_URI" "$1" "$2" "$3" >> "$W/row.s"
    fio_job "$NBDKIT_URI" "$1" "$2" "$3" >> "$W/row.k"
  done
  s=$(median < "$W/row.s" | cut -d' ' -f$col)
  k=$(median < "$W/row.k" | cut -d' ' -f$col)
  printf '%-22s %12s %12s %9.2fx\n' "$1 $2 QD$3 ($unit)" "$s" "$k" "$(python3 -c "print($s/$k)")"
done
