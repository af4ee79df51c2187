"""The classical reference row: TF-IDF features + logistic regression (scikit-learn).

A user deserves to know when a linear model is as good as a transformer: on topic classification
of news it often comes close at a thousandth of the latency. The harness fits it on the task's train
split once (seconds on a CPU) into `RUNS_DIR/tfidf-logreg-<hash>` (the hash covers the config and the
task), like any step's directory, and measures it like any other variant: its measuring subprocess
loads the fitted model, so its memory is what serving it takes, not what fitting it took.

    build_tfidf_logreg({"spec": "bbc-news", "split_seed": 42}, TfidfLogregConfig(), "runs/cache/tfidf-x")
    pipeline, manifest = load_tfidf_logreg("runs/cache/tfidf-x")

The directory holds no pickle: vocabulary.json (term -> column), weights.safetensors (idf, the
logistic regression's coef, intercept and classes) and lean.json (config, task, fit time); loading
rebuilds the scikit-learn pipeline from them. `ClassicalBackend` measures it in the measuring
subprocess; lean.bench.kinds registers the two as the variant kind "tfidf-logreg".
Child side of lean.bench. Tests: tests/test_bench_classical.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from lean.bench.backends import Backend
from lean.bench.inputs import fast_tokenizer, load_spec_task
from lean.errors import LeanError
from lean.limits import MAX_NGRAM, MAX_VOCAB_SIZE, check_limit

STEP = "tfidf-logreg"  # the name in lean.json and in a row's chain
VOCABULARY, WEIGHTS = "vocabulary.json", "weights.safetensors"


@dataclass
class TfidfLogregConfig:
    # Word unigrams and bigrams with sublinear tf: the usual strong baseline for topic classification.
    ngram_max: int = 2
    max_features: int | None = 100_000
    min_df: int = 1
    sublinear_tf: bool = True
    C: float = 10.0  # weak regularisation: tf-idf vectors are L2-normalised, so small C underfits
    max_iter: int = 1000
    seed: int = 42

    def __post_init__(self):
        from lean import checks

        checks.positive_int("tfidf-logreg ngram_max", self.ngram_max)
        check_limit("tfidf-logreg ngram_max", self.ngram_max, MAX_NGRAM, "word n-grams of 1 to 3 are usual")
        checks.optional_positive_int("tfidf-logreg max_features", self.max_features, MAX_VOCAB_SIZE)
        checks.positive_int("tfidf-logreg min_df", self.min_df)
        checks.positive_int("tfidf-logreg max_iter", self.max_iter, 1_000_000)
        checks.seed("tfidf-logreg seed", self.seed)
        checks.finite_positive("tfidf-logreg C", self.C)
        if not isinstance(self.sublinear_tf, bool):
            raise LeanError(f"tfidf-logreg sublinear_tf must be true or false, got {self.sublinear_tf!r}")


def _pipeline(config: TfidfLogregConfig):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("tfidf", TfidfVectorizer(ngram_range=(1, config.ngram_max), max_features=config.max_features,
                                  min_df=config.min_df, sublinear_tf=config.sublinear_tf)),
        ("logreg", LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=config.seed)),
    ])


def fit_tfidf_logreg(texts: Sequence[str], labels: Sequence[int], config: TfidfLogregConfig | None = None):
    """A fitted sklearn Pipeline(tfidf, logreg) with predict, predict_proba and predict_log_proba."""
    return _pipeline(config or TfidfLogregConfig()).fit(list(texts), list(labels))


def save_tfidf_logreg(pipeline, out: str | os.PathLike) -> None:
    """Write a fitted pipeline's vocabulary and arrays into `out` (no manifest; see build_tfidf_logreg)."""
    import numpy as np
    from safetensors.numpy import save_file

    tfidf, logreg = pipeline.named_steps["tfidf"], pipeline.named_steps["logreg"]
    vocabulary = {term: int(column) for term, column in tfidf.vocabulary_.items()}
    Path(out, VOCABULARY).write_text(json.dumps(vocabulary, ensure_ascii=False))
    save_file({"idf": np.ascontiguousarray(tfidf.idf_), "coef": np.ascontiguousarray(logreg.coef_),
               "intercept": np.ascontiguousarray(logreg.intercept_),
               "classes": np.ascontiguousarray(logreg.classes_, dtype=np.int64)}, str(Path(out, WEIGHTS)))


