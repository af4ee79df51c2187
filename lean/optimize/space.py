"""The search space: which students, which runtimes, and so which chains `lean optimize` may try.

    from lean.optimize.space import load_space
    space = load_space(None, device="cpu")            # the built-in lean/optimize/spaces/cpu.yaml
    space = load_space("my-space.yaml", device="cpu")  # a file; `extends: cpu` starts from the built-in one
    for candidate in space.candidates(): ...

A space file is YAML in the suite's style (docs/optimize.md): `students` name chains that make a
smaller model from the teacher (distill steps), `runtimes` name how a model runs (a load option, a
quantize step, an ONNX export). A candidate is the teacher or one student, followed by one runtime;
the teacher as the reference runtime measures is the reference itself. A user's file that says
`extends: cpu` adds entries to the built-in space, or removes one by setting it to null. Every key and
every step option is checked here, so a misspelt entry is one line before any model is built.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lean.errors import LeanError

SPACES_DIR = Path(__file__).with_name("spaces")
SPACE_KEYS = {"name", "description", "extends", "device", "finetune", "reference", "probe", "costs", "measure",
              "students", "runtimes", "classical"}
# measure keys a space may set (docs/bench.md); the target sets the cell and threads, the search the split
TARGET_MEASURE_KEYS = {"batch_sizes", "seq_lengths", "threads", "split", "quality", "latency"}
ENTRY_KEYS = {"steps", "load", "requires", "description"}
CLASSICAL_KEYS = {"kind", "requires", "description"}
MODEL = "model"  # the bench kind of a model directory built by steps (lean.bench.kinds.MODEL)
TEACHER = "teacher"
# a step not named in the space's costs: cheap (a quantization or an export takes seconds to a minute)
DEFAULT_COST = 1.0


@dataclass
class Entry:
    """One student or runtime of a space: steps (lean.bench.suite.Step) and how the result is loaded."""

    name: str
    steps: list = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)
    description: str = ""
    kind: str = MODEL  # a classical entry: the bench kind fitted on the task itself (tfidf-logreg)


@dataclass
class Candidate:
    """A chain to try: the teacher or a student, then a runtime."""

    name: str
    student: str  # TEACHER or a student's name
    runtime: str
    steps: list  # lean.bench.suite.Step, from the teacher
    load: dict[str, Any]
    requires: list[str]
    cost: float  # relative build cost (the space's costs): cheap candidates are measured first
    probe_steps: list | None = None  # the same chain with an untrained student (latency, memory, size only)
    kind: str = MODEL  # not a model: a classical kind fitted on the task's train split, no steps

    def chain(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    def key(self) -> str:
        """Identifies what is measured (steps and load, or the classical kind), for resuming a run."""
        what = {"steps": self.chain(), "load": self.load} | ({"kind": self.kind} if self.kind != MODEL else {})
        payload = json.dumps(what, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class Space:
    name: str
    device: str
    finetune: dict[str, Any]  # options of the finetune step that makes a base model the teacher
    reference: Entry  # the teacher as measured (no steps)
    probe: dict[str, Any]  # distill options overlaid for an untrained-student probe
    costs: dict[str, float]
    measure: dict[str, Any]  # the harness's measure options for every measurement (warmup, repeats, ...)
    students: dict[str, Entry]
    runtimes: dict[str, Entry]
    file: str | None = None
    classical: dict[str, Entry] = field(default_factory=dict)  # models fitted on the task itself, not the teacher

    def candidates(self) -> list[Candidate]:
        """Every chain of the space, cheapest first (ties in the file's order)."""
        out = []
        for student in [TEACHER, *self.students]:
            for runtime in self.runtimes.values():
                first = self.students.get(student)
                steps = [*(first.steps if first else []), *runtime.steps]
                load = {**(first.load if first else {}), **runtime.load}
                if student == TEACHER and not runtime.steps and load == self.reference.load:
                    continue  # the reference itself
                requires = sorted({*(first.requires if first else []), *runtime.requires})
                cost = sum(float(self.costs.get(s.name, DEFAULT_COST)) for s in steps)
                out.append(Candidate(f"{student}+{runtime.name}", student, runtime.name, steps, load, requires, cost,
                                     self._probe(steps)))
        for name, entry in self.classical.items():
            out.append(Candidate(name, name, entry.kind, [], {}, sorted(entry.requires),
                                 float(self.costs.get(entry.kind, DEFAULT_COST)), kind=entry.kind))
        order = {c.name: i for i, c in enumerate(out)}
        return sorted(out, key=lambda c: (c.cost, order[c.name]))

    def _probe(self, steps: list) -> list | None:
        from lean.bench.suite import Step

        if not self.probe or not any(s.name == "distill" for s in steps):
            return None  # without probe options a "probe" would be the full distillation
        return [Step(s.name, {**s.options, **self.probe}) if s.name == "distill" else s for s in steps]

    def to_dict(self) -> dict[str, Any]:
        def entry(e: Entry) -> dict[str, Any]:
            return {"steps": [s.to_dict() for s in e.steps], "load": e.load, "requires": e.requires,
                    "description": e.description}

        return {"name": self.name, "file": self.file, "device": self.device, "finetune": self.finetune,
                "reference": entry(self.reference), "probe": self.probe, "costs": self.costs, "measure": self.measure,
                "students": {n: entry(e) for n, e in self.students.items()},
                "runtimes": {n: entry(e) for n, e in self.runtimes.items()},
                "classical": {n: {"kind": e.kind, "requires": e.requires, "description": e.description}
                              for n, e in self.classical.items()}}


def _mapping(where: str, value: Any, known: set[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LeanError(f"{where} must be a mapping (key: value), got {type(value).__name__}")
    if known is not None:
        for key in value:
            if key not in known:
                raise LeanError(f"unknown key '{key}' in {where}; known keys: {', '.join(sorted(known))}")
    return dict(value)


def _check_options(step, where: str) -> None:
    """The step's options as its config accepts them (the task is filled in later, by the harness)."""
    from lean.steps import step_config

    try:
        step_config(step.name, step.options)
    except LeanError as e:
        raise LeanError(f"{where}: {e}") from None
    except TypeError as e:
        raise LeanError(f"{where}: step '{step.name}': {e}") from None


def parse_entry(name: str, spec: Any, where: str) -> Entry:
    from lean.bench.suite import LoadOptions, parse_steps

    spec = _mapping(where, spec, ENTRY_KEYS)
    steps = parse_steps(spec.get("steps"), f"{where} steps")
    for i, step in enumerate(steps):
        _check_options(step, f"{where} step {i + 1} ({step.name})")
    load = _mapping(f"{where} load", spec.get("load"), {"attention", "dtype", "provider"})
    try:
        LoadOptions(**load)
    except LeanError as e:
        raise LeanError(f"{where}: {e}") from None
    requires = spec.get("requires") or []
    requires = [requires] if isinstance(requires, str) else requires
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise LeanError(f"{where}: requires must be a list of names (cuda, or packages such as bitsandbytes)")
    return Entry(name, steps, load, list(requires), str(spec.get("description", "")))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`: students and runtimes entry by entry (null removes one), other keys replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key in ("students", "runtimes", "classical", "costs") and isinstance(value, dict):
            merged = dict(out.get(key) or {})
            for name, entry in value.items():
                if entry is None:
                    merged.pop(name, None)
                else:
                    merged[name] = entry
            out[key] = merged
        elif key != "extends":
            out[key] = value
    return out


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise LeanError(f"space file '{path}' does not exist: pass a YAML file (see docs/optimize.md)")
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise LeanError(f"space '{path}' is not UTF-8 text (byte {e.start}): pass a YAML file") from None
    except RecursionError:
        raise LeanError(f"space '{path}' is nested too deeply to be a search space: pass a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise LeanError(f"space '{path}' is not valid YAML{at}: {getattr(e, 'problem', None) or type(e).__name__}") from None


def _measure_keys() -> set[str]:
    import dataclasses

    from lean.bench.suite import MeasureConfig

    return {f.name for f in dataclasses.fields(MeasureConfig)} - TARGET_MEASURE_KEYS


def parse_classical(name: str, spec: Any, where: str) -> Entry:
    """A model fitted on the task's train split by a bench kind (lean.bench.kinds), measured like a candidate."""
    from lean.bench.kinds import KINDS

    spec = _mapping(where, spec, CLASSICAL_KEYS)
    kind = spec.get("kind", name)
    if kind not in KINDS or KINDS[kind].takes_steps:
        fitted = sorted(k for k, v in KINDS.items() if not v.takes_steps)
        raise LeanError(f"{where}: unknown kind '{kind}'; the kinds fitted on the task are: {', '.join(fitted)}")
    requires = spec.get("requires") or []
    requires = [requires] if isinstance(requires, str) else requires
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise LeanError(f"{where}: requires must be a list of names (packages such as scikit-learn)")
    return Entry(name, [], {}, list(requires), str(spec.get("description", "")), kind=kind)


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def parse_space(data: Any, file: str | None = None, device: str = "cpu") -> Space:
    """Validate a space's parsed YAML (with `extends` resolved against the built-in spaces)."""
    where = f"space '{file}'" if file else "space"
    data = _mapping(f"{where} (top level)", data, SPACE_KEYS)
    if "extends" in data:
        parent = str(data["extends"])
        if parent not in builtin_spaces():
            raise LeanError(f"{where} extends '{parent}', which is no built-in space; built-in: {', '.join(builtin_spaces())}")
        data = _merge(_mapping(where, _read_yaml(SPACES_DIR / f"{parent}.yaml"), SPACE_KEYS), data)
    students = {str(n): parse_entry(str(n), s, f"{where} student '{n}'")
                for n, s in _mapping(f"{where} students", data.get("students")).items()}
    runtimes = {str(n): parse_entry(str(n), s, f"{where} runtime '{n}'")
                for n, s in _mapping(f"{where} runtimes", data.get("runtimes")).items()}
    if not runtimes:
        raise LeanError(f"{where} has no runtimes: name at least one (e.g. torch: {{load: {{attention: sdpa}}}})")
    for name, entry in students.items():
        if name == TEACHER or "+" in name:
            raise LeanError(f"{where}: '{name}' cannot name a student (the name '{TEACHER}' and '+' are taken)")
        if not entry.steps:
            raise LeanError(f"{where} student '{name}' has no steps: give its distill step")
    classical = {str(n): parse_classical(str(n), c, f"{where} classical '{n}'")
                 for n, c in _mapping(f"{where} classical", data.get("classical")).items()}
    taken = [n for n in classical if n in students or n == TEACHER or "+" in n]
    if taken:
        raise LeanError(f"{where}: classical '{taken[0]}' cannot share a name with a student, '{TEACHER}' or hold '+'")
    reference = parse_entry("reference", data.get("reference"), f"{where} reference")
    if reference.steps:
        raise LeanError(f"{where} reference takes no steps: it is the teacher itself, with load options")
    costs = _mapping(f"{where} costs", data.get("costs"))
    for step, cost in costs.items():
        if not isinstance(cost, (int, float)) or cost < 0:
            raise LeanError(f"{where} costs.{step} must be a number of at least 0, got {cost!r}")
    space_device = str(data.get("device") or device)
    if space_device != device:
        raise LeanError(f"{where} is a space for --device {space_device}, not {device}: pass --device {space_device} "
                        "or a space for this device")
    measure = _mapping(f"{where} measure", data.get("measure"), _measure_keys())
    probe = _mapping(f"{where} probe", data.get("probe"))
    if probe:  # the probe's options overlay a student's distill options: they must be distill options
        from lean.bench.suite import Step

        _check_options(Step("distill", {"student_layers": 1, **probe}), f"{where} probe")
    finetune = _mapping(f"{where} finetune", data.get("finetune"))
    return Space(name=str(data.get("name") or (Path(file).stem if file else "space")), device=space_device,
                 finetune=finetune, reference=reference, probe=probe, costs={k: float(v) for k, v in costs.items()},
                 measure=measure, students=students, runtimes=runtimes, file=file, classical=classical)


def load_space(path: str | Path | None = None, device: str = "cpu") -> Space:
    """A space file, or (None) the built-in space of the device."""
    if path is None:
        file = SPACES_DIR / f"{device}.yaml"
        if not file.is_file():
            raise LeanError(f"no built-in search space for --device {device}; built-in: {', '.join(builtin_spaces())}")
    else:
        file = Path(path).expanduser()
    return parse_space(_read_yaml(file), str(file), device)
