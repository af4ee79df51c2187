"""The classical reference row: TF-IDF features + logistic regression (scikit-learn).

A user deserves to know when a linear model is as good as a transformer: on topic classification
of news it often comes close at a thousandth of the latency. The harness trains it on the task's
train split inside the variant's measuring subprocess (seconds on a CPU) and measures it like any
other variant; tests: tests/test_bench.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lean.errors import LeanError


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
        if self.ngram_max < 1:
            raise LeanError(f"tfidf-logreg ngram_max must be at least 1, got {self.ngram_max}")
        if self.C <= 0:
            raise LeanError(f"tfidf-logreg C must be positive, got {self.C}")


def fit_tfidf_logreg(texts: Sequence[str], labels: Sequence[int], config: TfidfLogregConfig | None = None):
    """A fitted sklearn Pipeline(tfidf, logreg) with predict, predict_proba and predict_log_proba."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    config = config or TfidfLogregConfig()
    pipeline = Pipeline([
        ("tfidf", TfidfVectorizer(ngram_range=(1, config.ngram_max), max_features=config.max_features,
                                  min_df=config.min_df, sublinear_tf=config.sublinear_tf)),
        ("logreg", LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=config.seed)),
    ])
    return pipeline.fit(list(texts), list(labels))


def parameter_count(pipeline) -> int:
    """Learned numbers: the logistic regression's weights and biases plus the idf vector."""
    logreg, tfidf = pipeline.named_steps["logreg"], pipeline.named_steps["tfidf"]
    return int(logreg.coef_.size + logreg.intercept_.size + tfidf.idf_.size)
