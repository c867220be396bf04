#!/usr/bin/env bash
# ternmq over plain TCP vs TLS on this machine: `ternmq --workers 1` pinned to core 0
# (a fresh broker per run, with one plain and one TLS listener), the generator
# (`ternmq bench pairs -n 100 --max`, QoS 0, 64 B) pinned to core 1, runs alternating
# plain, TLS, plain, TLS, ... One JSON line per run (with commit, date, machine and
# load average), then the medians and the TLS/plain ratio.
#
# The throwaway CA and server certificate (EC P-256, SAN IP:127.0.0.1) are made with
# the openssl command-line tool in a temporary directory and deleted at the end.
#
# Usage: perf/tls.sh > perf/results/DATE-tls.txt
# Env:   REPS (default 3), DURATION (s measured per run, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-10}
BIN=${CARGO_TARGET_DIR:-target}/release/ternmq
PLAIN=18840
TLS=18841
[ -x "$BIN" ] || { echo "build first: cargo build --release ($BIN missing)" >&2; exit 1; }
WORK=$(mktemp -d)
BP=
cleanup() {
  [ -n "$BP" ] && kill "$BP" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
ec -x509 -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 1 -subj "/CN=ternmq perf CA"
ec -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj "/CN=localhost"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$WORK/ext.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -out "$WORK/server.pem" -days 1 -extfile "$WORK/ext.cnf" 2>/dev/null

BROKER="taskset -c 0 $BIN --workers 1 --sys-interval 0 --log-level warn --listen 127.0.0.1:$PLAIN --tls-listen 127.0.0.1:$TLS --cert CERT --key KEY"
GEN="taskset -c 1 $BIN bench pairs -n 100 --max --payload 64 --duration $DURATION --quiet --json --broker-pid PID"
echo "# commit $(git rev-parse --short HEAD) $(date -u +%FT%TZ) nproc $(nproc) $(uname -r)"
echo "# broker: $BROKER"
echo "# plain:  $GEN --port $PLAIN"
echo "# tls:    $GEN --port $TLS --tls --cafile CA"
for rep in $(seq "$REPS"); do
  for mode in plain tls; do
    taskset -c 0 "$BIN" --workers 1 --sys-interval 0 --log-level warn \
      --listen 127.0.0.1:$PLAIN --tls-listen 127.0.0.1:$TLS \
      --cert "$WORK/server.pem" --key "$WORK/server.key" &
    BP=$!
    sleep 1
    if [ "$mode" = tls ]; then
      extra=(--port $TLS --tls --cafile "$WORK/ca.pem")
    else
      extra=(--port $PLAIN)
    fi
    out=$(taskset -c 1 "$BIN" bench pairs -n 100 --max --payload 64 --duration "$DURATION" \
      --quiet --json --broker-pid "$BP" "${extra[@]}")
    kill "$BP"
    wait "$BP" 2>/dev/null || true
    BP=
    echo "{\"mode\":\"$mode\",\"rep\":$rep,\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"run\":$out}"
  done
done | tee "$WORK/runs.jsonl"
python3 - "$WORK/runs.jsonl" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for mode in ("plain", "tls"):
    rs = [r["run"] for r in runs if r["mode"] == mode]
    med[mode] = statistics.median(r["msgs_per_sec"] for r in rs)
    cpu = statistics.median(r["broker"]["us_per_msg"] for r in rs)
    print(f"# {mode}: msg/s {[round(r['msgs_per_sec']) for r in rs]} median {med[mode]:.0f}, "
          f"broker CPU median {cpu:.3f} us/msg, lost {sum(r['lost'] for r in rs)}")
print(f"# tls / plain: {med['tls'] / med['plain']:.2f}")
EOF
