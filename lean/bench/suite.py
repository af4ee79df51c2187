"""Benchmark suites: the YAML schema, its validation, and the registry of variant kinds.

    from lean.bench.suite import load_suite
    suite = load_suite("benchmarks/suites/default.yaml")    # or load_suite() for the built-in one

A suite names a task, a base model, a teacher chain (steps from the base), a baseline variant,
how to measure, and the variants. A variant is a chain of steps that starts from the teacher (or
the base, or an existing directory), plus options for loading the result (attention, dtype). Every
key is checked here: a misspelt key is a one-line LeanError that names it and lists the known ones,
before any model is built, and so is every number (type, range, finite). Relative paths (a task
file, a base or variant directory) resolve against the suite file's directory. A suite cannot enable
remote code: only `lean bench --trust-remote-code` does (Suite.trust_remote_code). Parent side of
lean.bench. The full schema is documented in docs/bench.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lean.bench.kinds import KINDS, MODEL
from lean.bench.options import (  # noqa: F401
    ATTENTIONS,
    DTYPES,
    SPLITS,
    LoadOptions,
    MeasureConfig,
    build_config,
    check_int,
    check_keys,
)
from lean.errors import LeanError

# The built-in suite ships inside the package (benchmarks/suites/default.yaml is a link to it), so
# `lean bench` works from a non-editable install too.
DEFAULT_SUITE = Path(__file__).with_name("default.yaml")

STARTS = ("teacher", "base")  # where a variant's steps begin (or a directory path)
REMOTE_CODE = ("remote code runs only with `lean bench --trust-remote-code` on the command line, never from a "
               "suite")
# a module name in `requires` (dots between identifiers; a PyPI name's hyphens are read as underscores)
MODULE_NAME = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")


@dataclass
class Step:
    """One step of a chain: its registry name and its options as written in the suite."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {self.name: dict(self.options)}


@dataclass
class Variant:
    name: str
    kind: str = MODEL
    start: str = "teacher"  # teacher | base | a directory path
    steps: list[Step] = field(default_factory=list)
    load: LoadOptions = field(default_factory=LoadOptions)
    requires: list[str] = field(default_factory=list)  # cuda, or importable module names (triton, ...)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    description: str = ""

    def config(self) -> dict[str, Any]:
        """What results.json records as this variant's configuration."""
        return {"kind": self.kind, "from": self.start, "steps": [s.to_dict() for s in self.steps],
                "load": dataclasses.asdict(self.load), "requires": list(self.requires), "description": self.description}


@dataclass
class Suite:
    name: str
    task: str
    base: str
    teacher: list[Step] | str  # a chain from the base, or an existing directory
    baseline: str
    measure: MeasureConfig
    variants: dict[str, Variant]
    text_column: str | None = None
    label_column: str | None = None
    split_seed: int = 42
    file: str | None = None
    trust_remote_code: bool = False  # set from `lean bench --trust-remote-code` only, never from the YAML

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "file": self.file, "task": self.task, "text_column": self.text_column,
               "label_column": self.label_column, "split_seed": self.split_seed, "base": self.base,
               "teacher": self.teacher if isinstance(self.teacher, str) else [s.to_dict() for s in self.teacher],
               "baseline": self.baseline, "measure": dataclasses.asdict(self.measure),
               "variants": {n: v.config() for n, v in self.variants.items()}}
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        return out

    def longer(self, factor: int) -> "Suite":
        """This suite with every variant's latency cells timed `factor` times as long (MeasureConfig.longer)."""
        return dataclasses.replace(self, measure=self.measure.longer(factor), variants={
            n: dataclasses.replace(v, measure=v.measure.longer(factor)) for n, v in self.variants.items()})


SUITE_KEYS = {"name", "description", "task", "text_column", "label_column", "split_seed", "base", "teacher",
              "baseline", "measure", "variants"}
VARIANT_KEYS = {"kind", "from", "path", "steps", "load", "requires", "measure", "description"}


def parse_steps(value: Any, where: str) -> list[Step]:
    """`[{finetune: {epochs: 1}}, {export: {}}]` (or a bare step name) -> [Step, ...], names checked."""
    from lean.steps import STEPS

    if value is None:
        return []
    if not isinstance(value, list):
        raise LeanError(f"{where} must be a list of steps like [{{finetune: {{epochs: 1}}}}], "
                        f"got {type(value).__name__}")
    steps = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise LeanError(f"{where}[{i}] must be one step name with its options, "
                            "like {quantize: {method: bnb-int8}}")
        (name, options), = item.items()
        if name not in STEPS:
            raise LeanError(f"unknown step '{name}' in {where}[{i}]; known steps: {', '.join(sorted(STEPS))}")
        if options is not None and not isinstance(options, dict):
            raise LeanError(f"options of step '{name}' in {where}[{i}] must be a mapping, got {type(options).__name__}")
        if "trust_remote_code" in (options or {}):
            raise LeanError(f"{where}[{i}] ({name}) sets trust_remote_code: {REMOTE_CODE}; remove the key")
        steps.append(Step(name, dict(options or {})))
    return steps


