"""load.md of a load test run: the tables of load.json, for people."""

from __future__ import annotations

import json
import re


def busy_line(r: dict) -> str | None:
    """The line load.md opens with when the machine was busy (lean bench's rule, lean.bench.reliability:
    a load average past the logical CPUs plus BUSY_LOAD_MARGIN before or after the test), else None."""
    from lean.bench.reliability import BUSY_LOAD_MARGIN

    loads = [float(m.group(1)) for key in ("load_before", "load_after")
             for m in [re.search(r"load averages?:\s*([\d.]+)", str(r.get(key) or ""))] if m]
    cpus = (r.get("machine") or {}).get("logical_cpus")
    if not cpus or not loads or max(loads) <= cpus + BUSY_LOAD_MARGIN:
        return None
    return (f"**The machine was busy during this load test (load average up to {max(loads):.2f} on {cpus} CPUs): "
            "its throughputs and latencies are not the server's own. Stop what else runs and rerun it.**")


def markdown(r: dict) -> str:
    busy = busy_line(r)
    lines = [f"# lean serve load test, {r['date']}", "", *([busy, ""] if busy else []),
             f"- machine: {r['machine']['cpu']}, {r['machine']['logical_cpus']} logical CPUs (shared), "
             f"Python {r['machine']['python']}, onnxruntime {r['machine']['onnxruntime']}",
             f"- commit: {r['commit']}; model: {r['model']}",
             f"- chain: {' > '.join(str(c['step']) for c in reversed(r['model_chain']))}",
             f"- load before: `{r['load_before']}`", f"- load after: `{r['load_after']}`",
             f"- inputs: {r['texts']}; client and server on the same machine (loopback)", "",
             "| server | concurrency | req/s | p50 ms | p90 ms | p99 ms | statuses |", "|---|---|---|---|---|---|---|"]
    for key in ("batching_on", "batching_off"):
        s = r[key]
        for c in s["cells"]:
            lines.append(f"| batch {s['max_batch_size']}, wait {s['max_wait_ms']} ms | {c['concurrency']} | "
                         f"{c['throughput_rps']} | {c['p50_ms']} | {c['p90_ms']} | {c['p99_ms']} | {c['statuses']} |")
    lines += ["", "| in process (lean.runtime predict) | batch | texts/s |", "|---|---|---|"]
    lines += [f"| {p['provider']}, {p['threads']} threads, spinning {'on' if p['ort_spinning'] else 'off'} | "
              f"{p['batch_size']} | {p['throughput_tps']} |" for p in r["in_process"]]
    o = r["open_loop"]
    lines += ["", "| open loop | rate req/s | req/s answered | p50 ms | p90 ms | p99 ms | statuses |", "|---|---|---|---|---|---|---|"]
    for key in ("half_peak", "overload", "soak"):
        c = o[key]
        lines.append(f"| {key} | {c['rate_rps']} | {c['throughput_rps']} | {c['p50_ms']} | {c['p90_ms']} | {c['p99_ms']} | "
                     f"{c['statuses']} |")
    soak = o["soak"]["rss_mib"]
    lines += ["", f"Soak server RSS: {soak['first']} MiB after 5 s, {soak['last']} MiB at the end, max {soak['max']} MiB.",
              "", "Targets: `" + json.dumps(r["targets"]) + "`", ""]
    return "\n".join(lines)
