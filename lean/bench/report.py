"""Reports of a bench run: results.json, results.csv, report.md, pareto.png and the terminal table.

    from lean.bench.report import write_reports, results_table
    write_reports(results, "runs/bench/default-20250101-120000")

`finalize` computes every ratio against the run's baseline (speedup per latency cell, memory and
weight ratios, accuracy delta) from figures taken within the same run on the same machine.
The results.json schema is documented in docs/bench.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path
from typing import Any

from lean.bench.history import AGREE, HISTORY, SPELL, spell_text
from lean.bench.rounds import QUIET_TOLERANCE

CSV_COLUMNS = ["variant", "status", "error", "accuracy", "macro_f1", "accuracy_delta", "batch_size", "seq_length",
               "median_ms", "p90_ms", "p99_ms", "count", "throughput_sps", "speedup", "peak_rss_mb", "bare_rss_mb",
               "model_rss_mb", "cuda_peak_mb", "memory_ratio", "weights_mb", "weights_ratio", "params", "build_s",
               "wall_s", "steps"]


def _row(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in results["variants"] if r["name"] == name), None)


def peak_memory_mb(row: dict[str, Any]) -> float | None:
    """The memory figure ratios use: CUDA peak allocated on a GPU, else the subprocess's peak RSS."""
    memory = row.get("memory") or {}
    return memory.get("cuda_peak_mb") if memory.get("cuda_peak_mb") is not None else memory.get("peak_rss_mb")


def speedup_interval(base: list[dict] | None, mine: list[dict] | None, resamples: int = 400,
                     level: float = 0.90) -> list[float] | None:
    """A bootstrap interval of the speedup (ratio of medians) over the interleaved rounds: resample the
    rounds with replacement, keep both variants' calls from the rounds drawn, take the ratio of their
    medians (Harrell-Davis, as the cells' own); -> [low, high] holding `level` of the ratios. Its width
    is how far the ratio moved with the machine's speed during the run (a slow spell hitting the two
    unequally). Only the quiet rounds count
    (visits marked `quiet: false` are set aside, lean.bench.rounds). Deterministic (fixed seed).
    None without rounds from both (latency not interleaved)."""
    from lean.bench.measure import quantile

    base = [v for v in base or [] if v.get("quiet", True)]  # the rounds the cell's figures come from
    mine = [v for v in mine or [] if v.get("quiet", True)]
    if not base or not mine:
        return None
    by_round: dict[int, tuple[list[float], list[float]]] = {}
    for visit in base:
        by_round.setdefault(visit["round"], ([], []))[0].extend(visit["ms"])
    for visit in mine:
        by_round.setdefault(visit["round"], ([], []))[1].extend(visit["ms"])
    rounds = list(by_round.values())
    rng = random.Random(0)
    ratios = []
    for _ in range(resamples):
        drawn = [rounds[rng.randrange(len(rounds))] for _ in rounds]
        b = [t for r in drawn for t in r[0]]
        m = [t for r in drawn for t in r[1]]
        if b and m:
            ratios.append(quantile(b, 0.5) / quantile(m, 0.5))
    if len(ratios) < resamples // 2:
        return None
    ratios.sort()
    tail = (1 - level) / 2
    return [round(ratios[int(tail * (len(ratios) - 1))], 4), round(ratios[int((1 - tail) * (len(ratios) - 1))], 4)]


def finalize(results: dict[str, Any]) -> dict[str, Any]:
    """Add ratios against the baseline to every measured row (in place; recomputed on every call)."""
    base = _row(results, results.get("baseline"))
    base_ok = base is not None and base.get("status") == "ok"
    base_cells = {(c["batch_size"], c["seq_length"]): c for c in (base or {}).get("latency", []) if "median_ms" in c}
    for row in results["variants"]:
        for cell in row.get("latency", []):
            ref = base_cells.get((cell["batch_size"], cell["seq_length"])) if base_ok else None
            cell["speedup"] = round(ref["median_ms"] / cell["median_ms"], 4) if ref and cell.get("median_ms") else None
            interval = speedup_interval(ref.get("visits"), cell.get("visits")) if cell["speedup"] and row is not base else None
            if interval:
                cell["speedup_interval"] = interval
            else:
                cell.pop("speedup_interval", None)
        ratios: dict[str, Any] = {}
        if base_ok and row.get("status") == "ok":
            mine, theirs = peak_memory_mb(row), peak_memory_mb(base)
            ratios["memory_ratio"] = round(mine / theirs, 4) if mine and theirs else None
            mine_model = (row.get("memory") or {}).get("model_rss_mb")
            theirs_model = (base.get("memory") or {}).get("model_rss_mb")
            ratios["model_memory_ratio"] = round(mine_model / theirs_model, 4) if mine_model and theirs_model and theirs_model > 0 else None
            w, bw = (row.get("size") or {}).get("weights_bytes"), (base.get("size") or {}).get("weights_bytes")
            ratios["weights_ratio"] = round(w / bw, 4) if w and bw else None
            a, ba = (row.get("quality") or {}).get("accuracy"), (base.get("quality") or {}).get("accuracy")
            ratios["accuracy_delta"] = round(a - ba, 6) if a is not None and ba is not None else None
            if (results.get("task") or {}).get("kind") == "lm":  # perplexity, decode speed, greedy agreement
                from lean.bench.lm import lm_ratios

                ratios.update(lm_ratios(row, base))
        row["vs_baseline"] = ratios
    return results


