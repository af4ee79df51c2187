"""lean optimize: search students, quantization and runtimes for the fastest model within an accuracy budget.

    from lean.optimize import optimize, OptimizeConfig, Budget, Target
    summary = optimize(OptimizeConfig(model="minilm-l6", task="bbc-news", output="runs/optimize-bbc",
                                      budget=Budget(max_drop=1.0), time_budget="30m"))

config.py (budget, target, objective), space.py (the search space YAML), strategy.py (the search over an
injected measure function), trials.py (the trial store), adapter.py (measuring through `lean bench`),
report.py (report.md, summary.json, pareto.png, best/), run.py (the whole run). docs/optimize.md.
"""

from importlib import import_module

_EXPORTS = {"optimize": "lean.optimize.run", "OptimizeConfig": "lean.optimize.config", "Budget": "lean.optimize.config",
            "Target": "lean.optimize.config", "load_space": "lean.optimize.space", "Search": "lean.optimize.strategy",
            "BenchMeasure": "lean.optimize.adapter"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lean.optimize' has no attribute '{name}'")
