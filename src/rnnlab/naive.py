"""The lecture's common-sense baseline: tomorrow's temperature equals the last one seen."""

from __future__ import annotations

import numpy as np

from rnnlab.windows import WindowSpec


def naive_mae(features: np.ndarray, spec: WindowSpec, split: str) -> float:
    """Mean |y - y_hat| over every window of ``split``, in normalized units.

    y_hat = features[r + offsets[-1], target] (the last input row, ``r - step`` when
    ``step`` divides ``lookback``); y = features[r + delay, target]. Only the target
    column is read: two (n,) gathers, never a (n, T, 14) tensor.
    """
    rows = spec.rows(split)                                   # (n,)
    column = features[:, spec.target_index]                   # (N,) view, or mmap column
    last = np.asarray(column[rows + spec.offsets[-1]], dtype=np.float64)
    target = np.asarray(column[rows + spec.delay], dtype=np.float64)
    return float(np.abs(target - last).mean())
