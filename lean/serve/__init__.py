"""`lean serve`: exported models over HTTP with dynamic batching, and Triton repositories for scale.

    from lean.serve import ServeConfig, build_app, serve, write_triton_repository
    serve(ServeConfig(models=["runs/student-int8"], max_batch_size=32, max_wait_ms=5))

Importing this package, or building the app, never imports torch or transformers: it runs on
lean.runtime (onnxruntime + tokenizers). Docs: docs/serve.md. Tests: tests/test_serve*.py.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ServeConfig": "lean.serve.config:ServeConfig",
    "ModelSpec": "lean.serve.config:ModelSpec",
    "build_app": "lean.serve.app:build_app",
    "serve": "lean.serve.server:serve",
    "write_triton_repository": "lean.serve.triton:write_triton_repository",
    "TritonConfig": "lean.serve.triton:TritonConfig",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lean.serve' has no attribute {name!r}")
