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
    from sklearn.metrics import log_loss

    from rnnlab.training.results import roc_auc  # the torch variants' AUC, so the columns agree
    return {"accuracy": float(np.mean((prob > 0.5) == labels)),
            "auc": roc_auc(np.asarray(labels) > 0.5, prob),
            "loss": float(log_loss(labels, np.clip(prob, 1e-7, 1 - 1e-7)))}


def fit_tfidf(prepared, *, ngram_max: int, c: float, seed: int):
    """Fit the baseline on the prepared IMDB texts; returns ``(FitResult, pipeline)``,
    shaped as the engine's result: one 'epoch' with its losses and validation figures."""
    import time

    from rnnlab.data.imdb import load_imdb, load_texts
    from rnnlab.training.results import FitResult

    texts = load_texts(prepared)
    labels = {s: load_imdb(prepared, s)[1] for s in ("train", "val", "test")}
    began = time.perf_counter()
    model = make_tfidf_logreg(ngram_max=ngram_max, c=c, seed=seed)
    model.fit(texts["train"], labels["train"])
    seconds = time.perf_counter() - began
    scores = {s: binary_metrics(model.predict_proba(texts[s])[:, 1], labels[s])
              for s in ("train", "val", "test")}
    history = [{"epoch": 1, "train_loss": scores["train"]["loss"], "val_loss": scores["val"]["loss"],
                "val_accuracy": scores["val"]["accuracy"], "val_auc": scores["val"]["auc"],
                "seconds": seconds}]
    result = FitResult(best_epoch=1, history=history, val=scores["val"], test=scores["test"],
                       seconds_per_epoch=seconds)
    return result, model


def count_tfidf_parameters(model) -> int:
    return int(model[-1].coef_.size + model[-1].intercept_.size)
