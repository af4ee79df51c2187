"""Tasks: the built-in BBC split, local files, datasets directories, and every bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lean.data import load_task
from lean.errors import LeanError


def test_bbc_news_split_is_deterministic_stratified_and_complete():
    a = load_task("bbc-news", split_seed=42)
    b = load_task("bbc-news", split_seed=42)
    assert a.label_names == ["business", "entertainment", "politics", "sport", "tech"]
    assert (len(a.train), len(a.validation), len(a.test)) == (1557, 223, 445)
    assert a.test.texts == b.test.texts and a.test.labels == b.test.labels
    # every article lands in exactly one split
    all_texts = a.train.texts + a.validation.texts + a.test.texts
    assert len(all_texts) == 2225
    # stratified: each class's share of the test split is within one article of its share overall
    overall = Counter(a.train.labels + a.validation.labels + a.test.labels)
    test = Counter(a.test.labels)
    for label, n in overall.items():
        assert abs(test[label] - n * 0.2) <= 1.0
    c = load_task("bbc-news", split_seed=7)
    assert c.test.texts != a.test.texts


def test_csv_jsonl_parquet_give_the_same_task(tmp_path, bbc_csv):
    import pandas as pd

    frame = pd.read_csv(bbc_csv)
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "t.parquet")
    tasks = [load_task(str(p)) for p in (bbc_csv, tmp_path / "t.jsonl", tmp_path / "t.parquet")]
    for t in tasks:
        # the 100 articles hold one story printed twice: the copy is dropped and counted
        assert t.num_labels == 5 and len(t.train) + len(t.validation) + len(t.test) == 99
        assert t.describe()["dropped"] == {"missing": 0, "duplicates": 1, "conflicting": 0}
        assert t.test.texts == tasks[0].test.texts


def test_custom_columns(tmp_path, bbc_csv):
    import pandas as pd

    pd.read_csv(bbc_csv).rename(columns={"text": "body", "label": "topic"}).to_csv(tmp_path / "c.csv", index=False)
    task = load_task(str(tmp_path / "c.csv"), text_column="body", label_column="topic")
    assert task.label_names == ["business", "entertainment", "politics", "sport", "tech"]


def test_datasets_directory_keeps_its_splits(tmp_path):
    import datasets

    rows = {"text": [f"text number {i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=feats),
                               "test": datasets.Dataset.from_dict({k: v[:10] for k, v in rows.items()}, features=feats)})
    dd.save_to_disk(tmp_path / "ds")
    task = load_task(str(tmp_path / "ds"))
    assert task.label_names == ["neg", "pos"]
    assert len(task.test) == 10 and len(task.train) + len(task.validation) == 40


@pytest.mark.parametrize("spec, message", [
    ("no-such-task", "unknown task 'no-such-task'"),
    ("missing/file.csv", "does not exist"),
])
def test_bad_task_specs(spec, message):
    with pytest.raises(LeanError, match=message):
        load_task(spec)


def test_misspelled_column_lists_the_columns(bbc_csv):
    with pytest.raises(LeanError) as e:
        load_task(str(bbc_csv), text_column="txt")
    assert "no text column 'txt'" in str(e.value) and "text, label" in str(e.value)


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("text,label\n")
    with pytest.raises(LeanError, match="empty"):
        load_task(str(tmp_path / "e.csv"))
    (tmp_path / "z.csv").write_text("")
    with pytest.raises(LeanError, match="empty"):
        load_task(str(tmp_path / "z.csv"))


def test_single_class(tmp_path):
    (tmp_path / "one.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}", "label": "a"}) for i in range(20)))
    with pytest.raises(LeanError, match="single class"):
        load_task(str(tmp_path / "one.jsonl"))


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(LeanError, match="not a dataset"):
        load_task(str(tmp_path))
