import numpy as np
import pytest

from rnnlab.data.windows import make_window_spec
from rnnlab.lecture.naive import naive_mae


def test_naive_mae_against_hand_computation():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(2000, 14)).astype(np.float32)
    spec = make_window_spec(n_rows=2000, lookback=120, step=6, delay=30, target_index=1,
                            splits={"train": (0, 800), "val": (801, 1400), "test": (1401, None)})
    for split, (lo, hi) in {"val": (801, 1400), "test": (1401, 2000 - 30 - 1)}.items():
        errors = []
        for r in range(lo + 120, hi):
            last_input = features[r - 6, 1]        # row r - step, the last one the model sees
            errors.append(abs(float(features[r + 30, 1]) - float(last_input)))
        assert naive_mae(features, spec, split) == pytest.approx(np.mean(errors), rel=1e-12)


def test_naive_is_zero_on_constant_target():
    features = np.zeros((500, 14), dtype=np.float32)
    features[:, 1] = 3.0
    spec = make_window_spec(n_rows=500, lookback=12, step=3, delay=5, target_index=1,
                            splits={"train": (0, 200), "val": (201, 350), "test": (351, None)})
    assert naive_mae(features, spec, "val") == 0.0
