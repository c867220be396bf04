#!/usr/bin/env python3
"""Summarizes a perf/compare.sh output: medians per (scenario, broker) and ratios."""
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
by = {}
for r in runs:
    by.setdefault((r['run'], r['broker']), []).append(r['result'])
out = ["# summary (medians over reps)",
       "# scenario   broker      msg/s        us CPU/msg  p50 us    p99 us    lost  gen cpu  rss MiB"]
med = {}
for (run, broker), rs in sorted(by.items()):
    m = lambda f: statistics.median(f(x) for x in rs)
    rate = m(lambda x: x['msgs_per_sec'])
    cpu = m(lambda x: x['broker']['us_per_msg'] or 0)
    med[(run, broker)] = (rate, cpu)
    out.append("# %-10s %-10s %12.0f %10.3f %9.1f %9.1f %5d %8.2f %8.1f" % (
        run, broker, rate, cpu, m(lambda x: x['latency_us']['p50']),
        m(lambda x: x['latency_us']['p99']), sum(x['lost'] for x in rs),
        m(lambda x: max(x['generator_cpu'] or [0])), m(lambda x: x['broker']['rss_end']) / 1048576))
for run in sorted({k[0] for k in med}):
    (tr, tc), (mr, mc) = med[(run, 'ternmq')], med[(run, 'mosquitto')]
    out.append("# %s: ternmq/mosquitto throughput x%.2f, CPU per message x%.3f (ternmq %.3f us, mosquitto %.3f us)" % (
        run, tr / mr, tc / mc, tc, mc))
print("\n".join(out))
