#!/usr/bin/env bash
# Compares ternmq with Mosquitto (and rumqttd when its binary is installed) on this
# machine: each broker pinned to core 0 with one thread (rumqttd: its one router
# thread plus its network thread, all on core 0), the generator (ternmq bench,
# release build) pinned to core 1. Every scenario starts freshly started brokers
# and runs against them alternately (A B C A B C ...); one JSON line per run (with commit, date and
# machine), plus a header with the exact commands. The 50k msg/s latency runs also
# leave one .hgrm per broker and rep and a percentile plot beside the output.
# `rate50kbp` repeats them with the generator busy polling (`bench --busy-poll`: its
# own wake-up leaves the measured latency), and adds ternmq busy polling too
# (`ternmq-bp`, `--busy-poll 200`).
#
# Usage: perf/compare.sh [REPS] > perf/results/DATE-compare.txt
#        python3 perf/summarize.py perf/results/DATE-compare.txt >> perf/results/DATE-compare.txt
# Env:   REPS (default 2), DURATION (s measured per run, default 5),
#        SCENARIOS (space-separated subset of the names below),
#        BROKERS (subset of "mosquitto rumqttd ternmq floor"; floor: see
#        examples/floor.rs, not in the default list), RUMQTTD (path of the binary),
#        OUT_DIR (where .hgrm/.svg files go, default perf/results),
#        TAG (file name prefix of those, default today's date).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-${1:-2}}
DURATION=${DURATION:-5}
BIN=${CARGO_TARGET_DIR:-target}/release/ternmq
OUT_DIR=${OUT_DIR:-perf/results}
TAG=${TAG:-$(date -u +%Y-%m-%d)}
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")}
MPORT=18834
TPORT=18835
RPORT=18836
T2PORT=18837
M100PORT=18838
T20PORT=18839
TBPPORT=18840
FPORT=18841
# The floor (examples/floor.rs): a forwarder that does only what no broker can avoid.
FLOOR=${CARGO_TARGET_DIR:-target}/release/examples/floor
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
# 19,500 connections: the brokers (which inherit this) and the generator (which
# raises its own soft limit too) each need one descriptor per connection.
ulimit -n "$(ulimit -Hn)" || true
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$MPORT" > "$WORK/mosquitto.conf"
# The QoS 1 scenario also runs each broker at the other's default in-flight window
# (Mosquitto 20, ternmq 100), so the ratio can be read window for window.
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_inflight_messages 100\n' "$M100PORT" > "$WORK/mosquitto-if100.conf"
# rumqttd: one v4 server; router settings as in rumqttd's own example config,
# max_connections above the 19,500 of `conns`. The router is one thread by design
# (not configurable); the server's connections run on tokio, pinned by taskset.
cat > "$WORK/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 20010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RPORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
EOF

declare -A CMD PORT PID
CMD[mosquitto]="taskset -c 0 /usr/sbin/mosquitto -c $WORK/mosquitto.conf"
CMD[ternmq]="taskset -c 0 $BIN --listen 127.0.0.1:$TPORT --workers 1 --no-pin --sys-interval 0 --log-level warn"
CMD[rumqttd]="taskset -c 0 $RUMQTTD -q -c $WORK/rumqttd.toml"
# Two workers pinned to cores 0 and 1: core 1 is shared with the generator.
CMD[ternmq-w2]="$BIN --listen 127.0.0.1:$T2PORT --workers 2 --sys-interval 0 --log-level warn"
CMD[mosquitto-if100]="taskset -c 0 /usr/sbin/mosquitto -c $WORK/mosquitto-if100.conf"
CMD[ternmq-if20]="taskset -c 0 $BIN --listen 127.0.0.1:$T20PORT --workers 1 --no-pin --sys-interval 0 --log-level warn --max-inflight 20"
CMD[ternmq-bp]="taskset -c 0 $BIN --listen 127.0.0.1:$TBPPORT --workers 1 --no-pin --sys-interval 0 --log-level warn --busy-poll 200"
CMD[floor]="taskset -c 0 $FLOOR 127.0.0.1:$FPORT"
PORT=([mosquitto]=$MPORT [ternmq]=$TPORT [rumqttd]=$RPORT [ternmq-w2]=$T2PORT [mosquitto-if100]=$M100PORT [ternmq-if20]=$T20PORT [ternmq-bp]=$TBPPORT [floor]=$FPORT)
EXTRA_Q1="mosquitto-if100 ternmq-if20"  # run in pairs100q1 only
EXTRA_BP="ternmq-bp"  # run in rate50kbp only

BROKERS=${BROKERS:-mosquitto rumqttd ternmq}
if [[ " $BROKERS " == *" rumqttd "* ]] && [ ! -x "$RUMQTTD" ]; then
  echo "# rumqttd: not installed ($RUMQTTD missing; 'cargo install rumqttd'), skipped"
  BROKERS=${BROKERS//rumqttd/}
fi
if [[ " $BROKERS " == *" floor "* ]] && [ ! -x "$FLOOR" ]; then
  echo "# floor: not built ($FLOOR missing; 'cargo build --release --example floor'), skipped"
  BROKERS=${BROKERS//floor/}
fi

start() { # start BROKER: (re)starts it, sets PID[BROKER]
  local b=$1
  ${CMD[$b]} >"$WORK/$b.log" 2>&1 &
  PID[$b]=$!
  PIDS+=("${PID[$b]}")
  for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$b]}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "# $b did not start: $(tail -n 3 "$WORK/$b.log" | tr '\n' ' ')"
}
for b in $BROKERS ternmq-w2 $EXTRA_Q1 $EXTRA_BP; do start "$b"; done
sleep 1

