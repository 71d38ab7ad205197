#!/bin/bash
# bench/cowreuse.sh — copy-on-write rewrites on a fresh sparse pool file:
# a fresh gateway (pool file on a tmpfs of its own), one 1 GiB block
# volume with a transforming policy (default `SET checksum`), filled
# once with 1 MiB writes, then three rounds of 6 s of 1 MiB writes at
# QD8 (fio's nbd engine); prints MB/s per round and the pool file's host
# footprint. Each rewrite goes to newly allocated pool space, so this is
# where the allocator's choice of space shows (alloc.go, allocReuse).
# A/B: run it with each binary in turn.
#
# Usage: bench/cowreuse.sh BIN   (root; env POOL=4G TMPFS=8G POLICY='SET checksum')
set -u
BIN=${1:?usage: bench/cowreuse.sh BIN}; W=$(mktemp -d /tmp/sluice-cowreuse.XXXXXX); mkdir -p $W; mountpoint -q $W || mount -t tmpfs -o size=${TMPFS:-8G} tmpfs $W
$BIN gateway --data-dir $W/sluice --nbd-listen "" --pool-size ${POOL:-4G} --log-level warn >/dev/null 2>&1 & GP=$!
S() { $BIN --api-socket $W/sluice/api.sock "$@"; }
for i in $(seq 200); do S volume list >/dev/null 2>&1 && break; sleep 0.05; done
S volume create b/v --size 1G >/dev/null; S policy add "FOR VOLUME b/v DO ${POLICY:-SET checksum}" >/dev/null
fio --name=lay --ioengine=nbd --uri="nbd+unix:///b/v?socket=$W/sluice/nbd.sock" --size=1G --rw=write --bs=1m --iodepth=8 --output=/dev/null
for r in 1 2 3; do
fio --thread --name=b --ioengine=nbd --uri="nbd+unix:///b/v?socket=$W/sluice/nbd.sock" --size=1G --iodepth=8 --rw=write --bs=1m --time_based --runtime=6 --output-format=json --output=$W/r.json >/dev/null
python3 -c "import json;t=open('$W/r.json').read();j=json.loads(t[t.index('{'):])['jobs'][0]['write'];print('round $r MB/s', int(j['bw_bytes']/1e6))"
done
ls -ls $W/sluice/pool | awk '{print "pool host KiB", $1}'
kill $GP; wait $GP; umount $W; rmdir $W
