"""Step modules that can be called as their step: `from lean import finetune; finetune(model, config, out)`.

`lean.finetune` is both a module and the function it defines. Once the module is imported, Python binds
the package attribute `lean.finetune` to the module, so `from lean import finetune` would hand back the
module and the README's `finetune(...)` would fail with "'module' object is not callable". Making the
module callable as its function keeps both spellings right, in any import order.
"""

from __future__ import annotations

import sys
import types


class _StepModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Let `module_name` (lean.finetune, lean.distill, lean.export) be called as its function of the same name."""
    sys.modules[module_name].__class__ = _StepModule