def load_tfidf_logreg(path: str | os.PathLike):
    """(pipeline, manifest) from a directory build_tfidf_logreg wrote; predicts as the fitted one did."""
    import numpy as np

    from lean.models import MANIFEST, read_manifest
    from lean.runtime import OnnxModelError, TfidfModel

    manifest = read_manifest(path)
    if manifest.get("step") != STEP or not Path(path, WEIGHTS).is_file() or not Path(path, VOCABULARY).is_file():
        raise LeanError(f"'{path}' is not a fitted tfidf-logreg directory (lean.json, {VOCABULARY} and {WEIGHTS}): "
                        "delete it and run again to refit")
    try:
        fitted = TfidfModel(path)  # every file read and checked: shapes that agree, columns inside the weights
    except OnnxModelError as e:
        raise LeanError(str(e)) from None
    known = {f.name for f in dataclasses.fields(TfidfLogregConfig)}
    unknown = sorted(set(manifest.get("config") or {}) - known)
    if unknown:
        raise LeanError(f"'{Path(path, MANIFEST)}': config key '{unknown[0]}' is not a tfidf-logreg setting "
                        f"({', '.join(sorted(known))}): delete the directory and run again to refit")
    pipeline = _pipeline(TfidfLogregConfig(**(manifest.get("config") or {})))
    tfidf, logreg = pipeline.named_steps["tfidf"], pipeline.named_steps["logreg"]
    tfidf.vocabulary_, tfidf.idf_ = fitted.vocabulary, fitted.idf
    # column-major, as lbfgs leaves coef_ (a transposed view): scipy's sparse product then reads coef_.T
    # in place; a row-major coef_ is copied on every call (0.3 ms a batch-1 call, which takes 0.7 ms)
    logreg.coef_ = np.asfortranarray(fitted.coef)
    logreg.intercept_, logreg.classes_ = fitted.intercept, fitted.classes
    logreg.n_features_in_ = fitted.coef.shape[1]
    return pipeline, manifest


def build_tfidf_logreg(task: dict[str, Any], config: TfidfLogregConfig, out: str | os.PathLike) -> Path:
    """Fit on the train split of `task` (a measuring spec's task: spec, text_column, label_column,
    split_seed) and write the directory atomically (a temp dir renamed into place)."""
    import lean
    from lean.models import environment, write_manifest
    from lean.steps import atomic_dir

    out = Path(out)
    loaded = load_spec_task(task)
    with atomic_dir(out) as tmp:
        start = time.perf_counter()
        pipeline = fit_tfidf_logreg(loaded.train.texts, loaded.train.labels, config)
        fit_s = round(time.perf_counter() - start, 3)
        save_tfidf_logreg(pipeline, tmp)
        write_manifest(tmp, {"lean_version": lean.__version__, "step": STEP, "config": asdict(config), "task": task,
                             "labels": list(loaded.label_names), "train_size": len(loaded.train),
                             "features": int(pipeline.named_steps["logreg"].coef_.shape[1]), "fit_s": fit_s,
                             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "environment": environment()})
    return out


def parameter_count(pipeline) -> int:
    """Learned numbers: the logistic regression's weights and biases plus the idf vector."""
    logreg, tfidf = pipeline.named_steps["logreg"], pipeline.named_steps["tfidf"]
    return int(logreg.coef_.size + logreg.intercept_.size + tfidf.idf_.size)


class ClassicalBackend(Backend):
    """tfidf-logreg: the pipeline the harness fitted on the train split, timed on the same truncated texts
    as the transformers."""

    preload = ("sklearn.feature_extraction.text", "sklearn.linear_model")
    truncates = False  # scored on whole texts: a linear model has no length limit

    def __init__(self, path: str, spec: dict[str, Any], task):
        self.path = path
        self.model, manifest = load_tfidf_logreg(path)
        self.fit_s = manifest.get("fit_s")
        self.label_names = list(task.label_names)
        if manifest.get("labels") not in (None, self.label_names):
            raise ValueError(f"'{path}' was fitted on labels {manifest['labels']}, the task has {self.label_names}")
        # latency texts are cut at the token counts the transformers see, with the tokenizers library
        # alone (transformers would import torch: seconds and hundreds of MB that serving a linear model never pays)
        self.tokenizer = fast_tokenizer(spec.get("tokenizer_dir"))

    def logits(self, texts, max_length, batch_size):
        import numpy as np

        # full articles, in batches like the transformers (one call on a whole test split costs far more
        # memory at its peak). Columns follow classes_ (a class absent from a tiny train split has no
        # column), so place them by class index.
        out = np.full((len(texts), len(self.label_names)), -np.inf, dtype=np.float64)
        for start in range(0, len(texts), batch_size):
            out[start:start + batch_size, self.model.classes_] = \
                self.model.predict_log_proba(list(texts[start:start + batch_size]))
        return out

    def prepare(self, texts, seq_length):
        if self.tokenizer is None:
            return [" ".join(t.split()[:seq_length]) for t in texts]
        self.tokenizer.enable_truncation(max_length=seq_length)
        encodings = self.tokenizer.encode_batch(list(texts))
        return [t[:max((end for _, end in e.offsets), default=0)] for t, e in zip(texts, encodings)]

    def forward(self, inputs):
        self.model.predict_proba(inputs)

    def size(self):
        return {"params": parameter_count(self.model), "fit_s": self.fit_s,
                "weights_bytes": sum(Path(self.path, f).stat().st_size for f in (VOCABULARY, WEIGHTS))}
