#!/usr/bin/env bash
# What the cross-worker path costs: broker CPU per delivered message for 100 pairs
# (QoS 0, max) with one worker on core 0, two workers sharing core 0, and two workers
# pinned to cores 0 and 1. The generator runs on core 1 in all three, so only the
# third shares a core with it. Alternating, REPS times (default 3). The last two rows
# run one worker and two workers (cores 0 and 1) at the same offered rate (open loop,
# RATE msg/s, default 1000000), since CPU per message depends on how many messages
# each wake-up and syscall carries, and `--max` throughput differs between the two.
# Each row ends with the generator's CPU and its time waiting for core 1 (shares of
# the run): with two workers on cores 0 and 1 it waits for worker 1.
# With FLOOR=1 each round also runs the floor (examples/floor.rs, built by
# `cargo build --release --example floor`): one loop on core 0 (`f1-core0`) and two
# loops on cores 0 and 1 (`f2-cores01`), the least a forwarder and a cross-thread
# hand-off cost on this machine, and their ratio beside ternmq's.
# Usage: [FLOOR=1] perf/workers.sh > perf/results/DATE-workers.txt
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release/ternmq
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
FLOOR_BIN=${CARGO_TARGET_DIR:-target}/release/examples/floor
if [ "${FLOOR:-0}" = 1 ] && [ ! -x "$FLOOR_BIN" ]; then
  echo "build first: cargo build --release --example floor ($FLOOR_BIN missing)" >&2; exit 1
fi
echo "# commit $(git rev-parse HEAD), $(date -u +%Y-%m-%dT%H:%M:%SZ), loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
run() { # label, command prefix, broker command (@PORT@: its port)[, load mode]
  local port=$((20000 + RANDOM % 2000)) pid out
  $2 ${3//@PORT@/$port} >/dev/null 2>&1 &
  pid=$!
  sleep 0.5
  out=$(taskset -c 1 "$BIN" bench pairs -n 100 ${4:---max} --qos 0 --payload 64 --warmup 1 \
    --duration "${DURATION:-4}" --keep-alive 600 --port $port --broker-pid $pid --quiet --json)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  echo "$out" | python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
gen = lambda k: max(r.get(k) or [0])
print('%-16s msg/s %9.0f  broker CPU us/msg %.3f  p50 us %.0f  lost %d  gen cpu %.2f wait %.2f' % ('$1', r['msgs_per_sec'], r['broker']['us_per_msg'], r['latency_us']['p50'], r['lost'], gen('generator_cpu'), gen('generator_wait')))"
}
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
T="$BIN --listen 127.0.0.1:@PORT@ --sys-interval 0 --log-level warn"
for _ in $(seq "${REPS:-3}"); do
  run w1-core0 "taskset -c 0" "$T --workers 1 --no-pin"
  run w2-core0 "taskset -c 0" "$T --workers 2 --no-pin"
  run w2-cores01 "" "$T --workers 2"
  if [ "${FLOOR:-0}" = 1 ]; then
    run f1-core0 "taskset -c 0" "$FLOOR_BIN 127.0.0.1:@PORT@"
    run f2-cores01 "" "$FLOOR_BIN 127.0.0.1:@PORT@ --threads 2 --pin"
  fi
  run w1-rate "taskset -c 0" "$T --workers 1 --no-pin" "--rate ${RATE:-1000000}"
  run w2-rate "" "$T --workers 2" "--rate ${RATE:-1000000}"
done | tee "$rows"
# Medians per configuration, and each two-worker median as a ratio of the one-worker
# median of the same load (the target: w2-cores01 at most x1.15 of w1-core0).
python3 - "$rows" <<'PY'
import collections, statistics, sys
cpu = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    cpu[f[0]].append(float(f[f.index("us/msg") + 1]))
med = {k: statistics.median(v) for k, v in cpu.items()}
for k, v in med.items():
    print("# median %-10s broker CPU us/msg %.3f (%d runs)" % (k, v, len(cpu[k])))
for two, one in [("w2-core0", "w1-core0"), ("w2-cores01", "w1-core0"), ("f2-cores01", "f1-core0"),
                 ("w2-rate", "w1-rate")]:
    if two in med and one in med:
        # Run by run as well: the runs of one round follow each other within seconds,
        # while the medians may come from the machine's slow and fast modes.
        pairs = [b / a for a, b in zip(cpu[one], cpu[two])]
        print("# %s / %s: x%.2f (run by run: %s; median x%.2f)" % (
            two, one, med[two] / med[one], ", ".join("x%.2f" % x for x in pairs),
            statistics.median(pairs)))
PY