def parse_suite(data: Any, file: str | None = None, check_steps: bool = True) -> Suite:
    """Validate a suite's parsed YAML into a Suite; every unknown key is a LeanError naming it."""
    where = f"suite '{file}'" if file else "suite"
    if isinstance(data, dict) and "trust_remote_code" in data:
        raise LeanError(f"{where} sets trust_remote_code: {REMOTE_CODE}; remove the key")
    data = check_keys(f"{where} (top level)", data, SUITE_KEYS)
    data = _resolve_paths(data, Path(file).parent if file else None)
    split_seed = data.get("split_seed", 42)
    check_int(f"{where} split_seed", split_seed, 0)
    for required in ("task", "base", "variants"):
        if required not in data:
            raise LeanError(f"{where} has no '{required}' key: add it (see docs/bench.md)")
    if data["base"] is None:  # a teacher trained from scratch: its first step is finetune with init_config
        first = (data.get("teacher") or [None])[0] if isinstance(data.get("teacher"), list) else None
        init = (first.get("finetune") or {}).get("init_config") if isinstance(first, dict) else None
        if not init:
            raise LeanError(f"{where} has base: null, which needs a teacher whose first step is "
                            "{finetune: {init_config: NAME, ...}} (a causal LM trained from scratch)")
        data = {**data, "base": f"init:{init}"}
    measure_keys = {f.name for f in dataclasses.fields(MeasureConfig)}
    measure = build_config(MeasureConfig, check_keys(f"{where} measure", data.get("measure"), measure_keys),
                     f"{where} measure")
    teacher = data.get("teacher", [])
    teacher = teacher if isinstance(teacher, str) else parse_steps(teacher, f"{where} teacher")
    raw_variants = data["variants"]
    if not isinstance(raw_variants, dict) or not raw_variants:
        raise LeanError(f"{where} variants must be a non-empty mapping of name -> variant")
    variants = {}
    for name, spec in raw_variants.items():
        variants[str(name)] = parse_variant(str(name), spec, measure, f"{where} variant '{name}'")
    baseline = str(data.get("baseline") or next(iter(variants)))
    if baseline not in variants:
        raise LeanError(f"{where} baseline '{baseline}' is not one of its variants: {', '.join(variants)}")
    suite = Suite(name=str(data.get("name") or (Path(file).stem if file else "suite")), task=str(data["task"]),
                  base=str(data["base"]), teacher=teacher, baseline=baseline, measure=measure, variants=variants,
                  text_column=data.get("text_column"), label_column=data.get("label_column"),
                  split_seed=split_seed, file=file)
    if check_steps:
        check_step_options(suite)
    return suite


