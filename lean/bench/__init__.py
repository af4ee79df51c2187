"""lean bench: measure every variant's accuracy, latency and memory in one harness.

    from lean.bench import load_suite, run_bench, BenchOptions
    results = run_bench(load_suite("benchmarks/suites/default.yaml"), BenchOptions(output="runs/bench/x"))

The harness in layers, every import pointing down (docs/bench.md has the map):
- bottom, importing nothing else of lean.bench: stats (quantiles, intervals, quiet rounds, Pareto),
  results (typed results.json, its schema version), protocol (the parent/child lines);
- child side, in the measuring and building subprocesses: backends, kinds (the variant kinds, one
  registration each), classical, inputs, memory, scenarios (quality, latency, lm), worker, build;
- readers of finished runs: figures, report, markdown, plot, terminal, report_lm, compare, history;
- parent side: suite, options, launcher, progress, chains, outcome, scheduler, plan, variant, runner.
Names are resolved lazily, so `python -m lean.bench.worker` runs its module once (not also as an
import of this package), and `import lean.bench` costs nothing.
"""

from importlib import import_module

_EXPORTS = {"BenchOptions": "lean.bench.runner", "run_bench": "lean.bench.runner",
            "DEFAULT_SUITE": "lean.bench.suite", "Suite": "lean.bench.suite", "Variant": "lean.bench.suite",
            "directories_suite": "lean.bench.suite", "load_suite": "lean.bench.suite",
            "parse_suite": "lean.bench.suite"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lean.bench' has no attribute '{name}'")
