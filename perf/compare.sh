#!/usr/bin/env bash
# Compares ternmq with Mosquitto on this machine: each broker pinned to core 0 with one
# thread, the generator (ternmq bench, release build) pinned to core 1. Runs every
# scenario against the brokers alternately (A B A B A B) and writes one JSON line per
# run plus a header with the machine, commit and exact commands.
# Usage: perf/compare.sh [REPS] > perf/results/DATE-compare.txt
#        python3 perf/summarize.py perf/results/DATE-compare.txt >> perf/results/DATE-compare.txt
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-${1:-3}}
BIN=${CARGO_TARGET_DIR:-target}/release/ternmq
MPORT=18834
TPORT=18835
CONF=$(mktemp)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$MPORT" > "$CONF"
M_CMD="taskset -c 0 /usr/sbin/mosquitto -c $CONF"
T_CMD="taskset -c 0 $BIN --listen 127.0.0.1:$TPORT --workers 1 --no-pin --sys-interval 0 --log-level warn"
$M_CMD >/dev/null 2>&1 & MPID=$!
$T_CMD >/dev/null 2>&1 & TPID=$!
trap 'kill $MPID $TPID 2>/dev/null; rm -f $CONF' EXIT
sleep 1
echo "# ternmq vs Mosquitto, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "# commit $(git rev-parse HEAD)"
echo "# loadavg at start: $(cat /proc/loadavg) (shared machine: other processes compete for both cores)"
echo "# machine: nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "# mosquitto: $(/usr/sbin/mosquitto -h 2>&1 | head -1); config: $(tr '\n' ';' < "$CONF")"
echo "# mosquitto: $M_CMD"
echo "# ternmq:    $T_CMD"
declare -A SCEN=(
  [pairs100]="pairs -n 100 --qos 0 --max --payload 64 --warmup 1 --duration 10"
  [pairs1]="pairs -n 1 --qos 0 --max --payload 64 --warmup 1 --duration 10"
)
for name in pairs100 pairs1; do
  for rep in $(seq 1 "$REPS"); do
    for broker in mosquitto ternmq; do
      if [ $broker = mosquitto ]; then port=$MPORT; pid=$MPID; else port=$TPORT; pid=$TPID; fi
      cmd="taskset -c 1 $BIN bench ${SCEN[$name]} --port $port --broker-pid $pid --quiet --json"
      echo "# run $name rep $rep $broker: $cmd"
      line=$($cmd)
      echo "{\"run\":\"$name\",\"rep\":$rep,\"broker\":\"$broker\",\"result\":$line}"
    done
  done
done
