"""lean finetune: a short real run on tiny models, the manifest it writes, LoRA, and bad input at the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import invoke, run_cli

from lean.finetune import FinetuneConfig, finetune
from lean.errors import LeanError


@pytest.fixture(scope="module")
def finetuned(tiny_bert_dir, bbc_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "teacher"
    config = FinetuneConfig(task=str(bbc_csv), epochs=1, batch_size=8, max_length=32, lr=1e-3)
    return finetune(str(tiny_bert_dir), config, str(out))


def test_finetune_writes_a_loadable_directory_with_manifest(finetuned):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(finetuned)
    tok = AutoTokenizer.from_pretrained(finetuned)
    assert model.config.id2label[3] == "sport" and tok("hello")["input_ids"][0] == tok.cls_token_id
    m = json.loads((finetuned / "lean.json").read_text())
    assert m["step"] == "finetune" and m["config"]["epochs"] == 1
    assert m["task"]["split_seed"] == 42 and m["task"]["label_names"][0] == "business"
    for split in ("validation", "test"):
        metrics = m["metrics"][split]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics
        assert set(metrics["per_class"]["tech"]) >= {"precision", "recall"}
    assert m["metrics"]["test"]["n"] == 20
    env = m["environment"]
    assert env["versions"]["torch"] and env["device"] == "cpu" and "git_commit" in env
    assert m["wall_time_s"] > 0 and m["train"]["steps"] == 9  # ceil(70 train rows / batch 8)
    assert not (finetuned / "_checkpoints").exists()
    # no temp directory left beside the output
    assert [p.name for p in finetuned.parent.iterdir()] == ["teacher"]


def _keyword_task(path, per_class: int = 20):
    """Five classes, each text six filler words and six of its class's keywords: learnable by a tiny model."""
    import csv
    import random

    rng = random.Random(0)
    keywords = {"business": "shares profit market bank", "entertainment": "film music star award",
                "politics": "election minister vote party", "sport": "match goal team coach",
                "tech": "software chip phone internet"}
    filler = "the a of and to in is was for on with as by at from".split()
    rows = []
    for label, words in keywords.items():
        for _ in range(per_class):
            tokens = [rng.choice(filler) for _ in range(6)] + [rng.choice(words.split()) for _ in range(6)]
            rng.shuffle(tokens)
            rows.append({"text": " ".join(tokens), "label": label})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_finetune_learns(tiny_bert_dir, tmp_path):
    """Training must move a random model well above chance (0.2 on five balanced classes) on held-out texts."""
    import math

    task = _keyword_task(tmp_path / "keywords.csv")
    out = finetune(str(tiny_bert_dir), FinetuneConfig(task=str(task), epochs=12, batch_size=8, max_length=32, lr=3e-3),
                   str(tmp_path / "teacher"))
    m = json.loads((out / "lean.json").read_text())
    assert m["metrics"]["test"]["accuracy"] >= 0.8, m["metrics"]["test"]
    assert m["train"]["loss"] < 0.8 * math.log(5)  # the untrained loss is ln 5


def test_lora_merges_before_saving(tiny_bert_dir, bbc_csv, tmp_path):
    import subprocess
    import sys

    out = finetune(str(tiny_bert_dir), FinetuneConfig(task=str(bbc_csv), epochs=1, batch_size=16, max_length=32,
                                                      lora=True, max_eval_samples=8), str(tmp_path / "lora"))
    # loads with plain transformers, no peft, no adapter files, and the weights moved from the base
    code = ("import sys, torch; from transformers import AutoModelForSequenceClassification as A; "
            f"m = A.from_pretrained(r'{out}'); b = A.from_pretrained(r'{tiny_bert_dir}'); "
            "d = (m.bert.encoder.layer[0].attention.self.query.weight - b.bert.encoder.layer[0].attention.self.query.weight).abs().max(); "
            "print(float(d), 'peft' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    diff, peft_loaded = res.stdout.split()
    assert float(diff) > 0 and peft_loaded == "False"
    assert not list(out.glob("adapter_*"))


@pytest.mark.parametrize("field, value", [("epochs", 0), ("lr", -1.0), ("batch_size", 0), ("max_length", 2)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(LeanError, match=field.replace("_", "-")):
        FinetuneConfig(**{field: value})


def _assert_clean_failure(res, out, message):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_cli_bad_inputs(tmp_path, tiny_bert_dir, bbc_csv):
    out = tmp_path / "out"
    cases = [
        ((str(tmp_path / "missing-model"), "--task", str(bbc_csv)), "does not exist"),
        ((str(tmp_path), "--task", str(bbc_csv)), "not a model directory"),
        ((str(tiny_bert_dir), "--task", "no-such-task"), "unknown task"),
        ((str(tiny_bert_dir), "--task", str(tmp_path / "missing.csv")), "does not exist"),
        ((str(tiny_bert_dir), "--task", str(bbc_csv), "--label-column", "lable"), "columns are: text, label"),
    ]
    for args, message in cases:
        _assert_clean_failure(invoke("finetune", *args, "-o", str(out)), out, message)
    (tmp_path / "empty.csv").write_text("text,label\n")
    _assert_clean_failure(invoke("finetune", str(tiny_bert_dir), "--task", str(tmp_path / "empty.csv"), "-o", str(out)), out, "empty")
    (tmp_path / "one.csv").write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(20)))
    _assert_clean_failure(invoke("finetune", str(tiny_bert_dir), "--task", str(tmp_path / "one.csv"), "-o", str(out)), out, "single class")


def test_cli_refuses_a_non_empty_output_unless_overwrite(tmp_path, tiny_bert_dir, bbc_csv):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = invoke("finetune", str(tiny_bert_dir), "--task", str(bbc_csv), "-o", str(out))
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_help_lists_every_verb():
    res = run_cli("--help")
    assert res.returncode == 0
    for verb in ("finetune", "distill", "quantize", "export", "predict", "bench"):
        assert verb in res.stdout