# ---- files ---------------------------------------------------------------------------------------------

def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_reports(results: dict[str, Any], out: str | Path) -> None:
    """Write results.json, results.csv, report.md and pareto.png into `out` (each replaced atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    _atomic_write(out / "results.csv", to_csv(results))
    _atomic_write(out / "report.md", to_markdown(results))
    _atomic_write(out / "pareto.png", pareto_png(results))


def _mb(n: int | None) -> float | None:
    return round(n / 2**20, 3) if n is not None else None


def to_csv(results: dict[str, Any]) -> str:
    """One line per (variant, latency cell); a variant without cells (failed, skipped) gets one line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in results["variants"]:
        quality, memory, size = row.get("quality") or {}, row.get("memory") or {}, row.get("size") or {}
        ratios = row.get("vs_baseline") or {}
        common = {"variant": row["name"], "status": row["status"], "error": row.get("error") or "",
                  "accuracy": quality.get("accuracy"), "macro_f1": quality.get("macro_f1"),
                  "accuracy_delta": ratios.get("accuracy_delta"), "peak_rss_mb": memory.get("peak_rss_mb"),
                  "bare_rss_mb": memory.get("bare_rss_mb"), "model_rss_mb": memory.get("model_rss_mb"),
                  "cuda_peak_mb": memory.get("cuda_peak_mb"), "memory_ratio": ratios.get("memory_ratio"),
                  "weights_mb": _mb(size.get("weights_bytes")), "weights_ratio": ratios.get("weights_ratio"),
                  "params": size.get("params"), "build_s": (row.get("timing") or {}).get("build_s"),
                  "wall_s": (row.get("timing") or {}).get("wall_s"),
                  "steps": " > ".join(next(iter(s)) for s in row["config"].get("steps", []))}
        cells = [c for c in row.get("latency", []) if "median_ms" in c]
        for cell in cells or [{}]:
            writer.writerow(common | {k: cell.get(k) for k in ("batch_size", "seq_length", "median_ms", "p90_ms",
                                                                 "p99_ms", "count", "throughput_sps", "speedup")})
    return buffer.getvalue()


def grid(results: dict[str, Any]) -> list[tuple[int, int]]:
    """The (batch, length) cells of the run, in the order they were measured."""
    cells: list[tuple[int, int]] = []
    for row in results["variants"]:
        for cell in row.get("latency", []):
            key = (cell["batch_size"], cell["seq_length"])
            if key not in cells:
                cells.append(key)
    return cells


def primary_cell(results: dict[str, Any]) -> tuple[int, int] | None:
    """The cell the Pareto plot uses: the suite's first batch size at its first length."""
    measure = results.get("suite", {}).get("measure") or {}
    if measure.get("batch_sizes") and measure.get("seq_lengths"):
        return measure["batch_sizes"][0], measure["seq_lengths"][0]
    cells = grid(results)
    return cells[0] if cells else None


def _cell(row: dict[str, Any], key: tuple[int, int]) -> dict[str, Any] | None:
    return next((c for c in row.get("latency", []) if (c["batch_size"], c["seq_length"]) == key and "median_ms" in c), None)


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _latency_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    speed = f" ({cell['speedup']:.2f}×{_spread_text(cell)})" if cell.get("speedup") else ""
    return f"{cell['median_ms']:.2f}{speed}"


