"""Quantize a model to 8 or 4 bits: bitsandbytes LLM.int8() / NF4 / FP4, PyTorch dynamic int8.

    lean quantize runs/teacher --method bnb-nf4 -o runs/teacher-nf4
    python -m pytest tests/test_quantize*.py -q

Python, torchao style (in place, returns the model):

    import lean.quantize
    model = lean.quantize(model, lean.quantize.BnbNF4Config(double_quant=True))
    lean.quantize.quantize_(model, config, filter_fn=lambda module, name: "attention" in name)
    lean.quantize.save_quantized(model, "out")
    model = lean.quantize.load_quantized("out", device="cpu")

The package, every import pointing down:
    registry       METHODS (name -> config class), HANDLERS (config class -> handler)
    configs        one dataclass per method (with a version) and the step's config, each checking itself
    selection      which Linear/Conv1D layers: skip, the default task head, filter_fn(module, name)
    bnb            importing bitsandbytes quietly; marking a model for transformers' save/load
    handlers       one full-precision layer -> its quantized twin, per method
    core           quantize_, the in-place verb
    sizes          bytes of the whole model and of its linear layers
    serialization  save_quantized / load_quantized / saved_config (the config loads back as saved)
    analysis       per-layer SQNR and output error on real text
    step           the `lean quantize` step: calibration, the SQNR report, evaluation, the manifest
"""

from __future__ import annotations

import sys
import types

from lean.quantize.analysis import (calibration_batches, calibration_texts, layer_sqnr, output_error, sqnr_db,
                                    tensor_sqnr_db, worst_layers)
from lean.quantize.bnb import import_bitsandbytes, silence_known_notices, use_generic_bnb_cpu_kernel
from lean.quantize.configs import (BLOCKSIZES, COMPUTE_DTYPES, CONFIG_VERSION, Bnb4BitConfig, BnbFP4Config, BnbInt8Config,
                                   BnbNF4Config, DynamicInt8Config, QuantConfig, QuantizeStepConfig, check_device,
                                   config_from_dict, method_config_from_dict)
from lean.quantize.core import install_layers, model_device, quantize_, quantized_layers
from lean.quantize.registry import HANDLERS, METHODS, method_config_class, register_handler, register_method
from lean.quantize.selection import HEAD_NAMES, default_skip, linear_layers, matches, plan_layers
from lean.quantize.serialization import (DYNAMIC_WEIGHTS, QUANTIZATION_FILE, load_quantized, quantization_of,
                                         save_quantized, saved_config)
from lean.quantize.sizes import weight_bytes
from lean.quantize.step import check_source, model_kind, quantize_dir, run

quantize = quantize_  # `lean.quantize.quantize(model, config)` reads as well
silence_known_notices()  # by logger name, before anything imports bitsandbytes (transformers may, when it loads)

__all__ = [
    "BLOCKSIZES", "COMPUTE_DTYPES", "CONFIG_VERSION", "DYNAMIC_WEIGHTS", "HANDLERS", "HEAD_NAMES", "METHODS",
    "QUANTIZATION_FILE", "Bnb4BitConfig", "BnbFP4Config", "BnbInt8Config", "BnbNF4Config", "DynamicInt8Config",
    "QuantConfig", "QuantizeStepConfig", "calibration_batches", "calibration_texts", "check_device", "check_source",
    "config_from_dict", "default_skip", "import_bitsandbytes", "install_layers", "layer_sqnr", "linear_layers",
    "load_quantized", "matches", "method_config_class", "method_config_from_dict", "model_device", "model_kind",
    "output_error", "plan_layers", "quantization_of", "quantize", "quantize_", "quantize_dir", "quantized_layers",
    "register_handler", "register_method", "run", "save_quantized", "saved_config", "silence_known_notices",
    "sqnr_db", "tensor_sqnr_db", "use_generic_bnb_cpu_kernel", "weight_bytes", "worst_layers",
]


class _CallableModule(types.ModuleType):
    """`import lean.quantize; lean.quantize(model, config)` calls quantize_ (the package stays a module)."""

    def __call__(self, model, config, device: str | None = None, filter_fn=None):
        return quantize_(model, config, device, filter_fn)


sys.modules[__name__].__class__ = _CallableModule
