"""Variant kinds: how a variant's directory is made and which backend measures it. One registration each.

    from lean.bench.kinds import KINDS, VariantKind, register_kind
    register_kind(VariantKind("tfidf-logreg", "TF-IDF + logistic regression", backend=ClassicalBackend,
                              fit=build_tfidf_logreg, config=TfidfLogregConfig))

"model" covers every model directory a chain of steps builds (PyTorch, bitsandbytes, ONNX: the backend
follows what the directory holds). A kind with `fit` takes no steps: the harness fits it on the task's
train split, once, into RUNS_DIR/<kind>-<hash of its config and the task>, in a build subprocess,
and measures it with its own backend. The suite schema, the build subprocess, the measuring
subprocess and `lean bench --list` all read this registry, so a new kind is this one call (and a
module with its backend and fit). Child side of lean.bench: the measuring subprocess imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lean.bench.backends import Backend, OnnxBackend, TorchBackend, model_backend
from lean.bench.classical import ClassicalBackend, TfidfLogregConfig, build_tfidf_logreg

MODEL = "model"


@dataclass(frozen=True)
class VariantKind:
    name: str
    description: str
    backend: type[Backend] | None = None  # None: the model directory decides (torch or onnx)
    fit: Callable[[dict[str, Any], Any, Path], Path] | None = None  # (task spec, config, out): fitted on the task
    config: Callable[..., Any] | None = None  # the fit's config dataclass, built from the options a build passes

    @property
    def takes_steps(self) -> bool:
        return self.fit is None


KINDS: dict[str, VariantKind] = {}
# backend name -> class; a measuring subprocess names its backend in its spec and preloads its modules
BACKENDS: dict[str, type[Backend]] = {"torch": TorchBackend, "onnx": OnnxBackend}


def register_kind(kind: VariantKind) -> VariantKind:
    KINDS[kind.name] = kind
    if kind.backend is not None:
        BACKENDS[kind.name] = kind.backend
    return kind


def backend_name(kind: str, model_dir: str | Path | None) -> str:
    """The backend that measures a built variant of `kind` in `model_dir`."""
    if KINDS[kind].backend is not None:
        return kind
    return model_backend(model_dir)


register_kind(VariantKind(MODEL, "a model directory built by the variant's steps (PyTorch, quantized or ONNX)"))
register_kind(VariantKind("tfidf-logreg", "TF-IDF features + logistic regression (scikit-learn), trained on the "
                          "task's train split", backend=ClassicalBackend, fit=build_tfidf_logreg,
                          config=TfidfLogregConfig))
