"""ExportConfig: what `lean export` does, checked before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from lean.errors import LeanError

OPTIMIZE_LEVELS = ("O1", "O2", "O3", "O4")
QUANTIZE_METHODS = ("int8-dynamic", "int8-static", "int8-weights")  # int8-weights: --runtime openvino only
RUNTIMES = ("onnxruntime", "openvino")
EXPORTER_CHOICES = ("auto", "torch", "optimum")


@dataclass
class ExportConfig:
    task: str | None = None  # None: the task in the source's lean.json, else none (checked on lean.samples)
    text_column: str | None = None
    label_column: str | None = None
    # auto: optimum-onnx where it is installed (every architecture it knows), else torch.onnx (dynamo)
    exporter: str = "auto"
    opset: int | None = None  # None: the exporter's default for the architecture
    optimize: str | None = None  # O1..O4 (onnxruntime's transformer optimizer); O3 adds the tanh gelu approximation, O4 also fp16
    fp16: bool = False  # CUDA only: onnxruntime's CPU kernels are fp32 and int8
    quantize: str | None = None  # int8-dynamic | int8-static
    calibration_samples: int = 128  # train-split texts (or sample texts, without a task) for int8-static ranges
    # per-channel weight scales keep MiniLM-sized layers accurate at no latency cost
    per_channel: bool = True
    # None: 7-bit weights on CPUs without VNNI, where u8*s8 products can saturate (VPMADDUBSW);
    # full 8 bits where VNNI is there
    reduce_range: bool | None = None
    atol: float = 1e-4  # fp32 gate on max |logits(onnx) - logits(pytorch)|
    min_agreement: float = 0.98  # fp16/int8 gate: share of predictions equal to PyTorch's
    max_metric_drop: float = 1.0  # fp16/int8 gate: points of accuracy / macro-F1 below the source (with a task)
    max_perplexity_ratio: float = 1.05  # fp16/int8 gate for causal LMs: perplexity over PyTorch's
    max_length: int | None = None  # None: the source's training max_length, else 128
    device: str = "auto"  # where the ONNX model is validated: auto, cpu or cuda
    split_seed: int | None = None  # None: the source's split seed (lean.lineage), else 42
    max_eval_samples: int | None = None  # validate on the first N test texts only (quick runs, tests)
    trust_remote_code: bool = False
    # time the result against its plainer form (unfused, or int8-dynamic) after validation: seconds on a CPU,
    # and the only way to learn that a "more optimized" choice is slower on this machine
    latency_check: bool = True
    # what the directory runs on: onnxruntime (model.onnx) or openvino (model.xml + .bin, lean.export.openvino)
    runtime: str = "onnxruntime"

    def __post_init__(self):
        if self.exporter not in EXPORTER_CHOICES:
            raise LeanError(f"--exporter must be one of {', '.join(EXPORTER_CHOICES)}, got '{self.exporter}'")
        if self.optimize is not None:
            self.optimize = str(self.optimize).upper()
            if self.optimize not in OPTIMIZE_LEVELS:
                raise LeanError(f"--optimize must be one of {', '.join(OPTIMIZE_LEVELS)}, got '{self.optimize}'")
        if self.quantize is not None and self.quantize not in QUANTIZE_METHODS:
            raise LeanError(f"--quantize must be one of {', '.join(QUANTIZE_METHODS)}, got '{self.quantize}'")
        if self.runtime not in RUNTIMES:
            raise LeanError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{self.runtime}'")
        if self.quantize == "int8-weights" and self.runtime != "openvino":
            raise LeanError("--quantize int8-weights is NNCF's weight-only compression: add --runtime openvino")
        if self.runtime == "openvino":
            self._check_openvino()
        if self.optimize == "O4":
            self.fp16 = True
        if self.fp16 and self.quantize:
            raise LeanError("--fp16 (or --optimize O4) and --quantize do not combine: choose one precision")
        if self.optimize and self.quantize == "int8-static":
            raise LeanError("--optimize and --quantize int8-static do not combine (calibration cannot type the fused "
                            "graph); drop --optimize: onnxruntime fuses the quantized graph when it loads it")
        if self.calibration_samples < 1:
            raise LeanError(f"--calibration-samples must be at least 1, got {self.calibration_samples}")
        # the gates: finite and within what can still fail (a gate that passes anything checks nothing)
        if not 0 < self.atol <= 1e3:
            raise LeanError(f"--atol must be a positive number up to 1000, got {self.atol}")
        if not 0 <= self.min_agreement <= 1:
            raise LeanError(f"--min-agreement must be between 0 and 1, got {self.min_agreement}")
        if not 1 <= self.max_perplexity_ratio <= 100:
            raise LeanError(f"--max-perplexity-ratio must be between 1 and 100, got {self.max_perplexity_ratio}")
        if not 0 <= self.max_metric_drop <= 100:
            raise LeanError(f"--max-metric-drop must be between 0 and 100 points, got {self.max_metric_drop}")
        if self.max_length is not None and not 8 <= self.max_length <= 8192:
            raise LeanError(f"--max-length must be between 8 and 8192, got {self.max_length}")
        if self.opset is not None and not 11 <= self.opset <= 23:
            raise LeanError(f"--opset must be between 11 and 23, got {self.opset}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise LeanError(f"--max-eval-samples must be at least 1, got {self.max_eval_samples}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise LeanError(f"unknown device '{self.device}': use auto, cpu or cuda")

    def _check_openvino(self) -> None:
        """What --runtime openvino (lean.export.openvino) cannot take, refused before any model loads."""
        if self.optimize or self.fp16:
            raise LeanError("--optimize and --fp16 apply to onnxruntime: OpenVINO fuses the graph when it compiles "
                            "it; drop them with --runtime openvino")
        if self.quantize not in (None, "int8-static", "int8-weights"):
            raise LeanError(f"--quantize {self.quantize} is onnxruntime's; with --runtime openvino use int8-static "
                            "(NNCF post-training quantization, calibrated) or int8-weights (8-bit weight-only)")
        if self.device.startswith("cuda"):
            raise LeanError("--runtime openvino validates on the CPU: pass --device cpu (or auto)")

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else ("int8" if self.quantize else "fp32")
