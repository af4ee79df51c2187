"""lean.bench.quality: the classifier's figures, labels matched by name or by index.

    python -m pytest tests/test_bench_quality.py -q
"""

from __future__ import annotations

import numpy as np

from lean.bench.quality import classification_quality, label_mapping
from lean.data import Split, Task


class FakeBackend:
    truncates = True

    def __init__(self, label_names, predictions):
        self.label_names, self.predictions = label_names, predictions

    def logits(self, texts, max_length, batch_size):
        out = np.zeros((len(texts), 3))
        out[np.arange(len(texts)), self.predictions] = 1.0
        return out


def _task():
    split = Split(texts=["a", "b", "c", "d"], labels=[0, 1, 2, 2])
    return Task(name="t", kind="classification", label_names=["0", "1", "2"], split_seed=42, spec={},
                train=split, validation=split, test=split)


def test_names_that_are_the_task_labels_in_another_order_are_matched_by_name():
    assert label_mapping(["c", "a", "b"], ["a", "b", "c"]) == [2, 0, 1]
    assert label_mapping(["x", "y", "z"], ["a", "b", "c"]) is None and label_mapping([], ["a"]) is None


def test_a_model_with_its_own_label_names_is_reported_under_them():
    task = _task()
    quality = classification_quality(FakeBackend(["negative", "neutral", "positive"], [0, 1, 2, 0]), task, task.test,
                                     {"max_length": 16})
    assert quality["labels_matched_by"] == "index" and quality["accuracy"] == 0.75
    assert list(quality["per_class"]) == ["negative", "neutral", "positive"]
    assert quality["per_class"]["positive"]["task_label"] == "2" and quality["per_class"]["positive"]["support"] == 2
    assert quality["per_class"]["positive"]["recall"] == 0.5


def test_a_model_with_the_task_names_keeps_them():
    task = _task()
    quality = classification_quality(FakeBackend(["2", "0", "1"], [1, 2, 0, 0]), task, task.test, {"max_length": 16})
    assert quality["labels_matched_by"] == "name" and quality["accuracy"] == 1.0
    assert list(quality["per_class"]) == ["0", "1", "2"] and "task_label" not in quality["per_class"]["0"]
