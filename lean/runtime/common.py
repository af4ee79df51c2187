"""What the runtime's models share: their error, the input check, the softmax. Imports nothing of lean."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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


def read_json_object(file, what: str = "re-run lean export to write it again") -> dict:
    """A JSON file holding an object ({} when the file is absent); anything else is one OnnxModelError naming it."""
    import json

    file = Path(file)
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise OnnxModelError(f"cannot read '{file}': {_first_line(e)}: {what}") from None
    if not isinstance(value, dict):
        raise OnnxModelError(f"'{file}' holds a JSON {type(value).__name__}, not an object: {what}")
    return value


def positive_int_field(values: dict, key: str, file, required: bool = False) -> int | None:
    """values[key] as a whole number >= 1 (None when absent and not required); a string, a bool, a
    fraction, zero or a negative number is one OnnxModelError naming the file and the key."""
    value = values.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OnnxModelError(f"'{file}': \"{key}\" must be a whole number of at least 1, got {value!r}: "
                             "re-run lean export to write it again")
    return value


def _positions(path: Path, config: dict[str, Any]) -> int | None:
    """The positions config.json gives the model (None when it names none)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = positive_int_field(config, key, path / "config.json")
        if value is not None:
            return value
    return None


def _model_max_length(path: Path, config: dict[str, Any]) -> int:
    """The longest input the model takes: tokenizer_config's model_max_length when set, else its positions."""
    limit = read_json_object(path / "tokenizer_config.json").get("model_max_length")
    positions = _positions(path, config) or 512
    if isinstance(limit, (int, float)) and 0 < limit < 1_000_000:
        return int(min(limit, positions))
    return int(positions)


def _special_ids(path: Path, tokenizer, config: dict[str, Any]) -> tuple[int, int | None]:
    """(pad id, eos id): pad falls back to eos then 0, as lean's loaders do for checkpoints without one."""
    special = {**read_json_object(path / "tokenizer_config.json"), **read_json_object(path / "special_tokens_map.json")}

    def token_id(name: str) -> int | None:
        token = special.get(name)
        if isinstance(token, dict):
            token = token.get("content")
        return tokenizer.token_to_id(token) if isinstance(token, str) else None

    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    eos = eos if eos is not None else token_id("eos_token")
    pad = token_id("pad_token")
    if pad is None:
        pad = config.get("pad_token_id")
    if pad is None:
        pad = eos if eos is not None else 0
    for name, value in (("pad_token_id", pad), ("eos_token_id", eos)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise OnnxModelError(f"'{path / 'config.json'}': \"{name}\" must be a token id (a whole number of at "
                                 f"least 0), got {value!r}: re-run lean export to write it again")
    return pad, eos
