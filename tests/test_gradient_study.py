"""The exploding-gradients lesson on every configuration the project ships: params.yaml's
defaults and the demo's overrides, each on generated Jena data of its own size."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from rnnlab.core.config import from_mapping
from rnnlab.data.jena import load_features, normalize_jena
from rnnlab.data.synthetic import FULL_JENA_ROWS, write_jena_csv
from rnnlab.data.windows import JenaWindows, make_window_spec
from rnnlab.lecture.finite import NonFiniteResult
from rnnlab.lecture.gradient_study import (
    ExplodeParams,
    GradientsParams,
    StudyOutputs,
    explode_traces,
    quick_look,
    run_gradient_study,
)
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


def small_study(tmp: Path) -> tuple[Path, Path]:
    """Prepared generated Jena data and its window spec (24 time steps) under ``tmp``."""
    from rnnlab.data.windows import save_spec

    write_jena_csv(tmp / "jena.csv", 5000, seed=0)
    stats = normalize_jena(tmp / "jena.csv", tmp / "prepared", train_rows=(0, 2500),
                           target="T (degC)", wind_sentinel_fill=0.0)
    save_spec(make_window_spec(n_rows=stats.n_rows, lookback=144, step=6, delay=24,
                               target_index=stats.target_index,
                               splits={"train": (0, 2500), "val": (2501, 3800),
                                       "test": (3801, None)}), tmp / "windows")
    return tmp / "prepared", tmp / "windows"


def study_params(**changes) -> GradientsParams:
    explode = ExplodeParams(recurrent_scale=1.4, nonlinearity="relu", lr=0.05, steps=5,
                            timesteps=20, clip_norm=1.0)
    return replace(GradientsParams(hidden=4, batches=2, train_steps=3, distance=10,
                                   explode=explode), **changes)


def outputs_in(folder: Path) -> StudyOutputs:
    return StudyOutputs(metrics=folder / "metrics" / "gradients.json",
                        vanishing=folder / "plots" / "v.csv", exploding=folder / "plots" / "e.csv",
                        figure=folder / "plots" / "gradients.png")


def test_a_quick_look_caps_the_study_too(tmp_path, monkeypatch):
    """train.max_epochs or train.max_eval_batches set: the short trainings and the batches
    are capped (QUICK_LOOK), the metrics and the MLflow run say which caps applied."""
    from mlflow.tracking import MlflowClient

    defaults = shipped_params({}).gradients
    quick, capped = quick_look(defaults, {"train.max_epochs": 1})
    assert (quick.train_steps, quick.batches, quick.explode) == (20, 2, defaults.explode)
    assert capped == {"gradients.train_steps": 20, "gradients.batches": 2}
    assert quick_look(defaults, {}) == (defaults, {})
    demo_settings = shipped_params(demo.SETTINGS).gradients      # already small: nothing cut
    assert quick_look(demo_settings, {"train.max_epochs": 2}) == (demo_settings, {})

    prepared, windows = small_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = run_gradient_study(study_params(train_steps=30), prepared, windows,
                                 outputs_in(tmp_path), seed=1, batch_size=32, clip_norm=None,
                                 caps={"train.max_eval_batches": 2})
    assert metrics["capped"] == {"gradients.train_steps": 20}
    assert json.loads((tmp_path / "metrics" / "gradients.json").read_text())["capped"] == \
        {"gradients.train_steps": 20}
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(metrics["mlflow_run_id"])
    assert run.data.tags["capped"] == "gradients.train_steps=20"
    assert run.data.params["gradients.train_steps"] == "20"


@pytest.mark.hostile
def test_a_ratio_that_is_not_finite_is_refused(tmp_path, monkeypatch):
    """A gradient of 0 at the output leaves no ratio to take (inf): the study stops with one
    line naming the figure and what to do, and writes nothing. The exploding run's
    divergence is no such figure: it is recorded as its step."""
    from rnnlab.lecture import gradient_study

    prepared, windows = small_study(tmp_path)
    measured = gradient_study.state_gradient_norms

    def dead_at_the_output(model, batches):
        norms = measured(model, batches)
        if model.cell == "gru":
            norms[0] = 0.0
        return norms

    monkeypatch.setattr(gradient_study, "state_gradient_norms", dead_at_the_output)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NonFiniteResult) as info:
        run_gradient_study(study_params(), prepared, windows, outputs_in(tmp_path), seed=1,
                           batch_size=32, clip_norm=None)
    assert str(info.value) == (
        "gradients: gru_log10_ratio_10_init is inf (and gru_log10_ratio_10_trained), not a "
        "figure a result can hold: the gru's gradient at the output was 0 or not finite, so "
        "there is no ratio to take: try another seed or gradients.hidden; "
        f"{tmp_path}/metrics/gradients.json not written")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "plots").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.hostile
def test_a_batch_larger_than_the_validation_windows_is_one_line(tmp_path, monkeypatch):
    """The study's fixed batches start at linspace(0, len(val) - batch): a batch past the
    validation windows gave overlapping batches of other sizes, without a word."""
    from rnnlab.core.errors import RnnlabError
    from rnnlab.data.windows import load_spec

    prepared, windows = small_study(tmp_path)
    n_val = load_spec(windows).count("val")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RnnlabError, match=rf"jena.batch_size \({n_val + 1:,}\) is larger than "
                                          rf"the {n_val:,} validation windows .* at most "
                                          rf"{n_val:,}$"):
        run_gradient_study(study_params(), prepared, windows, outputs_in(tmp_path), seed=1,
                           batch_size=n_val + 1, clip_norm=None)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.hostile
@pytest.mark.parametrize("hidden, batch", [(100_000, 128), (32, 10_000_000)])
def test_sizes_past_the_machine_are_one_line_before_the_study(hidden, batch):
    """``gradients.hidden: 100000`` (an LSTM's recurrent weights alone are 160 GB) or
    ``jena.batch_size: 10000000``: one line naming the keys, before any cell is built."""
    from dataclasses import replace

    from rnnlab.core.errors import RnnlabError
    from rnnlab.lecture.gradient_study import check_study_memory

    cfg = replace(shipped_params({}).gradients, hidden=hidden)
    with pytest.raises(RnnlabError) as caught:
        check_study_memory(cfg, batch, 240, 14)
    message = str(caught.value)
    assert message.startswith("gradients would need about") and "\n" not in message
    assert "lower gradients.hidden or jena.batch_size" in message
    check_study_memory(shipped_params({}).gradients, 128, 240, 14)   # the defaults fit
