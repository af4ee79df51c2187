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

from lean.runtime.common import OnnxModelError, _check_texts, _softmax

VOCABULARY, WEIGHTS, MANIFEST = "vocabulary.json", "weights.safetensors", "lean.json"
STEP = "tfidf-logreg"
TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern
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
    except (ValueError, KeyError, TypeError) as e:
        raise OnnxModelError(f"cannot read '{file}': not a tfidf-logreg weights file ({type(e).__name__}); "
                             "fit it again with lean bench") from None
    return arrays


class TfidfModel:
    """A fitted TF-IDF + logistic regression classifier; predict() answers as OnnxModel.predict does."""

    kind = "classification"
    tokenizer = None  # it reads whole texts: nothing to tokenize, truncate or pad (lean serve calls predict)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
            vocabulary = json.loads((self.path / VOCABULARY).read_text())
        except (OSError, ValueError) as e:
            raise OnnxModelError(f"cannot read '{path}': {e}") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("step") != STEP:
            raise OnnxModelError(f"'{path}' is not a tfidf-logreg directory lean wrote (its lean.json names no "
                                 f"'{STEP}' step)")
        config = self.manifest.get("config") or {}
        self.ngram_max = int(config.get("ngram_max", 2))
        self.sublinear_tf = bool(config.get("sublinear_tf", True))
        self.vocabulary: dict[str, int] = vocabulary
        arrays = read_safetensors(self.path / WEIGHTS)
        self.idf, self.coef = arrays["idf"].astype(np.float64), arrays["coef"].astype(np.float64)
        self.intercept, self.classes = arrays["intercept"].astype(np.float64), arrays["classes"].astype(np.int64)
        self.label_names = [str(n) for n in self.manifest.get("labels") or range(int(self.classes.max()) + 1)]
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
