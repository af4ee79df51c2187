"""Deploy-time inference: onnxruntime + tokenizers + numpy, no torch, no transformers.

    from lean.runtime import load
    model = load("runs/teacher-onnx")                 # CUDA when there is a GPU, else CPU
    model.predict(["Shares rose after the results."])
    # [{"label": "business", "score": 0.97, "scores": {"business": 0.97, ...}}]
    lm = load("runs/llama-onnx"); lm.generate(["The match"], max_new_tokens=20)

This package imports nothing else of lean (so it can be copied into a service on its own);
`lean predict` and `lean serve` are thin layers over it. Modules: onnx (exported ONNX directories),
openvino (directories of `lean export --runtime openvino`: openvino + tokenizers), tfidf (fitted
tfidf-logreg directories, numpy alone), common. Tests: tests/test_runtime*.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from lean.runtime.common import OnnxModelError
from lean.runtime.onnx import MODEL_FILE, OnnxModel, cuda_available, physical_cores
from lean.runtime.openvino import OpenVinoModel, is_openvino_dir
from lean.runtime.tfidf import TfidfModel, is_tfidf_dir

__all__ = ["MODEL_FILE", "OnnxModel", "OnnxModelError", "OpenVinoModel", "TfidfModel", "cuda_available",
           "is_openvino_dir", "is_tfidf_dir", "load", "physical_cores"]


def load(path: str | os.PathLike, provider: str | None = None, threads: int | None = None,
         session_config: dict[str, str] | None = None):
    """Load an exported directory (model.onnx + tokenizer.json + config.json); `session_config` holds
    onnxruntime session config entries (e.g. {"session.intra_op.allow_spinning": "0"}). A fitted
    tfidf-logreg directory (what `lean optimize` may choose) loads as lean.runtime.tfidf.TfidfModel, and an
    OpenVINO one (model.xml) as lean.runtime.openvino.OpenVinoModel on `provider` as an OpenVINO device
    (CPU for None or CPUExecutionProvider; onnxruntime's session_config does not apply to it)."""
    if not (Path(path) / MODEL_FILE).is_file() and is_tfidf_dir(path):
        return TfidfModel(path)
    if not (Path(path) / MODEL_FILE).is_file() and is_openvino_dir(path):
        return OpenVinoModel(path, provider=provider, threads=threads)
    return OnnxModel(path, provider=provider, threads=threads, session_config=session_config)