def interval_spread(cell: dict[str, Any]) -> float | None:
    """How far the speedup's interval reaches from the speedup, relative (0.08 = ±8%); None without one."""
    interval, speedup = cell.get("speedup_interval"), cell.get("speedup")
    if not interval or not speedup:
        return None
    return max(abs(interval[0] / speedup - 1), abs(interval[1] / speedup - 1))


def _spread_text(cell: dict[str, Any]) -> str:
    spread = interval_spread(cell)
    return "" if spread is None else f" ±{spread:.0%}"


def _tolerance(results: dict[str, Any]) -> float:
    """How much slower than a cell's quietest round a round could run and still count (the run's own)."""
    return results.get("run", {}).get("quiet_tolerance", QUIET_TOLERANCE)


def _set_aside_text(results: dict[str, Any]) -> str:
    """' (here: 3 of 36 cell rounds set aside)': the baseline's rounds, which every other row shares."""
    base = _row(results, results.get("baseline")) or {}
    rounds = [c["rounds"] for c in base.get("latency") or [] if c.get("rounds")]
    if not rounds:
        return ""
    aside, total = sum(r["of"] - r["quiet"] for r in rounds), sum(r["of"] for r in rounds)
    return f" (here {aside} of the baseline's {total} cell rounds were set aside)"


def to_markdown(results: dict[str, Any]) -> str:
    env, run, task = results.get("environment", {}), results.get("run", {}), results.get("task", {})
    cells = grid(results)
    lines = [f"# lean bench: {results['suite']['name']}", ""]
    lines.append(f"- task: `{task.get('name')}` ({task.get('kind')}), test split {task.get('sizes', {}).get('test')} "
                 f"texts, split seed {task.get('split_seed')}")
    lines.append(f"- machine: {env.get('gpu') or env.get('cpu')}, device `{run.get('device')}`, {run.get('threads')} "
                 f"threads; torch {env.get('versions', {}).get('torch', '-')}, onnxruntime "
                 f"{env.get('versions', {}).get('onnxruntime-gpu') or env.get('versions', {}).get('onnxruntime', '-')}; "
                 f"commit `{env.get('git_commit')}`")
    lines.append(f"- run: started {run.get('started')}, {run.get('wall_s') or '…'} s, {run.get('steps_built', 0)} step(s) "
                 f"built (others reused from `{run.get('runs_dir')}`); baseline `{results.get('baseline')}`"
                 + ("; **interrupted**" if run.get("interrupted") else "")
                 + ("; `--rigorous` (every latency cell timed three times as long)" if run.get("rigorous") else ""))
    spell = spell_text(results)
    if spell:
        lines.append(f"- **machine state**: {spell} (`{Path(run.get('runs_dir') or '.') / HISTORY}`)")
    lines.append("")
    lm = task.get("kind") == "lm"  # quality is perplexity, in the language-model table below
    header = ["variant", "status"] + ([] if lm else ["accuracy", "macro-F1", "Δ acc"]) + \
             [f"b{b}×{l} ms" for b, l in cells] + ["peak MB (×)", "weights MB (×)", "params"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in results["variants"]:
        quality, size = row.get("quality") or {}, row.get("size") or {}
        ratios = row.get("vs_baseline") or {}
        peak = peak_memory_mb(row)
        mem = f"{peak:.0f}" + (f" ({ratios['memory_ratio']:.2f}×)" if ratios.get("memory_ratio") else "") if peak else ""
        weights = _mb(size.get("weights_bytes"))
        wtext = f"{weights:.1f}" + (f" ({ratios['weights_ratio']:.2f}×)" if ratios.get("weights_ratio") else "") if weights else ""
        delta = ratios.get("accuracy_delta")
        values = [f"`{row['name']}`", row["status"]] + ([] if lm else [
                  _fmt(quality.get("accuracy")), _fmt(quality.get("macro_f1")), "" if delta is None else f"{delta:+.4f}"]) + \
                 [_latency_text(_cell(row, key)) for key in cells] + \
                 [mem, wtext, f"{size['params'] / 1e6:.2f}M" if size.get("params") else ""]
        lines.append("| " + " | ".join(values) + " |")
    if lm:
        from lean.bench.lm import lm_markdown

        lines += lm_markdown(results)
    problems = [r for r in results["variants"] if r["status"] != "ok"]
    if problems:
        lines += ["", "Not measured:", ""]
        lines += [f"- `{r['name']}` **{r['status']}** ({r.get('phase')}): {r.get('error')}" for r in problems]
    interleaved = any((r.get("measure") or {}).get("interleave") and (r.get("measure") or {}).get("latency")
                      and r.get("latency") for r in results["variants"])
    guide = [] if lm else [
        "- **accuracy / macro-F1** are on the task's full test split (the split seed is above); "
        "Δ acc is the difference from the baseline."]
    if cells:
        guide.append("- **latency** is the median of timed runs after warm-up (a Harrell-Davis estimate, which weighs every "
                     "call instead of taking the middle one), in milliseconds per batch, at each batch "
                     "size × sequence length, on real test texts truncated to exactly that length; `(N×)` is the speedup "
                     "over the baseline in this same run. p90/p99 and the run counts are in results.json and results.csv."
                     + (" Every variant was loaded at once and timed in turn, round after round, each cell's calls "
                        "spread over the whole phase (`measure.interleave`). A round in which a cell's variants ran "
                        f"slower together (more than {_tolerance(results):.0%} past the cell's quietest round: the machine slowed down, "
                        "which hits variants unequally) is set aside for all of them, and the medians come from the "
                        f"other rounds{_set_aside_text(results)}; results.json keeps every call and the all-rounds "
                        "median. `±N%` bounds the 90% bootstrap interval of the speedup over the quiet rounds: how "
                        "far the ratio moved during the run. A wide one says a second run may well differ by that "
                        "much." if interleaved else ""))
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
                     "this machine (same baseline, threads and device; `run.machine_state` in results.json): a baseline "
                     f"cell more than {SPELL:.0%} off, or a speedup more than {AGREE:.0%} off, is named above; "
                     + ("trust the speedups that agree." if spell else "none was."))
    if lm:
        plot = "perplexity against decode speed"
        guide.append("- The Pareto plot places each variant at its test perplexity and its decode tokens/s at the "
                     "smallest generation batch; the ringed points, joined by the line, are the variants no other "
                     "variant beats on both.")
    else:
        plot = "accuracy against latency"
        guide.append("- The Pareto plot places each variant at its accuracy and its latency in the first cell "
                     f"(batch {primary_cell(results)[0] if primary_cell(results) else '-'}); the ringed points, joined "
                     "by the line, are the variants no other variant beats on both.")
    lines += ["", f"![{plot}](pareto.png)", "", "## Reading this report", "", *guide]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """(name, latency, accuracy) points that no other point beats on both (lower latency, higher accuracy)."""
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p[1], -p[2])):
        if point[2] > best:
            front.append(point)
            best = point[2]
    return front


