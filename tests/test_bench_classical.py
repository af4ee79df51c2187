"""Tests for the tfidf-logreg kind (lean.bench.classical) and its fit in the runs cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lean.errors import LeanError


def test_tfidf_logreg_directory_holds_no_pickle_and_predicts_as_fitted(bbc_csv, tmp_path):
    import numpy as np

    from lean.bench.classical import (
        TfidfLogregConfig,
        build_tfidf_logreg,
        fit_tfidf_logreg,
        load_tfidf_logreg,
    )
    from lean.data import load_task
    from lean.models import builtin_model_path, load_tokenizer

    task = {"spec": str(bbc_csv), "text_column": None, "label_column": None, "split_seed": 7}
    out = build_tfidf_logreg(task, TfidfLogregConfig(ngram_max=1), tmp_path / "fit")
    assert sorted(f.name for f in out.iterdir()) == [".lean-output.json", "lean.json", "vocabulary.json",
                                                     "weights.safetensors"]  # the marker: lean wrote it
    assert not list(tmp_path.glob(".fit.tmp-*"))  # written through a temp dir, renamed into place
    pipeline, manifest = load_tfidf_logreg(out)
    assert manifest["step"] == "tfidf-logreg" and manifest["task"] == task and manifest["fit_s"] > 0
    loaded = load_task(str(bbc_csv), split_seed=7)
    fitted = fit_tfidf_logreg(loaded.train.texts, loaded.train.labels, TfidfLogregConfig(ngram_max=1))
    assert manifest["labels"] == loaded.label_names and manifest["train_size"] == len(loaded.train)
    assert np.array_equal(pipeline.predict_proba(loaded.test.texts), fitted.predict_proba(loaded.test.texts))
    assert np.array_equal(pipeline.predict(loaded.test.texts), fitted.predict(loaded.test.texts))
    # coef_ in the fitted one's memory layout: a row-major one made scipy copy it on every call
    coef = pipeline.named_steps["logreg"].coef_
    assert coef.flags.f_contiguous == fitted.named_steps["logreg"].coef_.flags.f_contiguous and coef.flags.f_contiguous

    # its latency texts are cut where the transformers' tokenizer cuts them, without importing torch
    script = f"""
import json, sys
from lean.bench.classical import ClassicalBackend
from lean.data import load_task
from lean.models import builtin_model_path
task = load_task({str(bbc_csv)!r}, split_seed=7)
backend = ClassicalBackend({str(out)!r}, {{"tokenizer_dir": str(builtin_model_path("minilm-l6"))}}, task)
backend.forward(backend.prepare(task.test.texts[:4], 16))
print(json.dumps({{"cut": backend.prepare(task.test.texts, 16), "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    child = json.loads(done.stdout)
    assert child["torch"] is False
    tok = load_tokenizer(str(builtin_model_path("minilm-l6")))
    enc = tok(list(loaded.test.texts), truncation=True, max_length=16, return_offsets_mapping=True)
    assert child["cut"] == [t[:max(end for _, end in o)] for t, o in zip(loaded.test.texts, enc["offset_mapping"])]

    (out / "weights.safetensors").unlink()  # a damaged directory: a one-line error saying what to do
    with pytest.raises(LeanError, match="not a fitted tfidf-logreg directory.*refit") as info:
        load_tfidf_logreg(out)
    assert "\n" not in str(info.value)


def test_a_failed_tfidf_logreg_fit_is_a_build_error_remembered_within_the_run(tmp_path):
    from lean.bench.chains import BuildError, Chains
    from lean.bench.kinds import KINDS

    chains = Chains(None, tmp_path / "cache", tmp_path / "logs", lambda text: None, 120)
    (tmp_path / "logs").mkdir()
    task = {"spec": str(tmp_path / "missing.csv"), "text_column": None, "label_column": None, "split_seed": 42}
    records: list = []
    with pytest.raises(BuildError) as info:
        chains.fitted(KINDS["tfidf-logreg"], task, "tfidf-logreg", records)
    assert info.value.status == "failed" and "tfidf-logreg failed" in info.value.error
    assert "missing.csv" in info.value.error and "\n" not in info.value.error
    assert records[0]["cached"] is False and not list((tmp_path / "cache").iterdir())  # nothing half-written
    with pytest.raises(BuildError, match="fitted for an earlier variant"):  # not fitted again in this run
        chains.fitted(KINDS["tfidf-logreg"], task, "tfidf-logreg-2", [])
    assert not (tmp_path / "logs" / "tfidf-logreg-2.tfidf-logreg.build.log").exists()
