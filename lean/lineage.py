"""What a step inherits from its parent directory: one rule for every step and for the harness.

    inherited = inherit(teacher_dir, {"task": config.task, "split_seed": config.split_seed})
    task = inherited.load_task()
    manifest["inherited"] = inherited.record()   # each value with where it came from

Each field is taken, in order, from
  - "option": what the caller gave (anything but None);
  - "parent": the parent's lean.json;
  - "default": the step's default (DEFAULTS, overridden per step).
The split seed, the text and label columns and the task kind describe the parent's *task*, so they
are inherited only when the step runs on that task (inherited, or named again): a student must be
scored on the teacher's test split, never on rows the teacher trained on. On another task they
start from the defaults. Max length describes the model and is inherited whatever the task.

A task recorded as a relative file path means the directory the parent was made from, which may not
be where the child runs: lean records absolute paths, and an older relative one is looked up from
the working directory, then from the parent's directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("task", "split_seed", "text_column", "label_column", "max_length", "kind")
TASK_FIELDS = ("split_seed", "text_column", "label_column", "kind")  # follow the task
DEFAULTS: dict[str, Any] = {"task": None, "split_seed": 42, "text_column": None, "label_column": None,
                            "max_length": 128, "kind": None}


@dataclass(frozen=True)
class Inherited:
    """The values a step runs with; `sources[name]` is "option", "parent" or "default"."""

    task: str | None
    split_seed: int
    text_column: str | None
    label_column: str | None
    max_length: int | None
    kind: str | None  # the task's kind, "classification" or "lm"; None: decided from the task spec
    sources: dict[str, str] = field(default_factory=dict)

    def load_task(self):
        """The task these values name (a LeanError when there is none)."""
        from lean.data import load_task
        from lean.errors import LeanError

        if self.task is None:
            raise LeanError("no task was given and the parent's lean.json records none: pass --task")
        return load_task(self.task, self.text_column, self.label_column, self.split_seed, self.kind or "auto")

    def record(self) -> dict[str, dict[str, Any]]:
        """What a manifest keeps: {field: {"value": ..., "from": ...}}."""
        return {name: {"value": getattr(self, name), "from": self.sources[name]} for name in FIELDS}


def parent_values(parent_dir: str | Path | None) -> dict[str, Any]:
    """The fields a parent directory's lean.json records ({} for a directory lean did not make)."""
    from lean.models import read_manifest

    if parent_dir is None or not Path(parent_dir).is_dir():
        return {}
    manifest = read_manifest(parent_dir)
    if not manifest:
        return {}
    recorded = {k: v.get("value") for k, v in (manifest.get("inherited") or {}).items() if isinstance(v, dict)}
    task = manifest.get("task") or {}
    config = manifest.get("config") or {}
    values = {
        "task": task.get("spec") or task.get("name") or recorded.get("task"),
        "split_seed": task.get("split_seed", recorded.get("split_seed")),
        "text_column": task.get("text_column", recorded.get("text_column")),
        "label_column": task.get("label_column", recorded.get("label_column")),
        "kind": task.get("kind") or recorded.get("kind"),
        # an export records its max_length at the top; a training step in its config
        "max_length": recorded.get("max_length") or manifest.get("max_length") or config.get("max_length"),
    }
    if values["task"] is None:
        return {k: v for k, v in values.items() if v is not None}
    values["task"] = resolve_task_spec(str(values["task"]), Path(parent_dir))
    # a recorded task without columns used the default ones: that, too, is the parent's choice
    return {k: v for k, v in values.items() if v is not None or k in ("text_column", "label_column")}


def resolve_task_spec(spec: str, parent_dir: Path | None = None) -> str:
    """A task spec with a local file or directory made absolute; built-in names and Hub ids unchanged."""
    from lean.data import BUILTIN_TASKS

    if spec in BUILTIN_TASKS:
        return spec
    path = Path(spec).expanduser()
    if path.is_absolute():
        return str(path)
    for base in (Path.cwd(), parent_dir):
        if base is not None and (base / path).exists():
            return str((base / path).resolve())
    return spec


def inherit(parent_dir: str | Path | None, explicit: dict[str, Any], defaults: dict[str, Any] | None = None) -> Inherited:
    """The values a step on `parent_dir` runs with: `explicit` (None = not given), else the parent's, else defaults."""
    unknown = set(explicit) - set(FIELDS)
    if unknown:
        raise ValueError(f"lineage fields are {', '.join(FIELDS)}; got {', '.join(sorted(unknown))}")
    fallback = {**DEFAULTS, **(defaults or {})}
    parent = parent_values(parent_dir)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(name: str, from_parent: bool) -> None:
        if explicit.get(name) is not None:
            values[name], sources[name] = explicit[name], "option"
        elif from_parent and name in parent:
            values[name], sources[name] = parent[name], "parent"
        else:
            values[name], sources[name] = fallback[name], "default"

    take("task", True)
    if sources["task"] == "option" and values["task"] is not None:
        values["task"] = resolve_task_spec(str(values["task"]))
    same_task = values["task"] is not None and values["task"] == parent.get("task")
    for name in TASK_FIELDS:
        take(name, same_task)
    take("max_length", True)
    if values["split_seed"] is not None:
        values["split_seed"] = int(values["split_seed"])
    return Inherited(**values, sources=sources)
