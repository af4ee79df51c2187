"""report.md of a bench run: what ran where, one table row per variant, how to read it.

A reader of runs: imports the bottom of lean.bench and the other readers only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lean.bench.figures import (
    cell_at,
    distrusted_cells,
    fmt,
    grid,
    latency_text,
    mb,
    peak_memory_mb,
    primary_cell,
    row_named,
)
from lean.bench.history import AGREE, HISTORY, SPELL, spell_text
from lean.bench.reliability import MAX_DRIFT, MIN_QUIET_ROUNDS, busy_line
from lean.bench.report_lm import lm_markdown
from lean.bench.stats import QUIET_TOLERANCE


def _tolerance(results: dict[str, Any]) -> float:
    """How much slower than a cell's quietest round a round could run and still count (the run's own)."""
    return results.get("run", {}).get("quiet_tolerance", QUIET_TOLERANCE)


def _set_aside_text(results: dict[str, Any]) -> str:
    """' (here: 3 of 36 cell rounds set aside)': the baseline's rounds, which every other row shares."""
    base = row_named(results, results.get("baseline")) or {}
    rounds = [c["rounds"] for c in base.get("latency") or [] if c.get("rounds")]
    if not rounds:
        return ""
    aside, total = sum(r["of"] - r["quiet"] for r in rounds), sum(r["of"] for r in rounds)
    return f" (here {aside} of the baseline's {total} cell rounds were set aside)"


def header_lines(results: dict[str, Any]) -> list[str]:
    """The task, the machine and the run, as a list."""
    env, run, task = results.get("environment", {}), results.get("run", {}), results.get("task", {})
    versions = env.get("versions", {})
    busy = busy_line(results)
    lines = [f"# lean bench: {results['suite']['name']}", "", *([f"**{busy}**", ""] if busy else []),
             f"- task: `{task.get('name')}` ({task.get('kind')}), test split {task.get('sizes', {}).get('test')} "
             f"texts, split seed {task.get('split_seed')}",
             f"- machine: {env.get('gpu') or env.get('cpu')}, device `{run.get('device')}`, {run.get('threads')} "
             f"threads; torch {versions.get('torch', '-')}, onnxruntime "
             f"{versions.get('onnxruntime-gpu') or versions.get('onnxruntime', '-')}; "
             f"commit `{env.get('git_commit')}`",
             f"- run: started {run.get('started')}, {run.get('wall_s') or '…'} s, {run.get('steps_built', 0)} step(s) "
             f"built (others reused from `{run.get('runs_dir')}`); baseline `{results.get('baseline')}`"
             + ("; **interrupted**" if run.get("interrupted") else "")
             + ("; `--rigorous` (every latency cell timed three times as long)" if run.get("rigorous") else "")
             + ("; remote code enabled (`--trust-remote-code`)" if results["suite"].get("trust_remote_code") else "")]
    load = load_text(results)
    if load:
        lines.append(f"- machine load: {load}")
    spell = spell_text(results)
    if spell:
        lines.append(f"- **machine state**: {spell} (`{Path(run.get('runs_dir') or '.') / HISTORY}`)")
    return lines + [""]


def load_text(results: dict[str, Any]) -> str:
    """'load average 0.4 before, up to 1.2 during (median 1.0), 0.9 after the timing, on 2 CPUs; CPU
    2445-2445 MHz; 3 of 52 cell rounds set aside' (what the run recorded of these)."""
    run = results.get("run") or {}
    machine, aside = run.get("machine") or {}, run.get("set_aside")
    before, during, after = (machine.get(k) or {} for k in ("before", "during", "after"))
    parts = []
    if during.get("load1_max") is not None:
        parts.append(f"load average {before.get('load1', '-')} before, up to {during['load1_max']} during (median "
                     f"{during['load1_median']}), {after.get('load1', '-')} after the timing, on {machine.get('cpus')} "
                     "CPUs")
    if during.get("cpu_mhz_min") is not None:
        parts.append(f"CPU {during['cpu_mhz_min']:.0f}-{during['cpu_mhz_max']:.0f} MHz")
    if aside:
        parts.append(f"{aside['rounds']} of the baseline's {aside['of']} cell rounds set aside "
                     f"({aside['rounds'] / aside['of']:.0%})")
    return "; ".join(parts)