COMMIT=$(git rev-parse HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo "-dirty")
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
MACHINE="nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "# brokers: $BROKERS (pairs100w2: ternmq and ternmq-w2, $EXTRA_Q1 for pairs100q1, $EXTRA_BP for rate50kbp), $DATE"
echo "# commit $COMMIT"
echo "# loadavg at start: $(cat /proc/loadavg) (shared machine: other processes compete for both cores)"
echo "# machine: $MACHINE"
echo "# open files: $(ulimit -n)"
echo "# mosquitto: $(/usr/sbin/mosquitto -h 2>&1 | head -1); config: $(tr '\n' ';' < "$WORK/mosquitto.conf")"
for b in $BROKERS ternmq-w2 $EXTRA_Q1 $EXTRA_BP; do echo "# $b: ${CMD[$b]}"; done
if [[ " $BROKERS " == *" rumqttd "* ]]; then
  echo "# rumqttd: $("$RUMQTTD" --version 2>&1 | head -1); config: $(grep -v '^ *$' "$WORK/rumqttd.toml" | tr -s ' ' | tr '\n' ';')"
fi

D="--warmup 1 --duration $DURATION"
declare -A SCEN=(
  [pairs1]="pairs -n 1 --qos 0 --max --payload 64 $D"
  [pairs100]="pairs -n 100 --qos 0 --max --payload 64 $D"
  [fanin100]="fanin -n 100 --qos 0 --max --payload 64 $D"
  [fanout1000]="fanout -n 1000 --qos 0 --max --payload 64 $D"
  [pairs100q1]="pairs -n 100 --qos 1 --max --inflight 100 --payload 64 $D"
  [rate50k]="pairs -n 1000 --qos 0 --rate 50000 --payload 64 $D"
  [rate50kbp]="pairs -n 1000 --qos 0 --rate 50000 --payload 64 --busy-poll $D"
  # Not in the default list: half the rate, where neither process is saturated, so
  # the p50 shows the machine's wake-up floor rather than a queue.
  [rate25k]="pairs -n 1000 --qos 0 --rate 25000 --payload 64 $D"
  [conns19500]="conns -n 19500 --source 127.0.0.2-127.0.0.20 --warmup 0 --duration 3"
  [pairs100w2]="pairs -n 100 --qos 0 --max --payload 64 $D"
)
SCENARIOS=${SCENARIOS:-pairs1 pairs100 fanin100 fanout1000 pairs100q1 rate50k rate50kbp conns19500 pairs100w2}
mkdir -p "$OUT_DIR"
for name in $SCENARIOS; do
  brokers=$BROKERS
  # One worker alternates with two, so their ratio is measured under the same drift.
  if [ "$name" = pairs100w2 ]; then brokers="ternmq ternmq-w2"; fi
  if [ "$name" = pairs100q1 ]; then brokers="$BROKERS $EXTRA_Q1"; fi
  if [ "$name" = rate50kbp ]; then brokers="$BROKERS $EXTRA_BP"; fi
  # The floor forwards QoS 0 on exact topics only.
  case $name in fanin100|pairs100q1) brokers=${brokers//floor/} ;; esac
  # Every scenario starts on fresh brokers, so none inherits the pools, queues or
  # allocator state an earlier scenario left (alternation within it is unchanged).
  for broker in $brokers; do
    kill "${PID[$broker]}" 2>/dev/null; wait "${PID[$broker]}" 2>/dev/null || true
    start "$broker"
  done
  sleep 1
  for rep in $(seq 1 "$REPS"); do
    for broker in $brokers; do
      # RSS per connection: a fresh broker each time, or the allocator hands back
      # memory freed by earlier runs and the growth shrinks rep after rep.
      if [ "$name" = conns19500 ]; then
        kill "${PID[$broker]}" 2>/dev/null; wait "${PID[$broker]}" 2>/dev/null || true
        start "$broker"; sleep 1
      fi
      if ! kill -0 "${PID[$broker]}" 2>/dev/null; then
        echo "# $broker is not running (exit: $(tail -n 2 "$WORK/$broker.log" | tr '\n' ' ')); restarting"
        start "$broker"; sleep 1
      fi
      extra=""
      case $name in rate*) extra="--hgrm $OUT_DIR/$TAG-$name-$broker-$rep.hgrm" ;; esac
      # --keep-alive for every broker alike: rumqttd refuses keep-alive 0.
      cmd="taskset -c 1 $BIN bench ${SCEN[$name]} --keep-alive 600 --port ${PORT[$broker]} --broker-pid ${PID[$broker]} --quiet --json $extra"
      echo "# run $name rep $rep $broker: $cmd"
      if line=$($cmd 2>"$WORK/err"); then :; else
        echo "# run failed: $(tail -n 2 "$WORK/err" | tr '\n' ' ')"
        line=null
      fi
      echo "{\"run\":\"$name\",\"rep\":$rep,\"broker\":\"$broker\",\"commit\":\"$COMMIT\",\"date\":\"$DATE\",\"machine\":\"$MACHINE\",\"result\":$line}"
    done
  done
done
if [[ " $SCENARIOS " == *" rate50k "* ]]; then
  files=()
  for broker in $BROKERS; do
    f="$OUT_DIR/$TAG-rate50k-$broker-1.hgrm"
    if [ -s "$f" ]; then cp "$f" "$WORK/$broker.hgrm"; files+=("$WORK/$broker.hgrm"); fi
  done
  if [ ${#files[@]} -gt 0 ]; then
    $BIN bench plot --title "1000 pairs at 50k msg/s, QoS 0, 64 B (rep 1)" --log-y \
      --out "$OUT_DIR/$TAG-rate50k.svg" "${files[@]}"
    echo "# plot: $OUT_DIR/$TAG-rate50k.svg (from ${files[*]##*/} of rep 1)"
  fi
fi
