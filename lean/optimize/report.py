"""What a finished (or stopped) search leaves in its run directory: trials.json, summary.json, report.md,
pareto.png, and best/ (a copy of the chosen model directory, ready for `lean predict` and `lean serve`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lean.optimize.adapter import write_json
from lean.optimize.config import OBJECTIVES, Budget
from lean.optimize.strategy import Outcome
from lean.optimize.trials import Trial


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def summary(outcome: Outcome, budget: Budget, objective: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The run in one JSON object: the chosen variant against the teacher, on validation and on test."""
    ref, chosen = outcome.reference, outcome.chosen
    field, larger_better = OBJECTIVES[objective]
    counts: dict[str, int] = {}
    for t in outcome.trials:
        counts[f"{t.kind}:{t.status}"] = counts.get(f"{t.kind}:{t.status}", 0) + 1
    out = {"chosen": chosen.name if chosen else None, "met_budget": outcome.met_budget, "budget": budget.describe(),
           "objective": objective, "stop_reason": outcome.stop_reason, "interrupted": outcome.interrupted,
           "settings": settings, "measured_now": outcome.measured, "trial_counts": counts,
           "teacher": _figures(ref), "chosen_figures": _figures(chosen) if chosen else None}
    if chosen:
        points = budget.metric == "accuracy" and not budget.relative
        out.update({
            "speedup": _ratio(ref.latency_ms, chosen.latency_ms),  # teacher latency / chosen latency, target cell
            # why the speedup is no measurement: a latency whose rounds do not support it (lean.bench.reliability)
            "speedup_unreliable": "; ".join(f"{who} {why}" for who, why in (("teacher", ref.latency_unreliable),
                                                                          ("chosen", chosen.latency_unreliable))
                                            if why) or None,
            "throughput_ratio": _ratio(chosen.throughput_sps, ref.throughput_sps),
            "memory_ratio": _ratio(chosen.peak_memory_mb, ref.peak_memory_mb),
            "weights_ratio": _ratio(chosen.weights_bytes, ref.weights_bytes),
            "validation_loss": _round(chosen.loss), "test_loss": _round(chosen.test_loss),
            # test accuracy points below the teacher (reported, never used to choose)
            "accuracy_drop": _round(chosen.test_loss) if points else None,
            "validation_accuracy_drop": _round(chosen.loss) if points else None,
        })
    return out


