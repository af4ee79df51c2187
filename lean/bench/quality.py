"""The quality scenario: accuracy and macro-F1 of a classifier, perplexity of a causal LM.

    quality = QUALITY[task.kind](backend, task, split, spec)

Child side of lean.bench. `split` is the task's split that measure.split names (test by default;
validation for choosing among variants, as `lean optimize` does), cut to measure.max_eval_samples.
"""

from __future__ import annotations

from typing import Any, Callable

from lean.bench.backends import Backend
from lean.bench.lm import lm_quality


def label_mapping(model_labels: list[str], task_labels: list[str]) -> list[int] | None:
    """Model output index -> task label index, when the model's label names are the task's (any order)."""
    if model_labels and sorted(model_labels) == sorted(task_labels):
        index = {name: i for i, name in enumerate(task_labels)}
        return [index[name] for name in model_labels]
    return None


def classification_quality(backend: Backend, task, split, spec: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class figures on the split."""
    from lean.metrics import classification_metrics

    max_length = int(spec["max_length"])
    logits = backend.logits(list(split.texts), max_length, int(spec.get("eval_batch_size", 32)))
    predicted = logits.argmax(-1).tolist()
    mapping = label_mapping(backend.label_names, task.label_names)
    predicted = [mapping[p] if mapping else p for p in predicted]
    quality = classification_metrics(split.labels, predicted, task.label_names)
    own = backend.label_names
    if not mapping and len(own) == len(task.label_names) and list(own) != list(task.label_names):
        # output i is the task's label i; the figures go under the model's own name for it (what lean predict
        # and lean serve print), with the task's name beside
        quality["per_class"] = {name: {**quality["per_class"][label], "task_label": label}
                                for name, label in zip(own, task.label_names)}
    quality.update({"max_length": max_length if backend.truncates else None, "split": spec.get("split", "test"),
                    "split_seed": task.split_seed, "labels_matched_by": "name" if mapping else "index"})
    return quality


# task kind -> quality function
QUALITY: dict[str, Callable[..., dict[str, Any]]] = {"classification": classification_quality, "lm": lm_quality}
