"""The exploding-gradients lesson on every configuration the project ships: params.yaml's
defaults and the demo's overrides, each on generated Jena data of its own size."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from rnnlab.core.config import from_mapping
from rnnlab.data.jena import load_features, normalize_jena
from rnnlab.data.synthetic import FULL_JENA_ROWS, write_jena_csv
from rnnlab.data.windows import JenaWindows, make_window_spec
from rnnlab.lecture.gradient_study import explode_traces
from rnnlab.tools import demo
from rnnlab.tools.params import Params

ROOT = Path(__file__).resolve().parents[1]


def shipped_params(overrides: dict[str, str]) -> Params:
    """params.yaml with ``dvc exp run -S key=value`` overrides (values parsed as YAML)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = yaml.safe_load(value)
    return from_mapping(Params, raw, where="params.yaml")


def train_windows(params: Params, rows: int, tmp: Path) -> JenaWindows:
    jena = params.jena
    write_jena_csv(tmp / "jena.csv", rows, seed=0)
    normalize_jena(tmp / "jena.csv", tmp / "prepared", train_rows=jena.train_rows,
                   target=jena.target, wind_sentinel_fill=jena.wind_sentinel_fill)
    features, stats = load_features(tmp / "prepared", mmap=False)
    spec = make_window_spec(n_rows=stats.n_rows, lookback=jena.lookback, step=jena.step,
                            delay=jena.delay, target_index=stats.target_index,
                            splits=jena.splits)
    return JenaWindows(features, spec, "train")


@pytest.mark.parametrize("config, rows", [({}, FULL_JENA_ROWS),
                                          (demo.SETTINGS, demo.JENA_ROWS)],
                         ids=["defaults", "demo"])
def test_unclipped_sgd_blows_up_and_clipped_stays_bounded(config, rows, tmp_path):
    params = shipped_params(config)
    cfg = params.gradients.explode
    plain, clipped = explode_traces(params.gradients, train_windows(params, rows, tmp_path),
                                    seed=params.seed, batch_size=params.jena.batch_size,
                                    clip_norm=params.train.clip_norm).values()
    assert plain.clip_norm is None and clipped.clip_norm == cfg.clip_norm

    # Unclipped: an exploded gradient at the first step, then the weights leave the finite.
    assert plain.grad_norms[0] > 100
    assert plain.diverged_at is not None and plain.diverged_at <= 3
    assert not np.isfinite(plain.losses[-1]) or not np.isfinite(plain.grad_norms[-1])

    # Clipped: the same first gradient, every update bounded, finite throughout, learning.
    assert clipped.grad_norms[0] == pytest.approx(plain.grad_norms[0])
    assert clipped.diverged_at is None and len(clipped.losses) == cfg.steps
    assert np.isfinite(clipped.losses).all() and np.isfinite(clipped.grad_norms).all()
    assert max(clipped.clipped_norms) <= cfg.clip_norm * (1 + 1e-5)
    assert max(clipped.grad_norms) < 10 * clipped.grad_norms[0]
    assert np.mean(clipped.losses[-10:]) < clipped.losses[0] / 10
    assert np.mean(clipped.grad_norms[-10:]) < clipped.grad_norms[0] / 10