def table_lines(results: dict[str, Any], lm: bool) -> list[str]:
    """The table: a row per variant (quality, latency per cell, memory, weights, parameters)."""
    cells = grid(results)
    header = ["variant", "status"] + ([] if lm else ["accuracy", "macro-F1", "Δ acc"]) + \
             [f"b{batch}×{length} ms" for batch, length in cells] + ["peak MB (×)", "weights MB (×)", "params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["variants"]:
        quality, size = row.get("quality") or {}, row.get("size") or {}
        ratios = row.get("vs_baseline") or {}
        peak = peak_memory_mb(row)
        mem = "" if not peak else \
            f"{peak:.0f}" + (f" ({ratios['memory_ratio']:.2f}×)" if ratios.get("memory_ratio") else "")
        weights = mb(size.get("weights_bytes"))
        wtext = "" if not weights else \
            f"{weights:.1f}" + (f" ({ratios['weights_ratio']:.2f}×)" if ratios.get("weights_ratio") else "")
        delta = ratios.get("accuracy_delta")
        scores = [] if lm else [fmt(quality.get("accuracy")), fmt(quality.get("macro_f1")),
                                "" if delta is None else f"{delta:+.4f}"]
        values = [f"`{row['name']}`", row["status"]] + scores + \
                 [latency_text(cell_at(row, key)) for key in cells] + \
                 [mem, wtext, f"{size['params'] / 1e6:.2f}M" if size.get("params") else ""]
        lines.append("| " + " | ".join(values) + " |")
    return lines


def scored_split(results: dict[str, Any]) -> str:
    """The split the quality figures come from (measure.split; test in runs that predate it)."""
    return next(((r.get("quality") or {}).get("split") for r in results["variants"]
                 if (r.get("quality") or {}).get("split")), "test")


def latency_guide(results: dict[str, Any]) -> str:
    interleaved = any((r.get("measure") or {}).get("interleave") and (r.get("measure") or {}).get("latency")
                      and r.get("latency") for r in results["variants"])
    return ("- **latency** is the median of timed runs after warm-up (a Harrell-Davis estimate, which weighs every "
            "call instead of taking the middle one), in milliseconds per batch, at each batch "
            "size × sequence length, on real test texts truncated to exactly that length; `(N×)` is the speedup "
            "over the baseline in this same run. p90/p99 and the run counts are in results.json and results.csv."
            + (" Every variant was loaded at once and timed in turn, round after round, each cell's calls "
               "spread over the whole phase (`measure.interleave`). A round in which a cell's variants ran "
               f"slower together (more than {_tolerance(results):.0%} past the cell's quietest round: "
               "the machine slowed down, "
               "which hits variants unequally) is set aside for all of them, and the medians come from the "
               f"other rounds{_set_aside_text(results)}; results.json keeps every call and the all-rounds "
               "median. `±N%` bounds the 90% interval of the speedup over the quiet rounds (a bootstrap, widened "
               "to the Student-t interval of the per-round speedups): how far the ratio moved during the run. A "
               "wide one says a second run may well differ by that much; `±?`: too few quiet rounds for one. "
               f"A speedup shown `unreliable` is not a measurement: its cell kept fewer than {_min_rounds(results)} "
               f"quiet rounds after some were set aside, or the baseline's quiet rounds were more than "
               f"{MAX_DRIFT:.0%} off its median over every round. `†`: a cell measured much faster than one "
               "with less work of the same variant (or the reverse), which only a change of the machine's speed "
               "explains." if interleaved else "")
            + (" `†`: a cell measured much faster than one with less work of the same variant (or the reverse), "
               "which only a change of the machine's speed explains." if not interleaved and _has_order(results)
               else ""))


def _min_rounds(results: dict[str, Any]) -> int:
    return (results.get("run") or {}).get("min_quiet_rounds") or MIN_QUIET_ROUNDS


def _has_order(results: dict[str, Any]) -> bool:
    return any(c.get("order") for r in results["variants"] for c in r.get("latency") or [])


def guide_lines(results: dict[str, Any], lm: bool) -> tuple[list[str], str]:
    """'Reading this report': what each figure is; -> (lines, the plot's subject)."""
    split = scored_split(results)
    guide = [] if lm else [
        f"- **accuracy / macro-F1** are on the task's full {split} split (the split seed is above); "
        "Δ acc is the difference from the baseline."]
    if grid(results):
        guide.append(latency_guide(results))
    guide += ["- **peak MB** is the peak resident memory of the variant's own subprocess (on CUDA: peak allocated GPU "
              "memory); results.json also gives the same interpreter's RSS before loading anything (`bare_rss_mb`), "
              "so `model_rss_mb` is what the model and its inference added.",
              "- Compare rows only within one report: absolute times depend on the machine and its load; quote the "
              "ratios. A variant that needs hardware this machine lacks is listed as skipped, with the reason."]
    state = (results.get("run") or {}).get("machine_state") or {}
    if state.get("earlier_runs"):
        n = state["earlier_runs"]
        guide.append(f"- **earlier runs**: this run's baseline and speedups were compared with "
                     f"{'the one earlier run' if n == 1 else f'the median of the {n} earlier runs'} of this suite on "
                     "this machine (same baseline, threads and device; `run.machine_state` in results.json): "
                     "a baseline "
                     f"cell more than {SPELL:.0%} off, or a speedup more than {AGREE:.0%} off, is named above; "
                     + ("trust the speedups that agree." if spell_text(results) else "none was."))
    if lm:
        guide.append("- The Pareto plot places each variant at its test perplexity and its decode tokens/s at the "
                     "smallest generation batch; the ringed points, joined by the line, are the variants no other "
                     "variant beats on both.")
        return guide, "perplexity against decode speed"
    guide.append("- The Pareto plot places each variant at its accuracy and its latency in the first cell "
                 f"(batch {primary_cell(results)[0] if primary_cell(results) else '-'}); the ringed points, joined "
                 "by the line, are the variants no other variant beats on both.")
    return guide, "accuracy against latency"


def to_markdown(results: dict[str, Any]) -> str:
    lm = results.get("task", {}).get("kind") == "lm"  # quality is perplexity, in the language-model table below
    lines = header_lines(results) + table_lines(results, lm)
    distrusted = distrusted_cells(results)
    if distrusted:
        lines += ["", "Cells whose rounds do not support their figures (left out of the Pareto plot and of any "
                  "headline; `unreliable` in results.json and results.csv):", ""]
        lines += [f"- {line}" for line in distrusted]
    if lm:
        lines += lm_markdown(results)
    problems = [r for r in results["variants"] if r["status"] != "ok"]
    if problems:
        lines += ["", "Not measured:", ""]
        lines += [f"- `{r['name']}` **{r['status']}** ({r.get('phase')}): {r.get('error')}" for r in problems]
    guide, plot = guide_lines(results, lm)
    lines += ["", f"![{plot}](pareto.png)", "", "## Reading this report", "", *guide]
    return "\n".join(lines) + "\n"
