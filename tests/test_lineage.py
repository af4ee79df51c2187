"""What a step inherits from its parent (lean.lineage): the rule, the manifest record, and a real chain.

The chain test fine-tunes a tiny BERT with split seed 7 on a small task file given by a relative
path, then distills and exports it from another working directory with no task options: both must
find the file and use split seed 7 and the teacher's max length.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lean.errors import LeanError
from lean.lineage import inherit, resolve_task_spec
from lean.models import write_manifest


def _parent(path: Path, task: dict | None = None, config: dict | None = None, **top) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_manifest(path, {"step": "finetune", "task": task or {}, "config": config or {}, **top})
    return path


def test_parent_values_are_inherited_and_say_so(tmp_path, bbc_csv):
    parent = _parent(tmp_path / "teacher", {"spec": str(bbc_csv), "split_seed": 7, "text_column": "body",
                                            "label_column": "topic", "kind": "classification"}, {"max_length": 48})
    got = inherit(parent, {"task": None, "split_seed": None, "max_length": None})
    assert (got.task, got.split_seed, got.text_column, got.label_column, got.max_length, got.kind) == \
        (str(bbc_csv), 7, "body", "topic", 48, "classification")
    assert set(got.sources.values()) == {"parent"}
    assert got.record()["split_seed"] == {"value": 7, "from": "parent"}


def test_an_option_wins_and_the_rest_still_comes_from_the_parent(tmp_path, bbc_csv):
    parent = _parent(tmp_path / "teacher", {"spec": str(bbc_csv), "split_seed": 7, "text_column": "body"},
                     {"max_length": 48})
    got = inherit(parent, {"split_seed": 3, "max_length": 16})
    assert (got.split_seed, got.max_length, got.text_column) == (3, 16, "body")
    assert got.sources == {"task": "parent", "split_seed": "option", "text_column": "parent", "label_column": "parent",
                           "max_length": "option", "kind": "default"}
    # naming the parent's own task again is still the parent's task: its split seed and columns follow
    same = inherit(parent, {"task": str(bbc_csv)})
    assert (same.split_seed, same.text_column, same.sources["task"]) == (7, "body", "option")


def test_another_task_does_not_take_the_parents_split_or_columns(tmp_path, bbc_csv):
    parent = _parent(tmp_path / "teacher", {"spec": str(bbc_csv), "split_seed": 7, "text_column": "body"},
                     {"max_length": 48})
    got = inherit(parent, {"task": "bbc-news"})
    assert (got.task, got.split_seed, got.text_column, got.max_length) == ("bbc-news", 42, None, 48)
    assert got.sources["split_seed"] == "default" and got.sources["max_length"] == "parent"


def test_no_manifest_no_task_and_step_defaults(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    got = inherit(plain, {})
    assert got.task is None and got.split_seed == 42 and got.max_length == 128
    assert set(got.sources.values()) == {"default"}
    with pytest.raises(LeanError, match="no task was given"):
        got.load_task()
    assert inherit(plain, {}, defaults={"task": "bbc-news"}).task == "bbc-news"  # finetune's default
    assert inherit(None, {}).task is None  # a Hub id or a from-scratch model: no parent directory


def test_export_manifest_max_length_and_a_recorded_inheritance_are_read(tmp_path):
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    write_manifest(onnx, {"step": "export", "max_length": 40, "task": {"spec": "bbc-news", "split_seed": 5}})
    got = inherit(onnx, {})
    assert (got.max_length, got.split_seed, got.task) == (40, 5, "bbc-news")
    quantized = tmp_path / "q"
    quantized.mkdir()
    # a step whose config left max_length to its parent records what it used under "inherited"
    write_manifest(quantized, {"step": "quantize", "config": {"max_length": None},
                               "task": {"spec": "bbc-news", "split_seed": 5},
                               "inherited": {"max_length": {"value": 24, "from": "parent"}}})
    assert inherit(quantized, {}).max_length == 24


def test_relative_task_paths_work_from_another_directory(tmp_path, bbc_csv, monkeypatch):
    from lean.data import load_task

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "t.csv").write_bytes(bbc_csv.read_bytes())
    monkeypatch.chdir(project)
    task = load_task("data/t.csv")
    assert task.describe()["spec"] == str(project / "data" / "t.csv")  # recorded absolute
    # an older manifest with a path relative to the directory it lives beside
    parent = _parent(project / "teacher", {"spec": "../data/t.csv", "split_seed": 7})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    got = inherit(project / "teacher", {})
    assert Path(got.task) == (project / "data" / "t.csv").resolve() and got.load_task().split_seed == 7
    assert resolve_task_spec("bbc-news") == "bbc-news" and resolve_task_spec("user/dataset") == "user/dataset"
    assert parent.is_dir()


def test_unknown_field_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="lineage fields"):
        inherit(tmp_path, {"seed": 1})


# ---- a real chain ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed7_teacher(tiny_bert_dir, bbc_csv, tmp_path_factory):
    """A tiny BERT fine-tuned on a task file given relative to its working directory, split seed 7."""
    import os

    from lean.finetune import FinetuneConfig, finetune

    project = tmp_path_factory.mktemp("project")
    (project / "data").mkdir()
    (project / "data" / "small.csv").write_bytes(bbc_csv.read_bytes())
    cwd = os.getcwd()
    os.chdir(project)
    try:
        config = FinetuneConfig(task="data/small.csv", split_seed=7, epochs=1, batch_size=8, max_length=24, lr=1e-3)
        return finetune(str(tiny_bert_dir), config, str(project / "teacher")).resolve()
    finally:
        os.chdir(cwd)


def _manifest(path) -> dict:
    return json.loads((Path(path) / "lean.json").read_text())


def test_student_of_a_seed_7_teacher_records_and_uses_seed_7(seed7_teacher, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lean.data import load_task
    from lean.distill import DistillConfig, distill
    from lean.metrics import predict_logits

    teacher = _manifest(seed7_teacher)
    assert teacher["task"]["split_seed"] == 7 and teacher["inherited"]["split_seed"]["from"] == "option"
    assert teacher["inherited"]["task"]["from"] == "option" and Path(teacher["task"]["spec"]).is_absolute()
    monkeypatch.chdir(tmp_path)  # the task file's relative path means nothing from here
    out = distill(str(seed7_teacher), DistillConfig(student_layers=1, epochs=1, batch_size=8, max_train_samples=16,
                                                    checkpoint_dir=str(tmp_path / "ckpt")), str(tmp_path / "student"))
    student = _manifest(out)
    assert student["task"]["split_seed"] == 7 and student["task"]["spec"] == teacher["task"]["spec"]
    assert student["inherited"]["split_seed"] == {"value": 7, "from": "parent"}
    assert student["inherited"]["max_length"] == {"value": 24, "from": "parent"}
    assert student["config"]["split_seed"] is None  # the options as given; "inherited" holds what was used
    # same task, seed and length as the teacher: its recorded test metrics are comparable and reused
    assert student["teacher"]["metrics_source"] == "manifest"
    # the recorded test accuracy is the student's on the seed-7 test split, recomputed here
    task = load_task(teacher["task"]["spec"], split_seed=7)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        pred = predict_logits(model, AutoTokenizer.from_pretrained(out), task.test.texts, 24).argmax(-1).tolist()
    accuracy = sum(p == y for p, y in zip(pred, task.test.labels)) / len(pred)
    assert student["metrics"]["test"]["accuracy"] == pytest.approx(accuracy)
    assert set(task.test.texts) != set(load_task(teacher["task"]["spec"], split_seed=42).test.texts)


def test_export_of_a_seed_7_teacher_validates_on_its_split(seed7_teacher, tmp_path, monkeypatch):
    from lean.export import ExportConfig, export

    monkeypatch.chdir(tmp_path)
    out = export(str(seed7_teacher), ExportConfig(), str(tmp_path / "onnx"))
    m = _manifest(out)
    assert m["task"]["split_seed"] == 7 and m["inherited"]["split_seed"]["from"] == "parent"
    assert m["max_length"] == 24 and m["inherited"]["max_length"] == {"value": 24, "from": "parent"}
    # an explicit option still wins
    out = export(str(seed7_teacher), ExportConfig(split_seed=3), str(tmp_path / "onnx3"))
    assert _manifest(out)["task"]["split_seed"] == 3
    assert _manifest(out)["inherited"]["split_seed"] == {"value": 3, "from": "option"}
