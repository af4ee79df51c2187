"""Inputs of a measurement: the task a spec names, and real test texts cut to a latency cell's length.

    task = load_spec_task({"spec": "bbc-news", "split_seed": 42})
    batches, how = latency_texts(texts, token_lengths(texts, model_dir), batch_size=32, seq_length=128, n_batches=8)

Child side of lean.bench. Token counts come from the directory's tokenizer.json through the
tokenizers library alone: transformers would import torch, which an ONNX or a linear row never pays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lean.errors import LeanError


def load_spec_task(t: dict[str, Any]):
    """The task a spec names: {spec, text_column, label_column, split_seed}."""
    from lean.data import load_task

    return load_task(t["spec"], t.get("text_column"), t.get("label_column"), int(t.get("split_seed", 42)))


def fast_tokenizer(tokenizer_dir: str | None):
    """The directory's tokenizer.json with the tokenizers library alone (no transformers, so no torch),
    neither truncating nor padding; None without one."""
    if not tokenizer_dir or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_lengths(texts: list[str], tokenizer_dir: str | None) -> list[int] | None:
    """Token counts (with special tokens) of every text, from the directory's tokenizer.json."""
    tok = fast_tokenizer(tokenizer_dir)
    return None if tok is None else [len(e.ids) for e in tok.encode_batch(texts)]


def latency_texts(texts: list[str], lengths: list[int] | None, batch_size: int, seq_length: int,
                  n_batches: int) -> tuple[list[list[str]], dict[str, Any]]:
    """Real test texts for `n_batches` batches of `batch_size`, taken (in test-split order, cycling) from
    the texts at least `seq_length` tokens long, so truncation alone makes every row exactly that long."""
    pool = list(range(len(texts))) if lengths is None else [i for i, n in enumerate(lengths) if n >= seq_length]
    how = "truncated to the length; texts at least that long"
    if not pool:  # no text is long enough: pad (recorded, so the reader knows part of the work is padding)
        pool, how = list(range(len(texts))), "padded to the length (no test text is that long)"
    elif lengths is None:
        how = "truncated or padded to the length (token counts unknown)"
    batches = [[texts[pool[(j * batch_size + k) % len(pool)]] for k in range(batch_size)] for j in range(n_batches)]
    return batches, {"how": how, "pool": len(pool), "of": len(texts), "distinct_batches": n_batches}


FIX_MANIFEST = "restore or delete it (an entry of the runs cache is rebuilt once its directory is deleted)"


def read_manifest_checked(path: str | Path) -> dict[str, Any]:
    """A directory's lean.json ({} without one); LeanError when it is unreadable or not an object."""
    from lean.models import read_manifest

    try:
        manifest = read_manifest(path)
    except LeanError as e:  # lean.models names the damage; a cache entry can also just be deleted
        raise LeanError(f"{e} (an entry of the runs cache is rebuilt once its directory is deleted)") from None
    except (ValueError, OSError) as e:  # truncated, not UTF-8, unreadable
        raise LeanError(f"'{Path(path) / 'lean.json'}' is unreadable ({type(e).__name__}): {FIX_MANIFEST}") from None
    if not isinstance(manifest, dict):
        raise LeanError(f"'{Path(path) / 'lean.json'}' is not a JSON object: {FIX_MANIFEST}")
    return manifest
