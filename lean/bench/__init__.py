"""lean bench: measure every variant's accuracy, latency and memory in one harness.

    from lean.bench import load_suite, run_bench, BenchOptions
    results = run_bench(load_suite("benchmarks/suites/default.yaml"), BenchOptions(output="runs/bench/x"))

suite.py (YAML schema), runner.py (chains, caching, subprocesses), measure.py (inside a variant's
subprocess), report.py (results.json, results.csv, report.md, pareto.png), classical.py (tfidf-logreg).
"""

from lean.bench.runner import BenchOptions, run_bench
from lean.bench.suite import DEFAULT_SUITE, Suite, Variant, directories_suite, load_suite, parse_suite

__all__ = ["BenchOptions", "run_bench", "DEFAULT_SUITE", "Suite", "Variant", "directories_suite", "load_suite",
           "parse_suite"]
