"""`lean optimize`: find the fastest (or smallest) model within an accuracy budget, and hand it over.

    from lean.optimize import optimize, OptimizeConfig, Budget
    summary = optimize(OptimizeConfig(model="minilm-l6", task="bbc-news", output="runs/optimize-bbc",
                                      budget=Budget(max_drop=1.0)))

The run directory holds run.json (the settings), trials.jsonl (every trial as it finished),
trials.json, summary.json, report.md, pareto.png, bench/ (each measurement's `lean bench` run) and
best/ (the chosen model directory). The search itself is lean.optimize.strategy; the measuring is
lean.optimize.adapter, or any function passed as `measure`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any, Callable

from lean.errors import LeanError
from lean.optimize.config import OptimizeConfig
from lean.optimize.space import MODEL, Candidate, Space, load_space
from lean.optimize.strategy import MeasureFn, Search
from lean.optimize.trials import TrialStore

RUN_FILE = "run.json"


def resolve_teacher(config: OptimizeConfig, space: Space) -> tuple[str, list[dict[str, Any]] | str, dict[str, Any]]:
    """(base, teacher, task): a directory lean made (its lean.json records a task) is the teacher; anything
    else is a base model that the space's finetune step turns into the teacher on --task."""
    from lean.models import read_manifest, resolve_model

    path = resolve_model(config.model)
    recorded = (read_manifest(path).get("task") or {}) if Path(path).is_dir() else {}
    if recorded and (recorded.get("spec") or recorded.get("name")):
        task = {"spec": config.task or recorded.get("spec") or recorded.get("name"),
                "text_column": config.text_column or recorded.get("text_column"),
                "label_column": config.label_column or recorded.get("label_column"),
                "split_seed": int(recorded.get("split_seed") or config.split_seed)}
        return str(path), str(path), task
    if config.task is None:
        raise LeanError(f"'{config.model}' is no teacher lean made (its lean.json records no task): pass --task "
                        "to fine-tune it first, or a directory made by `lean finetune`")
    task = {"spec": config.task, "text_column": config.text_column, "label_column": config.label_column,
            "split_seed": config.split_seed}
    return config.model, [{"finetune": dict(space.finetune)}], task


# What a run writes into its directory (its marker lists them: --overwrite may replace only these).
RUN_ENTRIES = (RUN_FILE, "trials.jsonl", "trials.json", "summary.json", "report.md", "pareto.png", "bench/", "best/")


def prepare_output(config: OptimizeConfig, settings: dict[str, Any]) -> Path:
    """The run directory: new, resumed (--resume: a run lean wrote, same teacher, space and target), or replaced
    (--overwrite: only a directory lean can prove it wrote, holding nothing else; lean.outputs). Never an input
    of the run (model, task file, space) or a folder holding one; called under the run's lock."""
    import json

    from lean.outputs import mark, read_marker, remove_output, why_not_replaceable
    from lean.steps import check_output_dir, check_target

    inputs = [config.task, config.space]
    out = check_target(config.output, "output", "-o", config.model, inputs)
    earlier = out / RUN_FILE
    if config.resume:
        if not (out.is_dir() and any(out.iterdir())):
            raise LeanError(f"--resume: '{out}' holds no run to continue: drop --resume")
        why = why_not_replaceable(out, extras=False)
        if why is not None or not earlier.is_file():
            raise LeanError(f"--resume continues a `lean optimize` run lean wrote, and '{out}' "
                            f"{why or 'holds no ' + RUN_FILE}")
        before = json.loads(earlier.read_text())
        changed = [k for k in ("teacher", "task", "target", "space") if before.get(k) != settings.get(k)]
        if changed:
            raise LeanError(f"'{out}' was run with a different {', '.join(changed)}: --resume continues a run "
                            "with the same ones (choose another -o for a new search)")
        output_id = read_marker(out)["id"]
    else:
        if out.is_dir() and any(out.iterdir()) and not config.overwrite and earlier.is_file():
            raise LeanError(f"'{out}' holds an earlier `lean optimize` run: pass --resume to continue it "
                            "or --overwrite to start again")
        check_output_dir(out, config.overwrite, config.model, inputs)
        if out.is_dir() and any(out.iterdir()):
            if not earlier.is_file():
                raise LeanError(f"output directory '{out}' holds no `lean optimize` run: choose another -o")
            remove_output(out)
        out.mkdir(parents=True, exist_ok=True)
        output_id = mark(out, RUN_ENTRIES, record=RUN_FILE)
    (out / RUN_FILE).write_text(json.dumps({**settings, "output_id": output_id}, indent=1, default=str))
    return out