def _resolve_paths(data: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    """The suite with its relative paths (task, base, a teacher directory, variant paths) made absolute
    against the suite file's folder, where a file or directory of that name is there. Other values
    (built-in names, Hub ids) are left as they are."""
    if folder is None:
        return data

    def resolve(value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        candidate = folder / value
        return str(candidate.resolve()) if candidate.exists() else value

    data = {**data, **{key: resolve(data[key]) for key in ("task", "base") if key in data}}
    if isinstance(data.get("teacher"), str):
        data["teacher"] = resolve(data["teacher"])
    if isinstance(data.get("variants"), dict):
        data["variants"] = {name: {**spec, "path": resolve(spec["path"])} if isinstance(spec, dict) and "path" in spec
                            else spec for name, spec in data["variants"].items()}
    return data


def parse_requires(value: Any, where: str) -> list[str]:
    """`requires`: cuda, or module names (triton, bitsandbytes, ...), each checked for its form."""
    requires = [value] if isinstance(value, str) else (value or [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise LeanError(f"{where}: requires must be a list of names (cuda, or packages such as triton)")
    for need in requires:
        if need != "cuda" and not MODULE_NAME.match(need):
            raise LeanError(f"{where}: requires '{need}' is not a module name (like triton or bitsandbytes)")
    return list(requires)


def parse_variant(name: str, spec: Any, measure: MeasureConfig, where: str) -> Variant:
    spec = check_keys(where, spec, VARIANT_KEYS)
    kind = spec.get("kind", MODEL)
    if kind not in KINDS:
        raise LeanError(f"{where}: unknown kind '{kind}'; known kinds: {', '.join(KINDS)}")
    if "path" in spec and "from" in spec:
        raise LeanError(f"{where}: give 'path' (an existing directory) or 'from', not both")
    start = str(spec.get("path") or spec.get("from") or "teacher")
    if "from" in spec and start not in STARTS:
        raise LeanError(f"{where}: 'from' must be one of {', '.join(STARTS)} (use 'path' for a directory), "
                        f"got '{start}'")
    load = build_config(LoadOptions, check_keys(f"{where} load", spec.get("load"),
                                           {f.name for f in dataclasses.fields(LoadOptions)}), f"{where} load")
    requires = parse_requires(spec.get("requires"), where)
    if not KINDS[kind].takes_steps and (spec.get("steps") or "path" in spec):
        raise LeanError(f"{where}: a '{kind}' variant takes no steps or path (it is trained from the task itself)")
    return Variant(name=name, kind=kind, start=start, steps=parse_steps(spec.get("steps"), f"{where} steps"),
                   load=load, requires=requires, measure=measure.replace(spec.get("measure") or {}, f"{where} measure"),
                   description=str(spec.get("description", "")))


# ---- step configs --------------------------------------------------------------------------

TASK_FIELDS = ("task", "text_column", "label_column", "split_seed")


def step_options(suite: Suite, step: Step) -> dict[str, Any]:
    """The step's options with the suite's task filled in where the step takes one and the suite left it out."""
    from lean.steps import STEPS, _resolve

    factory = _resolve(STEPS[step.name][1])
    if dataclasses.is_dataclass(factory):
        accepted = {f.name for f in dataclasses.fields(factory) if f.init}
    else:
        params = inspect.signature(factory).parameters
        accepted = set() if any(p.kind == p.VAR_KEYWORD for p in params.values()) else set(params)
    options = dict(step.options)
    suite_task = {"task": suite.task, "text_column": suite.text_column, "label_column": suite.label_column,
                  "split_seed": suite.split_seed}
    for key in TASK_FIELDS:
        if key in accepted and key not in options and suite_task[key] is not None:
            options[key] = suite_task[key]
    if suite.trust_remote_code and "trust_remote_code" in accepted:  # the command line's flag, never the YAML
        options["trust_remote_code"] = True
    return options


def build_step_config(suite: Suite, step: Step, where: str):
    """The step's config object (lean.steps.step_config), with the suite task filled in."""
    from lean.steps import step_config

    try:
        return step_config(step.name, step_options(suite, step))
    except LeanError as e:
        raise LeanError(f"{where}: {e}") from None
    except TypeError as e:
        raise LeanError(f"{where}: step '{step.name}': {e}") from None


def check_step_options(suite: Suite) -> None:
    """Check every step's options up front where its module is installed; a step whose module is missing
    is left to fail as its own row."""
    chains = [("teacher", suite.teacher if isinstance(suite.teacher, list) else [])]
    chains += [(f"variant '{n}'", v.steps) for n, v in suite.variants.items()]
    for where, steps in chains:
        for i, step in enumerate(steps):
            try:
                build_step_config(suite, step, f"suite '{suite.file or suite.name}' {where} step {i + 1} ({step.name})")
            except (ImportError, AttributeError):
                continue


def load_suite(path: str | Path | None = None) -> Suite:
    """Read and validate a suite file (None: the built-in default suite)."""
    import yaml

    path = Path(path).expanduser() if path is not None else DEFAULT_SUITE
    if not path.is_file():
        raise LeanError(f"suite file '{path}' does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise LeanError(f"suite '{path}' is not UTF-8 text: pass a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise LeanError(f"suite '{path}' is not valid YAML{at}: {problem}") from None
    return parse_suite(data, str(path))


def directories_suite(dirs: list[str], task: str | None = None, name: str = "dirs",
                      measure: MeasureConfig | None = None) -> Suite:
    """A suite that measures existing directories against each other (the first is the baseline)."""
    from lean.bench.inputs import read_manifest_checked

    if not dirs:
        raise LeanError("pass at least one model directory")
    for d in dirs:
        if not Path(d).is_dir():
            raise LeanError(f"'{d}' is not a directory: pass model directories (or one suite .yaml file)")
    from lean.lineage import inherit

    if task is None:
        recorded = read_manifest_checked(dirs[0]).get("task") or {}
        if not isinstance(recorded, dict):
            raise LeanError(f"'{dirs[0]}/lean.json' records its task as {type(recorded).__name__}, not a mapping: "
                            "pass --task")
    inherited = inherit(dirs[0], {"task": task})  # the one rule steps follow: split seed and columns with the task
    if not inherited.task or not isinstance(inherited.task, str):
        raise LeanError(f"'{dirs[0]}' records no task in lean.json: pass --task")
    task, split_seed = inherited.task, inherited.split_seed
    check_int(f"'{dirs[0]}/lean.json' task.split_seed", split_seed, 0)
    text_column, label_column = inherited.text_column, inherited.label_column
    measure = measure or MeasureConfig()
    variants: dict[str, Variant] = {}
    for d in dirs:
        base = Path(d).resolve().name or "model"
        label, n = base, 2
        while label in variants:
            label, n = f"{base}-{n}", n + 1
        variants[label] = Variant(name=label, start=str(d), measure=measure)
    return Suite(name=name, task=task, base=str(dirs[0]), teacher=str(dirs[0]), baseline=next(iter(variants)),
                 measure=measure, variants=variants, text_column=text_column, label_column=label_column,
                 split_seed=split_seed)
