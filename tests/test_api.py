"""The public Python API as the README's quick start uses it.

    python -m pytest tests/test_api.py -q
"""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["finetune", "distill", "export"])
def test_step_names_are_callable_in_any_import_order(name, monkeypatch):
    """`from lean import finetune` after `import lean.finetune` (which binds the module to lean.finetune) still
    calls the step: the module is callable as its function, with the same arguments."""
    import lean
    import lean.steps

    module = importlib.import_module(f"lean.{name}")  # the submodule first, as the README's imports do
    from_package = getattr(lean, name)
    assert callable(from_package) and callable(module)
    calls = []
    monkeypatch.setattr(lean.steps, "run_step", lambda *args, **kwargs: calls.append((args, kwargs)) or "out")
    config_class = {"finetune": "FinetuneConfig", "distill": "DistillConfig", "export": "ExportConfig"}[name]
    config = getattr(lean, config_class)(**({"student_layers": 1} if name == "distill" else {}))
    assert from_package("some-model", config, "some-dir") == "out"
    (step, source, given, output), kwargs = calls[0]
    assert (step, source, given, output, kwargs) == (name, "some-model", config, "some-dir", {"overwrite": False})


def test_readme_quick_start_names_import():
    from lean import DistillConfig, ExportConfig, FinetuneConfig, distill, export, finetune  # noqa: F401
    from lean.bench import BenchOptions, load_suite, run_bench  # noqa: F401
    import lean.quantize as q

    assert all(callable(f) for f in (finetune, distill, export, run_bench, load_suite, q.quantize_dir,
                                     q.config_from_dict))
