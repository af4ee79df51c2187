"""The exporters `lean export` can use, as a table: name -> where its stages live and what it needs.

Each backend module has the same four functions, so adding an exporter is one entry and one module:

    check(model_type, kind, config)              raise LeanError (before weights load) for what it cannot export
    export_fp32(model, kind, config, example, out) write out/model.onnx (+ config.json) from the loaded model
    optimize(onnx_dir, config, model_type, out)  graph fusions (and the fp16 cast)
    quantize(onnx_dir, config, calibration_feed, out) -> dict   int8, returning the settings used

optimum-onnx knows every architecture it has an ONNX config for, causal LMs with KV cache included,
but pins transformers 4.x; torch.onnx (the dynamo exporter) with onnxruntime's own optimizer and
quantizer needs nothing beyond torch, onnxscript and onnxruntime, and works on transformers 5.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from lean.errors import LeanError


@dataclass(frozen=True)
class Exporter:
    name: str
    module: str  # the backend module with check / export_fp32 / optimize / quantize
    requires: tuple[str, ...]  # importable modules it needs
    packages: tuple[str, ...]  # distributions whose versions the manifest records
    install: str  # what to run when it is missing

    def available(self) -> bool:
        try:
            return all(importlib.util.find_spec(m) is not None for m in self.requires)
        except ModuleNotFoundError:  # find_spec("a.b") imports "a", which may be missing
            return False

    def backend(self):
        return importlib.import_module(self.module)

    def versions(self) -> dict[str, str]:
        import importlib.metadata as md

        out = {}
        for name in self.packages:
            try:
                out[name] = md.version(name)
            except md.PackageNotFoundError:
                pass
        return out

    def describe(self) -> dict:
        return {"name": self.name, "versions": self.versions()}


EXPORTERS: dict[str, Exporter] = {
    "optimum": Exporter("optimum", "lean.export.optimum_exporter", ("optimum.exporters.onnx", "optimum.onnxruntime"),
                        ("optimum-onnx", "optimum", "transformers", "torch", "onnx", "onnxruntime", "onnxruntime-gpu"),
                        'pip install "lean[optimum]"'),
    "torch": Exporter("torch", "lean.export.torch_exporter", ("onnxscript", "onnxruntime.quantization"),
                      ("torch", "onnxscript", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu"),
                      "pip install onnxscript"),
}


def choose_exporter(name: str) -> Exporter:
    """The exporter to use: 'auto' is optimum where installed, else torch; a missing one is a one-line error."""
    if name == "auto":
        name = "optimum" if EXPORTERS["optimum"].available() else "torch"
    if name not in EXPORTERS:
        raise LeanError(f"unknown exporter '{name}': choose auto, {', '.join(EXPORTERS)}")
    exporter = EXPORTERS[name]
    if not exporter.available():
        raise LeanError(f"the {name} exporter is not installed here: {exporter.install}, or pass "
                        f"--exporter {'torch' if name == 'optimum' else 'optimum'}")
    return exporter
