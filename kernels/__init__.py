"""Triton kernels, each with its plain-PyTorch reference. Installed as `lean.kernels`.

Python started in a source checkout's root puts that root on sys.path, where this folder can be found as
a bare `kernels`: the name of a Hugging Face package that transformers 5 requires and imports. Imported
under that name, this file hands the import over to the installed package, or fails as if the folder
were not there, so it never shadows anything.
"""

if __name__.startswith("lean."):
    from .flash_attention import attention_reference, flash_attention

    __all__ = ["attention_reference", "flash_attention"]
else:
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    def _elsewhere(name: str):
        """The spec of `name` from anywhere but this checkout's root (None when it is installed nowhere else)."""
        here = _os.path.dirname(_os.path.abspath(__file__))
        root = _os.path.dirname(here)
        path = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != root]
        for finder in _sys.meta_path:
            if finder is _machinery.PathFinder or isinstance(finder, _machinery.PathFinder):
                spec = _machinery.PathFinder.find_spec(name, path)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, None)
            else:
                continue
            if spec is not None and not (spec.origin or "").startswith(here + _os.sep):
                return spec
        return None

    _spec = _elsewhere(__name__)
    if _spec is None:
        raise ModuleNotFoundError(f"No module named {__name__!r}", name=__name__)
    _module = _util.module_from_spec(_spec)
    _sys.modules[__name__] = _module  # the import system returns what sys.modules holds once this file ran
    _spec.loader.exec_module(_module)
