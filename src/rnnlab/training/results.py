"""What a training run returns, and the AUC every IMDB variant reports: NumPy only, so the
scikit-learn baseline shares them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FitResult:
    best_epoch: int
    history: list[dict[str, float]]
    val: dict[str, float]
    test: dict[str, float]
    seconds_per_epoch: float
    resumed_from: int = 0           # last epoch restored from a checkpoint (0: none)


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``; NaN
    unless both classes occur. It is the Mann-Whitney statistic: the chance that a random
    positive outscores a random negative, ties counting one half (average ranks), which is
    what scikit-learn's ``roc_auc_score`` computes (tests/test_imdb.py compares them).
    Computed here because importing scikit-learn costs every IMDB stage about 2.5 s."""
    positive = np.asarray(positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.concatenate(([0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1))
    ends = np.append(starts[1:], len(ordered))
    ranks = np.empty(len(ordered))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)   # 1-based, tie means
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
