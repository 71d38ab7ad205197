#!/usr/bin/env bash
# bench/storewrites.sh — the store's filtered-write benchmarks
# (gateway/store/bench_test.go: BenchmarkWrite4K, 16 writers of 4 KiB
# random writes; BenchmarkWrite1M, 1 MiB writes over a 64 MiB volume;
# each plain and through noop, zstd level 1, lz4, aes, crc), A/B against
# a base revision: both test binaries are built from the same
# bench_test.go, then run alternately, ROUNDS times each, on the same
# machine state. Prints ns/op per round and the median per build, and
# each chain's ratio to plain (ns/op plain / ns/op chain: 1.00x = as
# fast as no filter).
#
# Usage: [ROUNDS=2] [BENCHTIME=1000x] [BENCH=regexp] bench/storewrites.sh BASE_REV
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: bench/storewrites.sh BASE_REV}
ROUNDS=${ROUNDS:-2}
BENCHTIME=${BENCHTIME:-1000x}
BENCH=${BENCH:-BenchmarkWrite(4K|1M)}
W=$(mktemp -d /var/tmp/sluice-storewrites.XXXXXX)
trap 'rm -rf "$W"' EXIT

mkdir "$W/base"
git archive "$BASE" | tar -x -C "$W/base"
cp gateway/store/bench_test.go "$W/base/gateway/store/"
# The base's own copies of the benchmarks (if it has them) would clash.
python3 - "$W/base/gateway/store" <<'PY'
import pathlib, re, sys
for p in pathlib.Path(sys.argv[1]).glob("*_test.go"):
    if p.name == "bench_test.go":
        continue
    s = p.read_text()
    for name in ("BenchmarkWrite1M", "BenchmarkWrite4K", "BenchmarkRead4K", "benchVolume"):
        m = re.search(r"\n(// %s[^\n]*\n(?://[^\n]*\n)*)?func %s\(.*?\n}\n" % (name, name), s, re.S)
        if m:
            s = s[:m.start()] + "\n" + s[m.end():]
    p.write_text(s)
PY
# Drop the imports that only the removed benchmarks used.
for _ in 1 2 3 4 5 6; do
  unused=$(cd "$W/base" && go vet ./gateway/store/ 2>&1 | sed -n 's/^vet: \(.*_test.go\):\([0-9]*\):.*imported and not used$/\1:\2/p; s/^\(gateway.*_test.go\):\([0-9]*\):.*imported and not used$/\1:\2/p' || true) # vet fails while imports are unused
  [ -z "$unused" ] && break
  u=$(echo "$unused" | head -1) # one at a time: a deletion moves the lines after it
  sed -i "${u##*:}d" "$W/base/${u%:*}"
done
(cd "$W/base" && go test -c -o "$W/base.test" ./gateway/store/)
go test -c -o "$W/new.test" ./gateway/store/

for r in $(seq "$ROUNDS"); do
  for b in base new; do
    (cd gateway/store && "$W/$b.test" -test.run XXX -test.bench "$BENCH" -test.benchtime "$BENCHTIME" 2>/dev/null) |
      awk -v b="$b" -v r="$r" '/^Benchmark/ {name=$1} / ns\/op/ {for (i=1;i<=NF;i++) if ($(i+1)=="ns/op") print b, r, name, $i}' >>"$W/results"
  done
done
python3 - "$W/results" <<'PY'
import collections, statistics, sys
res = collections.defaultdict(list)
for line in open(sys.argv[1]):
    b, r, name, ns = line.split()
    res[(name.rsplit("-", 1)[0], b)].append(int(ns))
names = sorted({n for n, _ in res}, key=lambda n: (n.split("/")[0], n))
print(f"{'benchmark':44} {'base ns/op (rounds)':>28} {'new ns/op (rounds)':>28} {'base/plain':>10} {'new/plain':>10}")
for n in names:
    group, _ = n.split("/", 1)
    row = [f"{n:44}"]
    for b in ("base", "new"):
        row.append(f"{' '.join(str(x) for x in res[(n, b)]):>28}")
    for b in ("base", "new"):
        plain = statistics.median(res[(group + "/plain", b)])
        row.append(f"{plain / statistics.median(res[(n, b)]):>9.2f}x")
    print(" ".join(row))
PY
