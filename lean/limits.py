"""Sizes lean refuses before any work, each defined once: values past these can only end in the OOM killer.

Each limit is generous for real use (the largest models and batches people run fit well inside) and far
below what would allocate the machine's whole memory. A value past one is a one-line LeanError that names
the limit, e.g. "batch size 100000000 is above the limit of 65536".

    from lean.limits import MAX_BATCH_SIZE, check_limit
    check_limit("measure.batch_sizes: batch size", 100_000_000, MAX_BATCH_SIZE)
"""

from __future__ import annotations

from lean.errors import LeanError

MAX_BATCH_SIZE = 65_536  # texts in one forward pass; serving and benchmarks use at most a few thousand
MAX_SEQ_LENGTH = 131_072  # tokens per text to run at (2**17, the longest context of common LLMs)
MAX_POSITIONS = 16_777_216  # positions a config.json may declare (2**24: long-context configs declare 10**7)
MAX_NUM_LABELS = 1_000_000  # classes of a classifier head (extreme multi-label sets reach about 10**6)
MAX_VOCAB_SIZE = 16_777_216  # rows of an embedding matrix (2**24; real vocabularies stay under 10**6)
MAX_WIDTH = 131_072  # hidden, intermediate and head sizes of a config (the widest LLMs use about 5 * 10**4)
MAX_LAYERS = 4_096  # layers and attention heads of a config
MAX_NGRAM = 16  # word n-gram length of a TF-IDF model (3 or 4 is already long): each text makes O(len * n) terms


def check_limit(what: str, value: int, limit: int, hint: str = "") -> int:
    """`value` when at most `limit`; else LeanError "<what> <value> is above the limit of <limit>[: hint]"."""
    if value > limit:
        raise LeanError(f"{what} {value} is above the limit of {limit}" + (f": {hint}" if hint else ""))
    return value