def pareto_png(results: dict[str, Any]) -> bytes:
    """Accuracy against median latency at the primary cell, a labelled point per variant, the front drawn."""
    if (results.get("task") or {}).get("kind") == "lm":  # perplexity against decode tokens/s
        from lean.bench.lm import pareto_png as lm_pareto_png

        return lm_pareto_png(results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = primary_cell(results)
    points = []
    for row in results["variants"]:
        cell = _cell(row, key) if key else None
        accuracy = (row.get("quality") or {}).get("accuracy")
        if row["status"] == "ok" and cell and accuracy is not None:
            points.append((row["name"], cell["median_ms"], accuracy))
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    if points:
        if max(p[1] for p in points) / max(min(p[1] for p in points), 1e-9) > 20:
            ax.set_xscale("log")
        draw_points(ax, points, pareto_front(points), where="post")
    else:
        ax.text(0.5, 0.5, "no variant measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"median latency, ms (batch {key[0]} × {key[1]} tokens)" if key else "median latency, ms")
    ax.set_ylabel("test accuracy")
    return finish_png(fig, ax, results, "accuracy against latency")


def draw_points(ax, points: list[tuple[str, float, float]], front: list[tuple[str, float, float]], where: str) -> None:
    """Scatter (name, x, y) points, ring and join the Pareto front, and label each point where its label
    does not cover an earlier one (variants often land within a few pixels of each other)."""
    ax.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue", zorder=3)
    ax.scatter([p[1] for p in front], [p[2] for p in front], s=140, facecolors="none", edgecolors="tab:red",
               linewidths=1.5, zorder=4, label="Pareto front")
    ax.step([p[1] for p in front], [p[2] for p in front], where=where, color="tab:red", alpha=0.6, zorder=2)
    ax.figure.canvas.draw()  # fixes the limits, so data -> pixel positions hold for the labels
    placed: list[tuple[float, float, float, float]] = []  # label boxes in pixels
    offsets = [(6, 5), (6, -13), (-6, 5), (-6, -13), (6, 16), (6, -24)]
    for name, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        px, py = ax.transData.transform((x, y))
        width, height = 5.5 * len(name), 11.0  # 8-point text at 110 dpi
        for dx, dy in offsets:
            left = px + dx if dx > 0 else px + dx - width
            box = (left, py + dy, left + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                    ha="left" if dx > 0 else "right")
    ax.legend(loc="best")


def finish_png(fig, ax, results: dict[str, Any], subject: str) -> bytes:
    """Title (suite, device, threads), grid, and the figure as PNG bytes; closes the figure."""
    import matplotlib.pyplot as plt

    run = results.get("run", {})
    ax.set_title(f"lean bench {results['suite']['name']}: {subject} ({run.get('device')}, {run.get('threads')} threads)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


# ---- terminal -----------------------------------------------------------------------------------------

def results_table(results: dict[str, Any]):
    """A rich Table of the run (the same columns as report.md, errors shortened)."""
    from rich.table import Table

    lm = (results.get("task") or {}).get("kind") == "lm"
    cells = grid(results)
    batches = sorted({c["batch_size"] for r in results["variants"] for c in (r.get("generation") or {}).get("cells", [])})
    table = Table(title=f"lean bench {results['suite']['name']} ({results['run']['device']}, "
                        f"{results['run']['threads']} threads; speedup over {results['baseline']})")
    quality_columns = ["perplexity (×)"] + [f"b{b} decode tok/s (×)" for b in batches] if lm else ["accuracy", "F1"]
    for column in ["variant", "status", *quality_columns] + [f"b{b}×{l} ms" for b, l in cells] + ["peak MB", "weights MB"]:
        table.add_column(column, justify="left" if column in ("variant", "status") else "right")
    for row in results["variants"]:
        quality, size, ratios = row.get("quality") or {}, row.get("size") or {}, row.get("vs_baseline") or {}
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {(row.get('error') or '')[:60]}"
        peak = peak_memory_mb(row)
        if lm:
            gen = {c["batch_size"]: c for c in (row.get("generation") or {}).get("cells", [])}
            values = [_with_ratio(quality.get("perplexity"), ratios.get("perplexity_ratio"), 2)]
            values += [_with_ratio((gen.get(b) or {}).get("decode_tokens_per_s"), ratios.get(f"decode_speedup_b{b}"), 1)
                       for b in batches]
        else:
            values = [_fmt(quality.get("accuracy")), _fmt(quality.get("macro_f1"))]
        table.add_row(row["name"], status, *values, *[_latency_text(_cell(row, key)) for key in cells],
                      f"{peak:.0f}" if peak else "", f"{_mb(size['weights_bytes']):.1f}" if size.get("weights_bytes") else "")
    return table


def _with_ratio(value: float | None, ratio: float | None, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" + (f" ({ratio:.2f}×)" if ratio else "")


def print_row(console, row: dict[str, Any], results: dict[str, Any]) -> None:
    """One line as each variant finishes."""
    if row["status"] != "ok":
        console.print(f"  {row['name']}: {row['status']} ({row.get('phase')}): {row.get('error')}", highlight=False)
        return
    quality = row.get("quality") or {}
    cells = [c for c in row.get("latency", []) if "median_ms" in c]
    first = f", b{cells[0]['batch_size']}×{cells[0]['seq_length']} {_latency_text(cells[0])} ms" if cells else ""
    if row.get("pending"):
        first = ", latency timed once every variant is loaded"
    cached = sum(1 for c in row.get("chain", []) if c["cached"])
    built = len(row.get("chain", [])) - cached
    if quality.get("perplexity") is not None:  # an LM: perplexity and decode speed at the first batch size
        gen = ((row.get("generation") or {}).get("cells") or [{}])[0]
        first += (f", b{gen['batch_size']} decode {gen['decode_tokens_per_s']} tok/s, TTFT {gen['ttft_ms']:.1f} ms"
                  if gen.get("decode_tokens_per_s") else "")
    what = f"perplexity {quality['perplexity']:.3f}" if quality.get("perplexity") is not None else \
        f"accuracy {_fmt(quality.get('accuracy'))}"
    peak = peak_memory_mb(row)
    console.print(f"  {row['name']}: {what}{first}" + (f", peak {peak:.0f} MB" if peak else "")
                  + f" ({built} step(s) built, {cached} reused, {row['timing'].get('wall_s', 0):.0f} s)", highlight=False)
