"""bitsandbytes: importing it quietly, its CPU kernel choice, and marking a model for transformers.

lean quantizes layer by layer itself, then marks the model as transformers marks a bitsandbytes
model it loaded (`hf_quantizer`, `quantization_config`), so `save_pretrained` writes a directory
that plain `from_pretrained` loads, on transformers 4.57 and 5.x alike.
"""

from __future__ import annotations

import logging

from lean.errors import LeanError


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes`; every other record passes."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _drop(logger_name: str, *prefixes: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessages) and f.prefixes == prefixes for f in logger.filters):
        logger.addFilter(_DropMessages(*prefixes))


def silence_known_notices() -> None:
    """Drop two known-harmless bitsandbytes log lines, and nothing else from it.

    - At import, on CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional faster 4-bit kernel
      from the Hub package `kernels` and logs "Failed to load CPU gemm_4bit_forward" when it cannot;
      lean keeps the generic kernel anyway (use_generic_bnb_cpu_kernel), so the line only alarms.
    - On every int8 forward it logs that fp32 inputs are cast to fp16; that cast is LLM.int8() itself.
    The filters sit on the loggers by name, so they work whether or not bitsandbytes is imported yet.
    """
    _drop("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")
    _drop("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast")


def import_bitsandbytes():
    """bitsandbytes, imported with its known notices silenced, or a LeanError saying how to install it."""
    silence_known_notices()
    try:
        import bitsandbytes
    except ImportError:
        raise LeanError("bitsandbytes methods need the package bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes


def use_generic_bnb_cpu_kernel(model) -> int:
    """Keep bitsandbytes' 4-bit layers on its generic CPU kernel. On CPUs with AVX512-BF16, bitsandbytes
    0.50 repacks a layer's weights for a faster kernel at its first forward; that repacking fails on
    layers whose in_features is no multiple of the block size ("shape '[N, 0]' is invalid"), stores the
    block scales in bf16, so a saved and reloaded model no longer gives the same logits, and makes the
    same directory compute differently from one CPU to another. Returns how many layers were switched."""
    switched = 0
    for module in model.modules() if hasattr(model, "modules") else [model]:
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def bitsandbytes_config(config, skipped: list[str]):
    """transformers' BitsAndBytesConfig for a lean method config (the same class on 4.57 and 5.x)."""
    import torch
    from transformers import BitsAndBytesConfig

    # The skip list holds full names of the layers left in full precision, so the loader rebuilds exactly our layers.
    if config.method == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=config.threshold, llm_int8_skip_modules=list(skipped))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type, bnb_4bit_use_double_quant=config.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype), llm_int8_skip_modules=list(skipped))


def attach_bnb_quantizer(model, config, skipped: list[str]) -> None:
    """Mark the model as transformers marks a bitsandbytes model it loaded, so save_pretrained writes a loadable dir."""
    from transformers.quantizers.auto import AutoHfQuantizer
    from transformers.utils.quantization_config import QuantizationMethod

    qc = bitsandbytes_config(config, skipped)
    quantizer = AutoHfQuantizer.from_config(qc, pre_quantized=True)
    quantizer.modules_to_not_convert = list(skipped)
    model.hf_quantizer = quantizer
    model.config.quantization_config = qc
    model.quantization_method = QuantizationMethod.BITS_AND_BYTES
    eight = config.method == "bnb-int8"
    # 4.57 reads these flags in save_pretrained and to(); 5.x reads hf_quantizer, and the flags do no harm there
    model.is_loaded_in_8bit, model.is_loaded_in_4bit = eight, not eight
    model.is_8bit_serializable, model.is_4bit_serializable = eight, not eight
