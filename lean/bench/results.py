"""The results of a bench run as typed objects: a latency Cell, a variant's Row, the run's Results.

    from lean.bench.results import read_results
    results = read_results("runs/bench/default-20260101-120000")     # a Results
    base = results.row(results.baseline); base.cells[0].median_ms

results.json stays a plain JSON object (its schema in docs/bench.md, its version SCHEMA_VERSION);
these classes read it back with `from_dict` and write it with `to_dict`. A key a class does not name
is kept in its `extra` dict and written back, so older and newer files round-trip unchanged.
The bottom of lean.bench: imports nothing else of the package.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lean.errors import LeanError

# 2: a cell may say why its figures are `unreliable` and note an impossible `order`; run.machine, run.set_aside
# and run.busy. Version 1 files read as before (no cell of theirs is marked).
SCHEMA_VERSION = 2
STATUSES = ("ok", "failed", "skipped", "timeout", "oom", "interrupted")


_OWN = ("extra", "nulls", "has_latency")  # bookkeeping fields, not keys of results.json


def _split(cls, data: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of `cls` from `data`: its named fields, `extra` (every other key) and
    `nulls` (the named keys the file holds as null, so they are written back as null)."""
    named = {f.name for f in dataclasses.fields(cls)} - set(_OWN)
    values = {k: v for k, v in data.items() if k in named}
    return values | {"extra": {k: v for k, v in data.items() if k not in named},
                     "nulls": tuple(k for k, v in values.items() if v is None)}


def _join(obj, nested: dict[str, Any]) -> dict[str, Any]:
    """`obj` as a dict: its fields (None left out unless the file held it or it is always written),
    `nested` in place of theirs, then extra."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in _OWN:
            continue
        value = nested.get(f.name, getattr(obj, f.name))
        if value is not None or f.name in obj.nulls or f.name in getattr(obj, "ALWAYS", ()):
            out[f.name] = value
    return out | obj.extra


@dataclass
class Cell:
    """One (batch size, sequence length) latency cell of a row: times in ms, speedup over the baseline."""

    batch_size: int
    seq_length: int
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    count: int | None = None
    throughput_sps: float | None = None
    speedup: float | None = None
    speedup_interval: list[float] | None = None
    skipped: str | None = None  # why this variant does not measure the cell
    unreliable: str | None = None  # why its rounds do not support its figures (lean.bench.reliability)
    order: str | None = None  # a cell with less work measured much slower (or more, faster) than this one
    extra: dict[str, Any] = field(default_factory=dict)
    nulls: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Cell":
        return cls(**_split(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return _join(self, {})

    @property
    def measured(self) -> bool:
        return self.median_ms is not None

    @property
    def reliable(self) -> bool:
        """Measured, and its rounds support its figures and its speedup."""
        return self.measured and not self.unreliable


@dataclass
class Row:
    """One variant of a run: how it ended, what was built, its figures."""

    name: str
    status: str
    error: str | None = None
    phase: str | None = None
    config: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    cells: list[Cell] = field(default_factory=list)  # "latency" in results.json
    memory: dict[str, Any] | None = None
    size: dict[str, Any] | None = None
    vs_baseline: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    nulls: tuple[str, ...] = field(default=(), repr=False, compare=False)
    has_latency: bool = field(default=True, repr=False, compare=False)  # False: the file's row had no "latency"
    ALWAYS = ("error", "phase")  # written even when null: every row says whether it failed and where

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Row":
        if not isinstance(data, dict) or "name" not in data or "status" not in data:
            raise LeanError("a row of results.json has no name or status: the file is not lean bench's")
        data = dict(data)
        latency = data.pop("latency", None)
        row = cls(**_split(cls, data))
        row.cells = [Cell.from_dict(c) for c in latency or []]
        row.has_latency = latency is not None
        return row

    def to_dict(self) -> dict[str, Any]:
        out = _join(self, {})
        out.pop("cells")
        if self.cells or self.has_latency:
            out["latency"] = [c.to_dict() for c in self.cells]
        return out

    def cell(self, batch_size: int, seq_length: int) -> Cell | None:
        return next((c for c in self.cells if (c.batch_size, c.seq_length) == (batch_size, seq_length)), None)


@dataclass
class Results:
    """A whole run: the suite as run, the run's facts, the machine, the task and one Row per variant."""

    baseline: str
    variants: list[Row]
    schema_version: int = SCHEMA_VERSION
    suite: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    nulls: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Results":
        if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
            raise LeanError("results.json holds no list of variants: it is not a run written by lean bench")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise LeanError(f"results.json has schema version {version!r}; this lean reads up to "
                            f"{SCHEMA_VERSION}: upgrade lean to read it")
        data = dict(data)
        rows = [Row.from_dict(r) for r in data.pop("variants")]
        values = _split(cls, data)
        values.setdefault("baseline", rows[0].name if rows else "")
        return cls(**values, variants=rows)

    def to_dict(self) -> dict[str, Any]:
        return _join(self, {"variants": [r.to_dict() for r in self.variants]})

    def row(self, name: str | None) -> Row | None:
        return next((r for r in self.variants if r.name == name), None)


def load_results(path: str | Path) -> dict[str, Any]:
    """The results.json of a run directory (or the file itself) as a dict, checked to be lean bench's."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise LeanError(f"no results.json at {path}: pass a run directory written by lean bench")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeanError(f"{file} is not valid JSON ({e}): pass a results.json written by lean bench") from None
    Results.from_dict(data)  # one line on a file that is not a run's, before any reader trips on it
    return data


def read_results(path: str | Path) -> Results:
    return Results.from_dict(load_results(path))
