"""The classical yardstick for IMDB: TF-IDF of words and bigrams + logistic regression."""

from __future__ import annotations

import numpy as np


def make_tfidf_logreg(*, ngram_max: int = 2, c: float = 1.0, seed: int = 0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, ngram_max), min_df=2, sublinear_tf=True,
                        token_pattern=r"(?u)\b\w\w+\b", lowercase=True),
        LogisticRegression(C=c, max_iter=2000, random_state=seed))


def binary_metrics(prob: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score
    return {"accuracy": float(np.mean((prob > 0.5) == labels)),
            "auc": float(roc_auc_score(labels, prob)),
            "loss": float(log_loss(labels, np.clip(prob, 1e-7, 1 - 1e-7)))}
