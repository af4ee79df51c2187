"""ONNX export, validated against PyTorch: `lean export` and its Python API.

    lean export runs/teacher -o runs/teacher-onnx                      # fp32, must match to --atol
    lean export runs/teacher -o runs/teacher-int8 --quantize int8-dynamic
    lean export runs/teacher -o runs/teacher-O2 --optimize O2
    lean export my-classifier -o my-onnx --exporter torch               # torch.onnx (dynamo), no optimum
    lean export runs/tiny-llama -o runs/llama-onnx                      # causal LM with KV cache (optimum)

Stages: export (optimum-onnx where installed, else torch.onnx; see exporters.py) -> optional graph
fusions -> optional int8 -> validation through `lean.runtime`, the same code that serves the model.
An fp32 export must match PyTorch logits within `atol` and agree on every prediction; fp16 and int8
must agree on at least `min_agreement` of the predictions and, with a task, lose at most
`max_metric_drop` points of test accuracy and macro-F1; for a causal LM they must keep perplexity
within `max_perplexity_ratio` of PyTorch's. A failed gate raises, and run_step leaves nothing behind.
Modules: config, exporters (the table), optimum_exporter, torch_exporter, validate, step; openvino
(`--runtime openvino`: OpenVINO IR and NNCF int8, the same validation and gates).
Tests: tests/test_export.py, tests/test_export_torch.py.
"""

from lean.export.config import EXPORTER_CHOICES, OPTIMIZE_LEVELS, QUANTIZE_METHODS, ExportConfig
from lean.export.step import check_source, export, model_kind
from lean.export.step import run as _run_onnx
from lean.export.validate import gate as _gate  # noqa: F401  (kept importable from lean.export)

__all__ = ["EXPORTER_CHOICES", "OPTIMIZE_LEVELS", "QUANTIZE_METHODS", "ExportConfig", "check_source", "export",
           "model_kind", "run"]


def run(source: str, config: ExportConfig, out):
    """The export step (lean.steps runs it): ONNX (step.py), or OpenVINO IR with --runtime openvino (openvino.py)."""
    if config.runtime == "openvino":
        from lean.export.openvino import run as run_openvino

        return run_openvino(source, config, out)
    return _run_onnx(source, config, out)


from lean.callable_module import make_callable  # noqa: E402  (see lean/callable_module.py)

make_callable(__name__)
