"""Tests for lean.bench.results: results.json as typed objects, every run lean bench wrote reading back
unchanged, and files that are not a run refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lean.bench.results import (
    SCHEMA_VERSION,
    Cell,
    Results,
    Row,
    load_results,
    read_results,
)
from lean.errors import LeanError

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_committed_runs_read_back_unchanged():
    files = sorted(RESULTS.glob("*/results.json"))
    assert files, "benchmarks/results holds the runs the docs cite"
    for file in files:
        data = json.loads(file.read_text())
        results = read_results(file.parent)
        assert results.to_dict() == data, file  # every key, nulls included, in and out
        base = results.row(results.baseline)
        assert base is not None and base.name == data["baseline"]
        measured = [c for c in base.cells if c.measured]
        raw = [c for c in next(r for r in data["variants"] if r["name"] == data["baseline"]).get("latency") or []
               if "median_ms" in c]
        assert [c.median_ms for c in measured] == [c["median_ms"] for c in raw]


def test_typed_rows_and_cells():
    cell = Cell.from_dict({"batch_size": 1, "seq_length": 128, "median_ms": 5.0, "speedup": None, "visits": []})
    assert cell.measured and cell.speedup is None and cell.extra == {"visits": []}
    assert cell.to_dict() == {"batch_size": 1, "seq_length": 128, "median_ms": 5.0, "speedup": None, "visits": []}
    row = Row.from_dict({"name": "int8", "status": "failed", "error": "boom", "phase": "build", "chain": []})
    assert row.cells == [] and row.extra == {"chain": []}
    assert row.to_dict() == {"name": "int8", "status": "failed", "error": "boom", "phase": "build", "chain": []}
    ok = Row("sdpa", "ok", cells=[Cell(1, 128, median_ms=4.0)])
    assert ok.to_dict()["error"] is None and ok.cell(1, 128).median_ms == 4.0 and ok.cell(32, 128) is None
    results = Results("sdpa", [ok])
    assert Results.from_dict(results.to_dict()) == results
    assert results.to_dict()["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("[]", "no list of variants"),
    ('{"variants": [{"status": "ok"}]}', "no name or status"),
    (json.dumps({"schema_version": SCHEMA_VERSION + 1, "variants": []}), "upgrade lean"),
])
def test_a_file_that_is_not_a_run_is_one_line(tmp_path, content, words):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(LeanError, match=words) as info:
        load_results(tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(LeanError, match="no results.json"):
        load_results(tmp_path / "elsewhere")