def _threads(threads: int | None) -> str:
    if not threads:
        return "one thread per physical core"
    return f"{threads} thread{'s' if threads > 1 else ''}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _figures(t: Trial) -> dict[str, Any]:
    return {"name": t.name, "chain": t.chain, "load": t.load, "validation": t.validation, "test": t.test,
            "latency_ms": t.latency_ms, "latency_unreliable": t.latency_unreliable,
            "throughput_sps": t.throughput_sps, "peak_memory_mb": t.peak_memory_mb,
            "weights_bytes": t.weights_bytes, "model_dir": t.model_dir}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def to_markdown(outcome: Outcome, data: dict[str, Any], budget: Budget) -> str:
    ref, chosen = outcome.reference, outcome.chosen
    metric = budget.metric
    lines = ["# lean optimize", ""]
    if chosen is None:
        lines += ["**No candidate could be measured**: nothing was chosen and best/ was not written.", ""]
    elif outcome.met_budget:
        lines += [f"**Chosen: `{chosen.name}`**, the best on {data['objective']} among the candidates within the "
                  f"budget ({budget.describe()}) on the validation split. It is in `best/`.", ""]
    else:
        lines += [f"**No candidate met the budget** ({budget.describe()}) on the validation split. The closest one, "
                  f"`{chosen.name}` (validation {loss_text(chosen.loss, budget)}), is kept in `best/` anyway: "
                  "check it before deploying it, or widen the budget.", ""]
    target = data["settings"]["target"]
    lines += [f"Stopped because {outcome.stop_reason}. Objective: {data['objective']}, measured on {target['device']} "
              f"at batch {target['batch_size']} x {target['seq_length']} tokens, "
              f"{_threads(target['threads'])}.", ""]
    if chosen is not None:
        lines += ["| | teacher | chosen |", "| --- | --- | --- |",
                  f"| validation {metric} | {_fmt(ref.validation.get(metric))} | {_fmt(chosen.validation.get(metric))} |",
                  f"| test {metric} | {_fmt(ref.test.get(metric))} | {_fmt(chosen.test.get(metric))} |",
                  f"| latency ms | {_fmt(ref.latency_ms)} | {_fmt(chosen.latency_ms)} (speedup {_fmt(data.get('speedup'))}x"
                  + (f", unreliable: {data['speedup_unreliable']}" if data.get("speedup_unreliable") else "") + ") |",
                  f"| throughput /s | {_fmt(ref.throughput_sps)} | {_fmt(chosen.throughput_sps)} |",
                  f"| peak memory MB | {_fmt(ref.peak_memory_mb)} | {_fmt(chosen.peak_memory_mb)} |",
                  f"| weights MiB | {_mib(ref.weights_bytes)} | {_mib(chosen.weights_bytes)} |", ""]
    lines += ["## Every trial", "",
              "Validation figures decide; test figures are reported only. A probe is the chain with an untrained "
              "student (latency, memory and size only). Pruned: not built (reason given).", "",
              f"| trial | kind | status | val {metric} | val loss | test {metric} | test loss | latency ms | "
              "throughput /s | memory MB | weights MiB | build s | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in [ref, *outcome.trials]:
        mark = " **(chosen)**" if chosen is not None and t is chosen else ""
        note = t.reason or (t.error or "")[:120] + (" (resumed)" if t.resumed else "")
        lines.append(f"| {t.name}{mark} | {t.kind} | {t.status} | {_fmt(t.validation.get(metric))} | "
                     f"{loss_text(t.loss, budget) if t.kind == 'candidate' else '-'} | {_fmt(t.test.get(metric))} | "
                     f"{loss_text(t.test_loss, budget) if t.kind == 'candidate' else '-'} | "
                     f"{_fmt(t.latency_ms)} | {_fmt(t.throughput_sps)} | {_fmt(t.peak_memory_mb)} | "
                     f"{_mib(t.weights_bytes)} | {_fmt(t.build_s)} | {note.replace('|', '/')} |")
    lines += ["", "Chains (steps from the teacher) are in trials.json; each measurement's `lean bench` run is "
              "under bench/. Latencies of different trials were measured at different times on this machine: "
              "quote the speedups as measured, and re-measure the chosen model beside the teacher with "
              "`lean bench` when the ratio matters.", "", "![Pareto plot](pareto.png)", ""]
    return "\n".join(lines)


def loss_text(loss: float | None, budget: Budget) -> str:
    """A trial's loss against the teacher as the report prints it: '-0.45 pt', '+1.20 %' or 'x1.030'."""
    if loss is None:
        return "-"
    if budget.metric == "perplexity":
        return f"x{loss:.3f}"
    return f"{-loss:+.2f} {'%' if budget.relative else 'pt'}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def pareto_png(outcome: Outcome, budget: Budget, objective: str, path: Path) -> None:
    """Objective against validation quality for every measured candidate; the chosen one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    field, _ = OBJECTIVES[objective]
    metric = budget.metric
    points = [t for t in outcome.trials if t.kind == "candidate" and t.status == "ok"
              and getattr(t, field) is not None and t.validation.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ref = outcome.reference
    for t in points:
        ax.scatter(getattr(t, field), t.validation[metric], color="tab:blue" if t.passed else "tab:gray", s=25)
        ax.annotate(t.name, (getattr(t, field), t.validation[metric]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    if getattr(ref, field) is not None:
        ax.scatter(getattr(ref, field), ref.validation.get(metric), color="black", marker="s", s=40, label="teacher")
    chosen = outcome.chosen
    if chosen is not None and getattr(chosen, field) is not None and chosen.validation.get(metric) is not None:
        ax.scatter(getattr(chosen, field), chosen.validation[metric], color="tab:red", marker="*", s=220,
                   label=f"chosen: {chosen.name}", zorder=5)
    ref_q = ref.validation.get(metric)
    if isinstance(ref_q, (int, float)) and metric == "accuracy":
        floor = ref_q * (1 - budget.allowed / 100) if budget.relative else ref_q - budget.allowed / 100
        ax.axhline(floor, color="tab:red", linestyle="--", linewidth=0.8, label="budget")
    elif isinstance(ref_q, (int, float)):
        ax.axhline(ref_q * budget.allowed, color="tab:red", linestyle="--", linewidth=0.8, label="budget")
    ax.set_xlabel({"latency": "latency ms (lower is better)", "throughput": "throughput /s (higher is better)",
                   "memory": "peak memory MB", "size": "weights bytes"}[objective])
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("lean optimize: every measured candidate")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def copy_best(chosen: Trial | None, run_dir: Path) -> Path | None:
    """RUN/best: a copy of the chosen model directory (replaced atomically)."""
    from lean.steps import atomic_dir

    if chosen is None or not chosen.model_dir or not Path(chosen.model_dir).is_dir():
        return None
    out = run_dir / "best"
    # a resumed run's earlier best/ is replaced (lean's, or refused at the swap); the copy's lean.json stays the source's
    with atomic_dir(out, overwrite=True, record=None) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(chosen.model_dir, tmp, symlinks=False)
    return out


def write_outputs(outcome: Outcome, budget: Budget, objective: str, settings: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    data = summary(outcome, budget, objective, settings)
    data["best_dir"] = str(copy_best(outcome.chosen, run_dir) or "") or None
    write_json(run_dir / "trials.json", [outcome.reference.to_dict(), *[t.to_dict() for t in outcome.trials]])
    write_json(run_dir / "summary.json", data)
    (run_dir / "report.md").write_text(to_markdown(outcome, data, budget))
    try:
        pareto_png(outcome, budget, objective, run_dir / "pareto.png")
    except ImportError:  # matplotlib is in the `all` extra: the report says so instead of failing the run
        data["pareto"] = "not drawn: matplotlib is not installed"
        write_json(run_dir / "summary.json", data)
    return data
