"""Deploy-time inference of a fitted tfidf-logreg directory with numpy alone (no scikit-learn, no torch).

    from lean.runtime import load
    model = load("runs/optimize-bbc/best")        # a tfidf-logreg directory: a TfidfModel
    model.predict(["Shares rose after profits beat forecasts"])

`lean bench` fits TF-IDF + logistic regression into a directory (lean.bench.classical): vocabulary.json
(term -> column), weights.safetensors (idf, coef, intercept, classes) and lean.json (its config and
label names). When that is the fastest model within an accuracy budget, `lean optimize` hands it over as
`best/`, so `lean predict` and `lean serve` run it here with scikit-learn's own arithmetic: lowercase,
tokens of two or more word characters, word n-grams, sublinear tf, idf, L2 norm, then the linear model's
softmax (sigmoid for two classes). tests/test_runtime_tfidf.py holds it equal to the fitted pipeline.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lean.runtime.common import OnnxModelError, _check_texts, _softmax, positive_int_field, read_json_object

VOCABULARY, WEIGHTS, MANIFEST = "vocabulary.json", "weights.safetensors", "lean.json"
STEP = "tfidf-logreg"
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
REFIT = "fit it again with lean bench (or lean optimize)"
_DTYPES = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32}


def is_tfidf_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / VOCABULARY).is_file() and (path / WEIGHTS).is_file()


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    raw = file.read_bytes()
    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + size].decode("utf-8"))
        arrays = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            data = raw[8 + size + start:8 + size + end]
            arrays[name] = np.frombuffer(data, dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"]).copy()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise OnnxModelError(f"cannot read '{file}': not a tfidf-logreg weights file ({type(e).__name__}); "
                             "fit it again with lean bench") from None
    return arrays


def _checked_arrays(arrays: dict[str, np.ndarray], file: Path) -> tuple[np.ndarray, ...]:
    """(idf, coef, intercept, classes) as float64 / int64, with shapes that agree: (F,), (C, F), (C,), (K,)
    where C is 1 (two classes) or K; anything else is one OnnxModelError naming the file."""
    try:
        idf, coef = arrays["idf"].astype(np.float64), arrays["coef"].astype(np.float64)
        intercept, classes = arrays["intercept"].astype(np.float64), arrays["classes"].astype(np.int64)
    except KeyError as e:
        raise OnnxModelError(f"'{file}' has no {e.args[0]} array: {REFIT}") from None
    ok = (idf.ndim == 1 and coef.ndim == 2 and intercept.ndim == 1 and classes.ndim == 1 and classes.size >= 2
          and coef.shape[1] == idf.size and coef.shape[0] in (1, classes.size) and intercept.size == coef.shape[0]
          and classes.min() >= 0)
    if not ok:
        raise OnnxModelError(f"'{file}' holds arrays of shapes that do not fit together (idf {idf.shape}, coef "
                             f"{coef.shape}, intercept {intercept.shape}, classes {classes.shape}): {REFIT}")
    return idf, coef, intercept, classes


def _checked_vocabulary(vocabulary: dict, features: int, file: Path) -> dict[str, int]:
    """term -> column, every column a whole number inside the weights' `features` columns."""
    bad = next((t for t, c in vocabulary.items() if isinstance(c, bool) or not isinstance(c, int)
                or not 0 <= c < features), None)
    if bad is not None:
        raise OnnxModelError(f"'{file}': term {bad!r} maps to {vocabulary[bad]!r}, not a column of the "
                             f"{features} the weights hold: {REFIT}")
    return vocabulary


class TfidfModel:
    """A fitted TF-IDF + logistic regression classifier; predict() answers as OnnxModel.predict does."""

    kind = "classification"
    tokenizer = None  # it reads whole texts: nothing to tokenize, truncate or pad (lean serve calls predict)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = read_json_object(self.path / MANIFEST, REFIT)
        vocabulary = read_json_object(self.path / VOCABULARY, REFIT)
        if self.manifest.get("step") != STEP:
            raise OnnxModelError(f"'{path}' is not a tfidf-logreg directory lean wrote (its lean.json names no "
                                 f"'{STEP}' step)")
        config = self.manifest.get("config") or {}
        if not isinstance(config, dict):
            raise OnnxModelError(f"'{self.path / MANIFEST}': \"config\" must be an object: {REFIT}")
        arrays = read_safetensors(self.path / WEIGHTS)
        self.idf, self.coef, self.intercept, self.classes = _checked_arrays(arrays, self.path / WEIGHTS)
        self.vocabulary: dict[str, int] = _checked_vocabulary(vocabulary, len(self.idf), self.path / VOCABULARY)
        # the vocabulary holds every n-gram the model knows: longer ones are never looked up, whatever
        # ngram_max says (a damaged 10**9 would otherwise make O(tokens**2) terms per text)
        longest = max((term.count(" ") + 1 for term in self.vocabulary), default=1)
        self.ngram_max = min(positive_int_field(config, "ngram_max", self.path / MANIFEST) or 2, longest)
        self.sublinear_tf = bool(config.get("sublinear_tf", True))
        labels = self.manifest.get("labels")
        labels = [str(n) for n in labels] if isinstance(labels, list) else [str(i) for i in range(len(self.classes))]
        if int(self.classes.max()) >= len(labels):
            raise OnnxModelError(f"'{self.path / MANIFEST}': \"labels\" must name each of the "
                                 f"{int(self.classes.max()) + 1} classes the weights hold: {REFIT}")
        self.label_names = labels
        self.max_length = None  # whole texts: a linear model has no token limit

    def __repr__(self) -> str:
        return f"TfidfModel({str(self.path)!r}, features={len(self.vocabulary)}, labels={len(self.label_names)})"

    def _terms(self, text: str) -> list[str]:
        """scikit-learn's word analyzer: lowercase, tokens, then every n-gram up to ngram_max."""
        tokens = TOKEN.findall(text.lower())
        terms = list(tokens)
        for n in range(2, min(self.ngram_max, len(tokens)) + 1):
            terms += [" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        return terms

    def features(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per text, (columns, tf-idf values) of its nonzero features, L2-normalised."""
        out = []
        for text in texts:
            counts: dict[int, int] = {}
            for term in self._terms(text):
                column = self.vocabulary.get(term)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            columns = np.fromiter(counts, dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            values = (1.0 + np.log(tf) if self.sublinear_tf else tf) * self.idf[columns]
            norm = math.sqrt(float(values @ values))
            out.append((columns, values / norm if norm > 0 else values))
        return out

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(N, labels) class probabilities; a label absent from the training split gets 0."""
        texts = _check_texts(texts)
        scores = np.stack([self.coef[:, c] @ v for c, v in self.features(texts)]) + self.intercept
        if self.coef.shape[0] == 1:  # two classes: one decision function, the sigmoid of it
            p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            fitted = np.stack([1.0 - p, p], axis=1)
        else:
            fitted = _softmax(scores)
        out = np.zeros((len(texts), len(self.label_names)))
        out[:, self.classes] = fitted
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None) -> list[dict[str, Any]]:
        """Labels with their scores, one dict per text, in input order (batch_size and max_length: unused)."""
        if batch_size < 1:
            raise OnnxModelError(f"batch size must be at least 1, got {batch_size}")
        names = self.label_names
        return [{"label": names[int(p.argmax())], "score": float(p.max()),
                 "scores": {names[i]: float(v) for i, v in enumerate(p)}} for p in self.probabilities(texts)]
