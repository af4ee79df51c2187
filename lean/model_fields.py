"""The fields of a model directory's config.json and lean.json that lean reads, checked before any work.

A damaged or hand-edited file (a string where a number belongs, `hidden_size: 0`, `num_labels: 10**12`,
an `inherited` that is a list) is one LeanError naming the file and the key, never a traceback from
deep inside transformers or a step, and never an allocation that ends in the OOM killer. The sizes
come from lean.limits. A key that is absent or null keeps the library's default.

    check_config_fields(Path("runs/teacher/config.json"), json.loads(...))
    check_manifest_fields(Path("runs/teacher/lean.json"), json.loads(...))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lean.checks import SEED_MAX
from lean.errors import LeanError
from lean.limits import (MAX_LAYERS, MAX_NUM_LABELS, MAX_POSITIONS, MAX_SEQ_LENGTH, MAX_VOCAB_SIZE, MAX_WIDTH,
                         check_limit)

# config.json: whole-number keys of the families lean supports -> their limit (each at least 1)
CONFIG_INTS = {
    **dict.fromkeys(("vocab_size",), MAX_VOCAB_SIZE),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "hidden_dim", "intermediate_size",
                     "embedding_size"), MAX_WIDTH),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers", "num_attention_heads", "n_head",
                     "n_heads", "num_key_value_heads"), MAX_LAYERS),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx"), MAX_POSITIONS),
    "num_labels": MAX_NUM_LABELS,
}
CONFIG_COUNTS = {"type_vocab_size": MAX_VOCAB_SIZE}  # may be 0 (DeBERTa-v2 has no token types)
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")
CONFIG_FLOATS = ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps", "initializer_range", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "dropout", "attention_dropout", "rope_theta")
CONFIG_STRINGS = ("model_type", "hidden_act", "problem_type", "dtype", "torch_dtype")

TASK_STRINGS = ("spec", "name", "kind", "text_column", "label_column")
METRIC_NUMBERS = ("accuracy", "macro_f1", "perplexity", "loss", "tokens", "n", "agreement")
# lean.json "inherited": field -> the check its "value" takes (lean.lineage.FIELDS)
INHERITED = {"task": "string", "text_column": "string", "label_column": "string", "kind": "string",
             "split_seed": "seed", "max_length": "length"}


def _fail(file: Path, key: str, wanted: str, value: Any, fix: str) -> LeanError:
    shown = repr(value) if len(repr(value)) <= 60 else type(value).__name__
    return LeanError(f"{file}: \"{key}\" must be {wanted}, got {shown}: {fix}")


def _whole(file: Path, key: str, value: Any, low: int, limit: int | None, fix: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(file, key, f"a whole number of at least {low}", value, fix)
    if limit is not None:
        check_limit(f"{file}: \"{key}\"", value, limit, fix)


def check_config_fields(file: Path, config: dict[str, Any], fix: str = "restore the model's config.json") -> None:
    """The sizes, rates and names of a config.json: right types, in range, within lean.limits."""
    for key, limit in CONFIG_INTS.items():
        _whole(file, key, config.get(key), 1, limit, fix)
    for key, limit in CONFIG_COUNTS.items():
        _whole(file, key, config.get(key), 0, limit, fix)
    vocab = config.get("vocab_size")
    for key in TOKEN_IDS:  # an id names a row of the embeddings (eos may list several)
        for value in config[key] if isinstance(config.get(key), list) else [config.get(key)]:
            _whole(file, key, value, -1, vocab - 1 if isinstance(vocab, int) else None, fix)  # -1: none (old Llama)
    for key in CONFIG_FLOATS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise _fail(file, key, "a finite number of at least 0", value, fix)
    for key in CONFIG_STRINGS:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise _fail(file, key, "a string", config[key], fix)
    for key in ("id2label", "label2id"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _fail(file, key, "an object of label names", value, fix)
        check_limit(f"{file}: \"{key}\" with a label count of", len(value), MAX_NUM_LABELS, fix)
    id2label = config.get("id2label") or {}
    if any(not str(k).lstrip("-").isdigit() for k in id2label):
        raise _fail(file, "id2label", "an object keyed by label ids 0, 1, ...", next(iter(id2label)), fix)


def check_manifest_fields(file: Path, manifest: dict[str, Any]) -> None:
    """The keys of lean.json that steps, the harness and the search read: right types and in range."""
    fix = "restore it, or remake the directory with lean"
    for key in ("task", "config", "parent", "metrics", "environment", "inherited"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise LeanError(f"{file}: \"{key}\" must be a JSON object, got {type(manifest[key]).__name__}: {fix}")
    for key in ("step",):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise _fail(file, key, "a string", manifest[key], fix)
    _whole(file, "max_length", manifest.get("max_length"), 1, MAX_SEQ_LENGTH, fix)
    task, config = manifest.get("task") or {}, manifest.get("config") or {}
    for key in TASK_STRINGS:
        if task.get(key) is not None and not isinstance(task[key], str):
            raise LeanError(f"{file}: task \"{key}\" must be a string, got {type(task[key]).__name__}: {fix}")
    _whole(file, "task.split_seed", task.get("split_seed"), 0, SEED_MAX, fix)
    for key in ("label_names",):
        if task.get(key) is not None and not isinstance(task[key], list):
            raise _fail(file, f"task.{key}", "a list of names", task[key], fix)
    if manifest.get("labels") is not None and not isinstance(manifest["labels"], list):
        raise _fail(file, "labels", "a list of names", manifest["labels"], fix)
    for key in ("max_length", "perplexity_stride"):
        _whole(file, f"config.{key}", config.get(key), 1, MAX_SEQ_LENGTH, fix)
    _check_metrics(file, manifest.get("metrics") or {}, fix)
    _check_inherited(file, manifest.get("inherited") or {}, fix)


def _number(value: Any) -> bool:
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, float)))


def _check_metrics(file: Path, metrics: dict[str, Any], fix: str) -> None:
    """Split metrics ({"test": {"accuracy": ...}}) are objects of numbers; other entries are numbers."""
    for name, value in metrics.items():
        if isinstance(value, dict):
            for key in METRIC_NUMBERS:
                if not _number(value.get(key)):
                    raise _fail(file, f"metrics.{name}.{key}", "a number", value[key], fix)
        elif not _number(value):
            raise _fail(file, f"metrics.{name}", "a number or an object of metrics", value, fix)


def _check_inherited(file: Path, inherited: dict[str, Any], fix: str) -> None:
    """{"split_seed": {"value": 42, "from": "parent"}, ...}: each entry an object whose value fits its field."""
    for name, entry in inherited.items():
        if not isinstance(entry, dict):
            raise _fail(file, f"inherited.{name}", "an object with a \"value\"", entry, fix)
        value, key = entry.get("value"), f"inherited.{name}.value"
        check = INHERITED.get(name)
        if check == "string" and value is not None and not isinstance(value, str):
            raise _fail(file, key, "a string", value, fix)
        if check == "seed":
            _whole(file, key, value, 0, SEED_MAX, fix)
        if check == "length":
            _whole(file, key, value, 1, MAX_SEQ_LENGTH, fix)


# what a student built from the teacher's config must share with it: the head, the vocabulary, the special ids
SHARED_WITH_TEACHER = ("num_labels", "id2label", "label2id", "vocab_size", "pad_token_id", "bos_token_id",
                       "eos_token_id", "problem_type", "model_type", "architectures")


def check_student_overrides(teacher_config, overrides: dict[str, Any], max_length: int | None = None) -> None:
    """--student-config key=value pairs: keys the teacher's config has, values of its types and sizes within
    lean.limits, nothing the student must share with the teacher changed, positions for max_length tokens."""
    where = Path("--student-config")
    unknown = [k for k in overrides if not hasattr(teacher_config, k)]
    if unknown:
        raise LeanError(f"--student-config: {type(teacher_config).__name__} has no option {', '.join(unknown)} "
                        "(common ones: num_hidden_layers, hidden_size, num_attention_heads, intermediate_size)")
    for key in SHARED_WITH_TEACHER:
        if key in overrides and overrides[key] != getattr(teacher_config, key):
            raise LeanError(f"--student-config {key}={overrides[key]!r} differs from the teacher's "
                            f"{getattr(teacher_config, key)!r}: student and teacher must share one vocabulary and "
                            "one set of labels (the losses compare them token by token); remove the key")
    for key, value in overrides.items():
        current = getattr(teacher_config, key)
        if isinstance(current, str) and not isinstance(value, str):
            raise LeanError(f"--student-config {key} must be a string like the teacher's {current!r}, got {value!r}")
        if isinstance(current, (list, dict)) and not isinstance(value, type(current)):
            raise LeanError(f"--student-config {key} must be a {type(current).__name__} like the teacher's, "
                            f"got {value!r}")
    check_config_fields(where, overrides, "give a value like the teacher's")
    for key in ("max_position_embeddings", "n_positions"):
        if max_length is not None and isinstance(overrides.get(key), int) and overrides[key] < max_length:
            raise LeanError(f"--student-config {key}={overrides[key]} is below --max-length {max_length}: the "
                            f"student needs a position for every token; give at least {max_length}")
