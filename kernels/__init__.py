"""Triton kernels, each with its plain-PyTorch reference. Installed as `lean.kernels`."""

from .flash_attention import attention_reference, flash_attention

__all__ = ["attention_reference", "flash_attention"]
