"""lean.runtime.tfidf: a fitted tfidf-logreg directory runs with numpy alone, as scikit-learn predicts it.

    python -m pytest tests/test_runtime_tfidf.py -q
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import bbc_rows, invoke


def _fit(tmp_path, rows, **config):
    from lean.bench.classical import TfidfLogregConfig, build_tfidf_logreg, load_tfidf_logreg

    task = tmp_path / "task.csv"
    with task.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = build_tfidf_logreg({"spec": str(task), "split_seed": 42}, TfidfLogregConfig(**config), tmp_path / "fit")
    pipeline, _ = load_tfidf_logreg(out)
    return out, pipeline


TEXTS = ["Shares rose after profits beat forecasts", "The striker scored twice in the cup final",
         "MPs voted on the new budget", "A new phone with a faster chip", "", "!!! ???", "Ünïcödé wörds and "
         "the film won an award at the festival", "shares SHARES Shares, shares"]


@pytest.mark.parametrize("config", [{}, {"ngram_max": 1, "sublinear_tf": False}, {"ngram_max": 3}])
def test_five_classes_match_the_fitted_pipeline(tmp_path, config):
    from lean.runtime import load

    out, pipeline = _fit(tmp_path, bbc_rows(12), **config)
    model = load(out)
    assert type(model).__name__ == "TfidfModel" and model.label_names == ["business", "entertainment", "politics",
                                                                          "sport", "tech"]
    texts = TEXTS + [r["text"] for r in bbc_rows(3)]
    expected = np.zeros((len(texts), 5))
    expected[:, pipeline.named_steps["logreg"].classes_] = pipeline.predict_proba(texts)
    np.testing.assert_allclose(model.probabilities(texts), expected, rtol=1e-9, atol=1e-12)
    predicted = model.predict(texts)
    assert [p["label"] for p in predicted] == [model.label_names[i] for i in expected.argmax(1)]


def test_two_classes_use_the_sigmoid(tmp_path):
    from lean.runtime import load

    rows = [r for r in bbc_rows(12) if r["label"] in ("sport", "tech")]
    out, pipeline = _fit(tmp_path, rows)
    model = load(out)
    np.testing.assert_allclose(model.probabilities(TEXTS), pipeline.predict_proba(TEXTS), rtol=1e-9, atol=1e-12)
    assert model.label_names == ["sport", "tech"]


def test_lean_predict_runs_it_without_scikit_learn_or_torch(tmp_path):
    out, _ = _fit(tmp_path, bbc_rows(12))
    result = invoke("predict", str(out), "The striker scored twice in the cup final")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert sorted(row["scores"]) == ["business", "entertainment", "politics", "sport", "tech"]
    code = ("import sys; from lean.runtime import load; m = load(sys.argv[1]); m.predict(['a text']); "
            "print(sorted(k for k in ('sklearn', 'torch', 'scipy', 'transformers') if k in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_damaged_directories_are_one_line_errors(tmp_path):
    out, _ = _fit(tmp_path, bbc_rows(6))
    (out / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    result = invoke("predict", str(out), "text")
    assert result.returncode == 2 and "weights" in result.stderr and "Traceback" not in result.stderr
    (out / "lean.json").write_text(json.dumps({"step": "finetune"}))
    result = invoke("predict", str(out), "text")
    assert result.returncode == 2 and "not a tfidf-logreg directory" in result.stderr


def test_lean_serve_answers_as_lean_predict_and_triton_refuses_it(tmp_path):
    pytest.importorskip("fastapi", reason="lean serve needs the serve extra: pip install 'lean[serve]'")
    import asyncio

    from test_serve import _assert_same_predictions, app_for, running

    from lean.errors import LeanError
    from lean.serve.triton import write_triton_repository

    out, _ = _fit(tmp_path, bbc_rows(12))
    texts = TEXTS[:4] + ["", "Rates rose."]
    cli = invoke("predict", str(out), *texts)
    expected = [json.loads(line) for line in cli.stdout.splitlines()]

    async def main():
        async with running(app_for(out, max_wait_ms=20)) as client:
            singles = await asyncio.gather(*[client.post("/v1/models/bert/predict", json={"texts": [t]})
                                             for t in texts])
            return [r.json()["predictions"][0] for r in singles]

    _assert_same_predictions(asyncio.run(main()), expected)
    with pytest.raises(LeanError, match="not ONNX"):
        write_triton_repository(out, tmp_path / "repo")
