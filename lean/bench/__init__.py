"""lean bench: measure every variant's accuracy, latency and memory in one harness.

    from lean.bench import load_suite, run_bench, BenchOptions
    results = run_bench(load_suite("benchmarks/suites/default.yaml"), BenchOptions(output="runs/bench/x"))

suite.py (YAML schema), runner.py (chains, caching, subprocesses), measure.py (inside a variant's
subprocess), report.py (results.json, results.csv, report.md, pareto.png), classical.py (tfidf-logreg),
history.py (this run against earlier runs on the machine).
Names are resolved lazily, so `python -m lean.bench.runner` and `-m lean.bench.measure` run their
module once (not also as an import of this package).
"""

from importlib import import_module

_EXPORTS = {"BenchOptions": "lean.bench.runner", "run_bench": "lean.bench.runner",
            "DEFAULT_SUITE": "lean.bench.suite", "Suite": "lean.bench.suite", "Variant": "lean.bench.suite",
            "directories_suite": "lean.bench.suite", "load_suite": "lean.bench.suite", "parse_suite": "lean.bench.suite"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lean.bench' has no attribute '{name}'")
