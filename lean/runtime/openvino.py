"""An exported OpenVINO directory (model.xml + model.bin + tokenizer.json + config.json): openvino + tokenizers.

    from lean.runtime import load
    model = load("runs/teacher-openvino-int8")        # an OpenVinoModel: `lean export --runtime openvino`
    model.predict(["Shares rose after the results."])

Classifiers only. The model compiles for the CPU with one stream (one request at a time, the threads
inside it), f32 inference precision unless told otherwise and no dynamic quantization of activations,
so nothing runs in bf16, fp16 or int8 silently where the CPU could: what is int8 is what NNCF made so. Encoding, batching and the label dicts are OnnxModel's: both runtimes
feed the same int64 (B, T) inputs. Tests: tests/test_openvino.py.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from lean.runtime.common import OnnxModelError, _first_line
from lean.runtime.onnx import OnnxModel, physical_cores

XML_FILE, BIN_FILE = "model.xml", "model.bin"
INSTALL = 'pip install "lean[openvino]"'
PRECISIONS = ("f32", "bf16", "f16")
# onnxruntime's provider names that mean "the CPU", so `lean serve` and `lean predict` defaults carry over
_CPU_ALIASES = (None, "CPU", "CPUExecutionProvider")


def is_openvino_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / XML_FILE).is_file()


class OpenVinoModel(OnnxModel):
    """An OpenVINO IR classifier with its tokenizer; `device` is an OpenVINO device name (CPU by default)."""

    def __init__(self, path: str | os.PathLike, provider: str | None = None, threads: int | None = None,
                 precision: str | None = None):

        self.path = Path(path)
        if not self.path.is_dir():
            raise OnnxModelError(f"'{path}' is not a directory: pass the directory written by lean export")
        if not (self.path / XML_FILE).is_file() or not (self.path / BIN_FILE).is_file():
            raise OnnxModelError(f"'{path}' has no {XML_FILE} and {BIN_FILE}: pass a directory written by "
                                 "lean export --runtime openvino")
        try:
            import openvino as ov
        except ImportError:
            raise OnnxModelError(f"'{path}' is an OpenVINO directory but openvino is not installed: {INSTALL}") from None
        self._read_records()
        if self.manifest.get("kind", "classification") != "classification":
            raise OnnxModelError(f"'{path}' is a {self.manifest['kind']} model: OpenVINO directories hold classifiers")
        self._read_tokenizer()

        core = ov.Core()
        self.provider = _device(provider, core.available_devices)
        self.threads = threads or physical_cores()
        self.precision = precision or "f32"
        if self.precision not in PRECISIONS:
            raise OnnxModelError(f"inference precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        self.compiled = _compile(core, self.path / XML_FILE, self.provider, {
            "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": self.precision,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            # 0: no run-time int8 quantization of activations in front of int8-compressed weights
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.output_names = [next(iter(o.get_names()), f"output_{n}") for n, o in enumerate(self.compiled.outputs)]
        self._logits = self.output_names.index("logits") if "logits" in self.output_names else 0
        self.kind = "classification"
        self._read_labels_and_lengths()

    def __repr__(self) -> str:
        return (f"OpenVinoModel({str(self.path)!r}, kind={self.kind!r}, device={self.provider!r}, "
                f"threads={self.threads}, precision={self.precision!r})")

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """(B, num_labels) float32 logits; the feed's extra inputs (token_type_ids for DistilBERT) are dropped."""
        inputs = {name: feed[name] for name in self.input_names}
        with self._lock:
            result = self.request.infer(inputs)
            # the request owns its output buffer and overwrites it on the next call: copy it out
            return np.array(result[self._logits], dtype=np.float32, copy=True)


def _device(provider: str | None, available: list[str]) -> str:
    """The OpenVINO device for `provider`: CPU for None and onnxruntime's CPU provider, else a device name."""
    if provider in _CPU_ALIASES:
        return "CPU"
    if provider.endswith("ExecutionProvider"):
        raise OnnxModelError(f"'{provider}' is an onnxruntime provider; an OpenVINO directory runs on an OpenVINO "
                             f"device: {', '.join(available)}")
    if provider.split(".")[0] not in available:
        raise OnnxModelError(f"OpenVINO device '{provider}' is not available here; available: {', '.join(available)}")
    return provider


def _compile(core, xml: Path, device: str, properties: dict):
    try:
        model = core.read_model(str(xml))
    except Exception as e:  # openvino raises RuntimeError subclasses with a C++ trace
        raise OnnxModelError(f"cannot load '{xml}': not a valid OpenVINO model ({_first_line(e)}); "
                             "re-run lean export --runtime openvino to write it again") from None
    try:
        return core.compile_model(model, device, properties)
    except Exception as e:
        raise OnnxModelError(f"cannot compile '{xml}' for {device}: {_first_line(e)}") from None
