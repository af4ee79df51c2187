"""The few places where transformers 4.57 and 5.x differ in what lean touches, in one module.

Everything here imports transformers lazily, so importing lean.compat costs nothing.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def transformers_major() -> int:
    """4 or 5 (0 when transformers is not installed)."""
    try:
        from importlib.metadata import version

        return int(version("transformers").split(".")[0])
    except Exception:
        return 0


def mask_query_span(kwargs: dict):
    """(q_len, position of the first query) from the keyword arguments transformers hands a mask function
    of its AttentionMaskInterface, or None when they say neither.

    4.57 passes `cache_position` (the queries' absolute positions); 5.x passes `q_length` and
    `q_offset` instead.
    """
    if "q_length" in kwargs:
        try:
            return int(kwargs["q_length"]), int(kwargs.get("q_offset", 0) or 0)
        except (TypeError, ValueError):
            return None
    cache_position = kwargs.get("cache_position")
    if cache_position is None or cache_position.dim() != 1:
        return None
    q_len = int(cache_position.shape[0])
    if q_len == 0:
        return None
    first, last = int(cache_position[0]), int(cache_position[-1])
    if last - first != q_len - 1:  # not one contiguous run of positions
        return None
    return q_len, first


def dtype_kwarg(dtype) -> dict:
    """`from_pretrained` keyword for a torch dtype: `dtype` in 5.x, `torch_dtype` in 4.57 (which 5.x
    still reads, with a deprecation warning)."""
    return {"dtype": dtype} if transformers_major() >= 5 else {"torch_dtype": dtype}


def warmup_kwargs(ratio: float) -> dict:
    """TrainingArguments keywords for a learning-rate warmup over `ratio` of the steps. 5.x dropped
    `warmup_ratio` and reads a `warmup_steps` below 1 as that ratio; 4.57 has both."""
    if transformers_major() >= 5:
        if not 0 <= ratio < 1:
            from lean.errors import LeanError

            raise LeanError(f"warmup_ratio must be a fraction of the training steps in [0, 1), got {ratio}")
        return {"warmup_steps": float(ratio)}
    return {"warmup_ratio": ratio}


def no_init_weights():
    """The context manager that skips random weight initialisation while a model is built (its home moved
    from transformers.modeling_utils to transformers.initialization in 5.x)."""
    try:
        from transformers.initialization import no_init_weights as context
    except ImportError:
        from transformers.modeling_utils import no_init_weights as context
    return context()


def safetensors_checkpoint_kwargs() -> dict:
    """TrainingArguments keywords for checkpoints in safetensors: 5.x always writes them and dropped the
    `save_safetensors` switch that 4.57 needs."""
    return {} if transformers_major() >= 5 else {"save_safetensors": True}


def quiet_library_progress_bars() -> None:
    """Keep transformers' and huggingface_hub's progress bars off stderr, which holds lean's own lines (and
    its one-line errors). transformers 5 draws one for every model it loads or saves. Both libraries read
    the environment switch when imported; where they already are, they are told directly."""
    import os
    import sys

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] in ("0", ""):
        return  # the user asked for the bars
    # Already imported (lean's CLI run inside a Python session): switch them off directly.
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
