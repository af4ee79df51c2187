"""What the runtime's models share: their error, the input check, the softmax. Imports nothing of lean."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class OnnxModelError(ValueError):
    """An exported directory that cannot be used: the message says what was wrong and what to do."""


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise OnnxModelError("no input texts: pass at least one text")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise OnnxModelError(f"inputs must be strings, got {bad[0]}")
    return texts


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _first_line(e: BaseException) -> str:
    """lean.errors.first_line for the runtime, which imports nothing else of lean."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
