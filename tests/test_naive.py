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


@pytest.mark.hostile
def test_a_figure_that_is_not_finite_is_refused_not_reported(tmp_path):
    """The naive stage on prepared data changed after normalize_jena ran (a NaN in the
    target): exit 1 with one line naming the metric and what to do, no metrics file (NaN is
    not JSON), no MLflow run."""
    import shutil
    import subprocess
    import sys

    from rnnlab.data.jena import normalize_jena
    from rnnlab.data.synthetic import write_jena_csv
    from rnnlab.data.windows import save_spec

    from _project import ROOT, env_for_tools

    write_jena_csv(tmp_path / "jena.csv", rows=1200, seed=3)
    stats = normalize_jena(tmp_path / "jena.csv", tmp_path / "prepared", train_rows=(0, 600),
                           target="T (degC)", wind_sentinel_fill=None)
    (tmp_path / "jena.csv").unlink()
    save_spec(make_window_spec(n_rows=stats.n_rows, lookback=60, step=6, delay=12,
                               target_index=stats.target_index,
                               splits={"train": (0, 600), "val": (601, 900),
                                       "test": (901, None)}), tmp_path / "windows")
    features = np.load(tmp_path / "prepared" / "features.npy")
    features[700, stats.target_index] = np.nan
    np.save(tmp_path / "prepared" / "features.npy", features)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "naive.py"), "prepared",
                           "windows", "metrics/naive.json"], cwd=tmp_path, env=env_for_tools(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "error: naive: val_mae is nan (and val_mae_degc), not a figure a result can hold: the "
        "prepared Jena data (prepared) holds values that are not finite; prepare it again: "
        "dvc repro -f normalize_jena windows_jena naive; metrics/naive.json not written"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
