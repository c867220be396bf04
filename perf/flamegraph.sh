#!/usr/bin/env bash
# CPU profile of the broker under load, as a flame graph.
#
# Starts the broker (release build; one worker pinned to core 0 with taskset), runs
# `ternmq bench` on core 1, and records the broker with `perf record -F 999 -p PID`
# while the load runs, then renders `perf script | inferno-collapse-perf |
# inferno-flamegraph` into an SVG (open it in a browser: hover shows the share of
# samples, click zooms).
#
# If perf cannot sample here (no perf binary, or neither the hardware `cycles` event
# nor the software `cpu-clock` timer can be recorded), or with CALLGRIND=1, it falls
# back to `valgrind --tool=callgrind` on a shorter, lighter run (valgrind slows the
# broker ~50x) and writes a `callgrind_annotate` summary instead.
#
# Usage: perf/flamegraph.sh [BENCH ARGS...]   (default: pairs -n 100 --qos 0 --max)
# Env:   BROKER_ARGS (extra broker options), DURATION (s recorded, default 5),
#        CALLGRAPH (dwarf [default; Rust release builds have no frame pointers] | fp),
#        OUT (output file without extension, default perf/results/DATE-flamegraph-SCENARIO),
#        CALLGRIND=1 (force the valgrind fallback).
# Needs: linux-perf (apt-get install linux-perf), inferno (cargo install inferno),
#        valgrind for the fallback.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release/ternmq
DURATION=${DURATION:-5}
CALLGRAPH=${CALLGRAPH:-dwarf}
PORT=18840
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
if [ $# -eq 0 ]; then set -- pairs -n 100 --qos 0 --max --payload 64; fi
OUT=${OUT:-perf/results/$(date -u +%Y-%m-%d)-flamegraph-$1}
PATH=$PATH:$HOME/.cargo/bin
WORK=$(mktemp -d)
BPID=
cleanup() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# Which way can we profile?
MODE=callgrind
if [ "${CALLGRIND:-0}" != 1 ] && command -v perf >/dev/null; then
  # (Outputs go to files first: with pipefail, `grep -q` closing a pipe early
  # would fail the producer.)
  perf stat -e instructions true > "$WORK/stat.txt" 2>&1 || true
  if grep -q 'not supported' "$WORK/stat.txt"; then
    echo "perf: hardware events are not supported here (a VM without a PMU); trying the cpu-clock timer." >&2
    EVENTS=cpu-clock
  else
    EVENTS="cycles cpu-clock"
  fi
  for ev in $EVENTS; do
    if perf record -e "$ev" -F 999 -o "$WORK/probe.data" -- sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done' >/dev/null 2>&1; then
      perf report -i "$WORK/probe.data" --stdio > "$WORK/probe.txt" 2>/dev/null || true
      if grep -q '%' "$WORK/probe.txt"; then MODE=perf; EVENT=$ev; break; fi
    fi
  done
  if [ $MODE = perf ]; then echo "perf: sampling with the '$EVENT' event" >&2
  else echo "perf: cannot record samples on this machine; falling back to valgrind --tool=callgrind" >&2; fi
fi
if [ $MODE = perf ]; then
  command -v inferno-flamegraph >/dev/null || { echo "inferno missing: cargo install inferno" >&2; exit 1; }
fi

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "broker did not start" >&2; exit 1
}
BROKER="$BIN --listen 127.0.0.1:$PORT --workers 1 --no-pin --sys-interval 0 --log-level warn ${BROKER_ARGS:-}"

if [ $MODE = perf ]; then
  taskset -c 0 $BROKER & BPID=$!
  wait_port
  # Connections are set up before the measured interval; record during it.
  taskset -c 1 "$BIN" bench "$@" --port $PORT --warmup 1 --duration $((DURATION + 2)) --quiet > "$WORK/bench.txt" &
  GPID=$!
  sleep 2
  perf record -e "$EVENT" -F 999 --call-graph "$CALLGRAPH" -p "$BPID" -o "$WORK/perf.data" -- sleep "$DURATION" 2> "$WORK/record.log" || { cat "$WORK/record.log" >&2; exit 1; }
  wait $GPID || true
  perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf > "$WORK/folded"
  inferno-flamegraph --title "ternmq: bench $* (perf $EVENT, ${DURATION}s)" < "$WORK/folded" > "$OUT.svg"
  # The heaviest frames as text, for commit messages and quick reading.
  awk '{n=$NF; $NF=""; split($0, f, ";"); leaf=f[length(f)]; s[leaf]+=n; t+=n}
       END {for (k in s) printf "%6.2f%%  %s\n", 100*s[k]/t, k}' "$WORK/folded" | sort -rn | head -25 > "$OUT.top.txt"
  echo "bench (sent received msg/s lost dup ooo): $(sed -n 3p "$WORK/bench.txt" | xargs)" >&2
  echo "wrote $OUT.svg ($(du -h "$OUT.svg" | cut -f1)) and $OUT.top.txt (self time by leaf function)" >&2
else
  command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install valgrind" >&2; exit 1; }
  # valgrind slows the broker ~50x: fewer clients, a short run.
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" $BROKER 2> "$WORK/valgrind.log" & BPID=$!
  wait_port
  taskset -c 1 "$BIN" bench pairs -n 10 --qos 0 --max --inflight 10 --warmup 0.5 --duration 2 --drain 5 --port $PORT --quiet > "$WORK/bench.txt" || true
  kill -INT "$BPID"; wait "$BPID" || true; BPID=
  callgrind_annotate --inclusive=no "$WORK/callgrind.out" 2>/dev/null | head -60 > "$OUT.callgrind.txt"
  echo "bench (sent received msg/s lost dup ooo): $(sed -n 3p "$WORK/bench.txt" | xargs)" >&2
  echo "wrote $OUT.callgrind.txt (callgrind_annotate, self cost, top 60 lines)" >&2
fi
