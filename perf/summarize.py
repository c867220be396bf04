#!/usr/bin/env python3
"""Summarizes a perf/compare.sh output: medians per (scenario, broker) and ratios of
ternmq to every other broker. Failed runs (result null) are counted, not averaged."""
import json, statistics, sys

runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
by, failed = {}, {}
for r in runs:
    key = (r['run'], r['broker'])
    if r['result'] is None:
        failed[key] = failed.get(key, 0) + 1
    else:
        by.setdefault(key, []).append(r['result'])

out = ["# summary (medians over reps; CPU = broker CPU per delivered message)",
       "# scenario    broker         msg/s  us CPU/msg    p50 us    p99 us  p99.9 us   lost  gen cpu gen wait  rss MiB  B/conn"]
med = {}
for key in sorted(set(by) | set(failed)):
    run, broker = key
    rs = by.get(key, [])
    if not rs:
        out.append("# %-12s %-10s  all %d runs failed" % (run, broker, failed[key]))
        continue
    m = lambda f: statistics.median(f(x) for x in rs)
    b = lambda x: x['broker'] or {}
    rate = m(lambda x: x['msgs_per_sec'])
    cpu = m(lambda x: b(x).get('us_per_msg') or 0)
    per_conn = m(lambda x: b(x).get('rss_per_conn') or 0)
    lat = lambda q: m(lambda x: x['latency_us'][q])
    med[key] = dict(rate=rate, cpu=cpu, per_conn=per_conn, p50=lat('p50'), p99=lat('p99'),
                    p999=lat('p99_9'))
    note = " (%d failed)" % failed[key] if key in failed else ""
    # gen wait: the generator thread's time runnable but waiting for a core (results
    # from before it was measured have none).
    out.append("# %-12s %-10s %11.0f %10.3f %9.1f %9.1f %9.1f %6d %8.2f %8.2f %8.1f %7.0f%s" % (
        run, broker, rate, cpu, lat('p50'), lat('p99'), lat('p99_9'),
        sum(x['lost'] for x in rs), m(lambda x: max(x['generator_cpu'] or [0])),
        m(lambda x: max(x.get('generator_wait') or [0])),
        m(lambda x: b(x).get('rss_end', 0)) / 1048576, per_conn, note))

out.append("# ternmq relative to the others (x > 1: ternmq higher)")
for run in sorted({k[0] for k in med}):
    t = med.get((run, 'ternmq'))
    if not t:
        continue
    for other in sorted({k[1] for k in med if k[0] == run} - {'ternmq'}):
        o = med[(run, other)]
        if run.startswith('conns'):
            out.append("# %-12s vs %-10s RSS per connection: ternmq %.0f B, %s %.0f B (x%.2f)" % (
                run, other, t['per_conn'], other, o['per_conn'],
                t['per_conn'] / o['per_conn'] if o['per_conn'] else float('nan')))
        elif run.startswith('rate'):
            out.append("# %-12s vs %-10s latency p50/p99/p99.9 us: ternmq %.0f/%.0f/%.0f, %s %.0f/%.0f/%.0f" % (
                run, other, t['p50'], t['p99'], t['p999'], other, o['p50'], o['p99'], o['p999']))
        else:
            out.append("# %-12s vs %-10s throughput x%.2f, CPU per message x%.3f (ternmq %.3f us, %s %.3f us)" % (
                run, other, t['rate'] / o['rate'] if o['rate'] else float('nan'),
                t['cpu'] / o['cpu'] if o['cpu'] else float('nan'), t['cpu'], other, o['cpu']))
w1, w2 = med.get(('pairs100w2', 'ternmq')), med.get(('pairs100w2', 'ternmq-w2'))
if w1 and w2 and w1['cpu']:
    # The --workers 2 target: CPU per message against one worker, same alternation.
    out.append("# pairs100w2   ternmq-w2 CPU per message x%.2f of --workers 1 (%.3f us against %.3f us)" % (
        w2['cpu'] / w1['cpu'], w2['cpu'], w1['cpu']))
    # Rep by rep too: the machine runs in a slow and a fast mode for tens of seconds at
    # a time, so a rep's two runs (back to back) are closer in conditions than the
    # medians, which may come from different modes.
    cpu_by_rep = lambda broker: {r['rep']: (r['result']['broker'] or {}).get('us_per_msg')
                                 for r in runs if r['run'] == 'pairs100w2'
                                 and r['broker'] == broker and r['result']}
    one, two = cpu_by_rep('ternmq'), cpu_by_rep('ternmq-w2')
    ratios = [two[k] / one[k] for k in sorted(one) if one[k] and two.get(k)]
    if ratios:
        out.append("# pairs100w2   rep by rep: %s; median x%.2f" % (
            ", ".join("x%.2f" % x for x in ratios), statistics.median(ratios)))
for (run, broker), rs in sorted(by.items()):
    if run.startswith('rate'):
        # The generator's lag says whether it kept to its schedule (over 1 ms: it
        # fell behind, and the latency includes its own queueing).
        out.append("# %-12s %-10s p50 run by run (us): %s; generator lag p99 (us): %s" % (
            run, broker, ", ".join("%.0f" % x['latency_us']['p50'] for x in rs),
            ", ".join("%.0f" % x['lag_p99_us'] for x in rs)))
        # Runs in which the generator warned that it, not the broker, set the pace.
        kept_up = [x for x in rs if not any('generator' in w for w in x.get('warnings') or [])]
        if kept_up:
            out.append("# %-12s %-10s runs without a generator warning: %d of %d, p50 median %.0f us" % (
                run, broker, len(kept_up), len(rs),
                statistics.median(x['latency_us']['p50'] for x in kept_up)))
        else:
            out.append("# %-12s %-10s the generator warned in all %d runs" % (run, broker, len(rs)))
print("\n".join(out))