def teacher_layers(model: str) -> int | None:
    """The teacher's (or base model's) layer count from its config.json, when it is a local directory."""
    import json

    from lean.models import resolve_model

    config = Path(resolve_model(model)) / "config.json"
    if not config.is_file():
        return None
    values = json.loads(config.read_text())
    layers = values.get("num_hidden_layers") or values.get("n_layer")
    return layers if isinstance(layers, int) else None


def availability(device: str, layers: int | None = None, lm: bool = False) -> Callable[[Candidate], str | None]:
    """Why a candidate cannot run here (a package it requires is missing, it needs CUDA, its student is no
    shallower than the teacher, or it is a classifier fitted on labels a language-modelling task lacks), or None."""
    def reason(candidate: Candidate) -> str | None:
        if lm and candidate.kind != MODEL:
            return f"{candidate.kind} classifies: this task is language modelling"
        for step in candidate.steps:
            depth = step.options.get("student_layers") if step.name == "distill" else None
            if layers is not None and isinstance(depth, int) and depth >= layers:
                return f"a {depth}-layer student of a {layers}-layer teacher is no smaller"
        for need in candidate.requires:
            if need == "cuda":
                if device != "cuda":
                    return "needs CUDA: optimizing for --device cpu"
            elif importlib.util.find_spec(need.replace("-", "_")) is None:
                return f"needs the package {need} (not installed)"
        return None

    return reason


def optimize(config: OptimizeConfig, measure: MeasureFn | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search the space, write the run directory, return summary.json's contents."""
    from lean.locks import output_lock
    from lean.optimize.report import write_outputs

    if config.target.device == "auto":
        from lean.models import resolve_device

        config = dataclasses.replace(config, target=dataclasses.replace(config.target, device=resolve_device("auto")))
    space = load_space(config.space, config.target.device)
    base, teacher, task = resolve_teacher(config, space)
    settings = {"teacher": {"model": str(config.model), "base": base, "teacher": teacher}, "task": task,
                "target": dataclasses.asdict(config.target), "space": space.to_dict(),
                "budget": dataclasses.asdict(config.budget), "objective": config.objective,
                "time_budget_s": config.time_budget, "max_trials": config.max_trials,
                "runs_dir": str(Path(config.runs_dir).expanduser().resolve())}
    if measure is None:  # a bad task, or a harness that cannot score validation: an error before any work
        from lean.data import load_task
        from lean.optimize.adapter import split_supported

        if not split_supported():
            raise LeanError("this lean.bench cannot score the validation split (suite key measure.split), and lean "
                            "optimize chooses on validation only: update lean")
        load_task(task["spec"], task["text_column"], task["label_column"], task["split_seed"])
    Path(config.output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with output_lock(config.output, "lean optimize run"):
        out = prepare_output(config, settings)
        if measure is None:
            from lean.optimize.adapter import BenchMeasure

            measure = BenchMeasure(task=task, base=base, teacher=teacher, target=config.target,
                                   runs_dir=Path(settings["runs_dir"]), output=out / "bench", measure=space.measure)
        reference = Candidate("teacher", "teacher", "reference", [], dict(space.reference.load), [], 0.0)
        search = Search(space.candidates(), reference, measure, config.budget, config.objective,
                        TrialStore(out / "trials.jsonl"), config.time_budget, config.max_trials, log,
                        availability(config.target.device, teacher_layers(base), config.budget.max_ppl_ratio is not None))
        outcome = search.run()
        shown = {k: settings[k] for k in ("budget", "objective", "target")}
        data = write_outputs(outcome, config.budget, config.objective, shown, out)
    data["output"] = str(out)
    return data



