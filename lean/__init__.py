"""lean: make transformer models smaller and faster, and prove it with numbers.

The public API, imported lazily so `import lean` (and `lean predict`) stays light:

    from lean import finetune, FinetuneConfig, distill, DistillConfig, quantize_, export, ExportConfig
    import lean.quantize; lean.quantize(model, lean.quantize.BnbNF4Config())   # the module is callable
    from lean import load_task, use_lean_attention, flash_attention

Every step is `step(model_dir, Config(...), output_dir) -> output_dir`, the same function the CLI calls.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "finetune": "lean.finetune:finetune",
    "FinetuneConfig": "lean.finetune:FinetuneConfig",
    "distill": "lean.distill:distill",
    "DistillConfig": "lean.distill:DistillConfig",
    "student_from_teacher_layers": "lean.distill:student_from_teacher_layers",
    "quantize_": "lean.quantize:quantize_",
    "load_quantized": "lean.quantize:load_quantized",
    "export": "lean.export:export",
    "ExportConfig": "lean.export:ExportConfig",
    "load_task": "lean.data:load_task",
    "load_model": "lean.models:load_model",
    "use_lean_attention": "lean.attention:use_lean_attention",
    "flash_attention": "lean.kernels:flash_attention",
    "LeanError": "lean.errors:LeanError",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # `lean.quantize` is left to the submodule (a callable module), never shadowed by a function
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lean' has no attribute {name!r}")
