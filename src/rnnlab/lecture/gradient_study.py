"""The lecture's first topic, run as one study: vanishing gradients (the norm of dL/dh_t
reaching each earlier step, for a simple RNN, a GRU and an LSTM, at initialization and
after a short training) and exploding gradients (a simple RNN with scaled recurrent
weights under plain SGD, with and without clipping). Writes two CSVs, one figure and the
metrics file, and logs them to MLflow. The measurements are in ``rnnlab.lecture.gradients``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.core.atomic import atomic_output, write_json
from rnnlab.core.config import ConfigError, at_least
from rnnlab.core.errors import RnnlabError
from rnnlab.core.machine import available_bytes, gigabytes
from rnnlab.data.jena import load_features
from rnnlab.data.windows import JenaWindows, load_spec
from rnnlab.lecture.finite import refuse_non_finite
from rnnlab.lecture.gradients import (
    CELLS,
    CellRegressor,
    ExplodeTrace,
    decay_ratio,
    explode_run,
    scale_recurrent_weights,
    state_gradient_norms,
    train_steps,
)
from rnnlab.tracking.paths import repo_root
from rnnlab.tracking.store import tracked_run
from rnnlab.training.checkpoints import CHECKPOINTS
from rnnlab.training.process import denormals_flushed
from rnnlab.training.seeds import seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplodeParams:
    recurrent_scale: float
    nonlinearity: str
    lr: float
    steps: int
    timesteps: int            # the last steps of each window the run reads
    clip_norm: float          # used when train.clip_norm is null

    def validate(self, where: str) -> None:
        at_least(where, "steps", self.steps, 1)
        at_least(where, "timesteps", self.timesteps, 1)
        for name in ("recurrent_scale", "lr", "clip_norm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"{where}.nonlinearity: {self.nonlinearity!r}; choose tanh or relu")


@dataclass(frozen=True)
class GradientsParams:
    hidden: int
    batches: int
    train_steps: int
    distance: int
    explode: ExplodeParams

    def validate(self, where: str) -> None:
        for name in ("hidden", "batches", "train_steps", "distance"):
            at_least(where, name, getattr(self, name), 1)


@dataclass(frozen=True)
class StudyOutputs:
    """The files dvc.yaml declares for the gradients stage."""
    metrics: Path
    vanishing: Path
    exploding: Path
    figure: Path


# A quick look (train.max_epochs or train.max_eval_batches set, as in the README's
# `dvc exp run -S train.max_epochs=1 -S train.max_eval_batches=...`) caps the study too: its
# three short trainings (200 RMSprop steps each through 240 time steps: 45 s of the study's
# 46 s on two cores; 7 s capped) and the validation batches the norms are averaged over.
# The exploding runs keep their steps: 150 steps through 20 time steps take 0.4 s, and the
# clipped run needs them to show its loss falling.
QUICK_LOOK = {"train_steps": 20, "batches": 2}


def quick_look(cfg: GradientsParams, caps: Mapping[str, int]) -> tuple[GradientsParams,
                                                                       dict[str, int]]:
    """``cfg`` under the ``QUICK_LOOK`` caps when ``caps`` (the train caps set, such as
    ``{"train.max_epochs": 1}``) is not empty, and the caps that lowered a value
    (``{"gradients.train_steps": 20}``; empty when none did)."""
    if not caps:
        return cfg, {}
    lowered = {k: v for k, v in QUICK_LOOK.items() if getattr(cfg, k) > v}
    quick = replace(cfg, train_steps=min(cfg.train_steps, QUICK_LOOK["train_steps"]),
                    batches=min(cfg.batches, QUICK_LOOK["batches"]))
    return quick, {f"gradients.{k}": v for k, v in lowered.items()}


def log10(ratio: float) -> float | None:
    """log10 of a decay ratio, rounded to 0.01 (None for 0: underflow, nothing arrives).
    A ratio that is not finite stays so, and the stage refuses it (``advice``)."""
    return None if ratio == 0 else round(float(np.log10(ratio)), 2)


def advice(key: str) -> str:
    """What to do about a figure of metrics/gradients.json that is not finite."""
    cell = key.split("_", 1)[0]
    if "_log10_ratio_" in key:
        return (f"the {cell}'s gradient at the output was 0 or not finite, so there is no "
                "ratio to take: try another seed or gradients.hidden")
    if key.endswith("_train_loss_last"):
        return (f"the {cell}'s short RMSprop training diverged: lower gradients.train_steps "
                "or try another seed")
    return "try another seed"


def write_csv(path: Path, header: list[str], rows) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def figure(path: Path, norms: dict, traces: dict, distance: int, explode_setup: str) -> None:
    """Three panels: the vanishing norms by distance; the exploding runs' gradient norm and
    their loss per SGD step. Log y axes throughout: the values span many decades. The
    exploding panels keep the clipped run's range; a value of the unclipped run beyond it
    (or not finite) is an arrow at the top edge with the number."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=100)
    colours = dict(zip(CELLS, ("tab:red", "tab:blue", "tab:green")))
    for (cell, when), values in norms.items():
        left.semilogy(values, "-" if when == "trained" else "--", color=colours[cell],
                      label=f"{cell}, {when}")
    left.axvline(distance, color="grey", lw=0.8, ls=":", label=f"distance {distance}")
    left.set_xlabel("distance from the output (time steps)")
    left.set_ylabel("mean ||dL/dh_t|| (log scale)")
    left.set_title("Vanishing: gradient reaching each earlier step")
    left.legend(fontsize=8)

    def span(values: list[float]) -> tuple[float, float]:
        finite = [v for v in values if math.isfinite(v) and v > 0] or [1.0]
        return min(finite) / 3, max(finite) * 30

    for ax, key in ((middle, "grad_norms"), (right, "losses")):
        kept = [v for t in traces.values() if t.clip_norm is not None for v in getattr(t, key)]
        if key == "grad_norms":
            kept += [v for t in traces.values() for v in t.clipped_norms]
        low, high = span(kept)
        for label, trace in traces.items():
            colour = "tab:red" if trace.clip_norm is None else "tab:blue"
            values = getattr(trace, key)
            steps = np.arange(1, len(values) + 1)
            shown = [v if math.isfinite(v) and v <= high else np.nan for v in values]
            ax.semilogy(steps, shown, color=colour, marker="o" if trace.clip_norm is None
                        else ".", ms=4, lw=1, label=label + (": before clipping"
                                                             if key == "grad_norms" else ""))
            for step, v in zip(steps, values):
                if not (math.isfinite(v) and v <= high):
                    ax.annotate(f"step {step}: {v:.2g}", xy=(step, high), xytext=(step + 4, high / 8),
                                color=colour, fontsize=8,
                                arrowprops=dict(arrowstyle="->", color=colour))
            if key == "grad_norms" and trace.clip_norm is not None:
                ax.semilogy(steps, trace.clipped_norms, color=colour, ls="--", lw=1,
                            label=f"{label}: update applied")
            if trace.diverged_at:
                ax.axvline(trace.diverged_at, color=colour, ls=":", lw=1.5,
                           label=f"{label}: not finite at step {trace.diverged_at}")
        ax.set_ylim(low, high)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=8, loc="upper right")
    middle.set_ylabel("global gradient norm (log scale)")
    middle.set_title(f"Exploding: gradient norm ({explode_setup})", fontsize=10)
    right.set_ylabel("training loss, MAE (log scale)")
    right.set_title("Exploding: the loss of the same two runs", fontsize=10)
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def max_finite(values: list[float]) -> float:
    """The largest finite value (0 if none): a diverged run's last norm may be inf or nan,
    which the step of divergence reports instead (and which JSON cannot hold)."""
    finite = [v for v in values if math.isfinite(v)]
    return float(max(finite, default=0.0))


def check_explode_window(cfg: GradientsParams, window: int) -> None:
    timesteps = cfg.explode.timesteps
    if timesteps > window:
        raise RnnlabError(f"params.yaml: gradients.explode.timesteps ({timesteps}) is longer "
                          f"than the window ({window} time steps = jena.lookback / jena.step); "
                          "lower it or lengthen the window")


def explode_traces(cfg: GradientsParams, train: JenaWindows, *, seed: int, batch_size: int,
                   clip_norm: float | None) -> dict[str, ExplodeTrace]:
    """The exploding comparison: the same simple RNN (W_hh = scale x I, the same seed and
    batches) trained with plain SGD, once unclipped and once clipped to ``train.clip_norm``
    (``gradients.explode.clip_norm`` when that is null); keyed by a label for each."""
    check_explode_window(cfg, train.spec.timesteps)
    hidden, ex = cfg.hidden, cfg.explode
    clip = clip_norm or ex.clip_norm
    traces = {}
    for label, clip_norm in (("no clipping", None), (f"clip_norm {clip:g}", clip)):
        seed_everything(seed)
        model = CellRegressor("rnn", train.features.shape[1], hidden,
                              ex.nonlinearity)
        scale_recurrent_weights(model, ex.recurrent_scale)
        batches = train.epoch_batches(2, ex.steps, batch_size, seed)
        traces[label] = explode_run(model, batches, ex.steps, lr=ex.lr, clip_norm=clip_norm,
                                    timesteps=ex.timesteps)
    return traces


def run_gradient_study(cfg: GradientsParams, prepared: Path, windows: Path, out: StudyOutputs,
                       *, seed: int, batch_size: int, clip_norm: float | None,
                       caps: Mapping[str, int] | None = None) -> dict:
    """Both measurements on the prepared Jena windows; returns the metrics written.
    ``caps``: the quick-look caps of ``train`` that are set (``{"train.max_epochs": 1}``),
    which shorten the study too (``QUICK_LOOK``)."""
    cfg, capped = quick_look(cfg, caps or {})
    if capped:
        log.info("gradients: a quick look (%s): %s", ", ".join(f"{k} = {v}" for k, v in
                                                              (caps or {}).items()),
                 ", ".join(f"{k} capped to {v}" for k, v in capped.items()))
    with denormals_flushed(False):    # the vanishing side reads tiny numbers on purpose
        return _study(cfg, prepared, windows, out, seed=seed, batch_size=batch_size,
                      clip_norm=clip_norm, capped=capped)


def check_study_memory(cfg: GradientsParams, batch_size: int, timesteps: int,
                       features: int) -> None:
    """The largest cell (an LSTM: 4 gates) with ``gradients.hidden`` units, its Adam-free
    SGD state and one batch of states kept for the backward pass must fit the memory this
    process may still take: ``gradients.hidden: 100000`` was an allocator's traceback
    (an LSTM's recurrent weights alone are 160 GB), ``jena.batch_size: 10000000`` too."""
    hidden = cfg.hidden
    weights = 4 * hidden * (hidden + features + 2)            # LSTM: W_ih, W_hh, biases
    # weights, their gradients and a copy; per step and sequence, the gates and states kept
    # for backward (about 13 floats per unit, as training/memory.py measured), the fixed
    # validation batches besides
    need = 4 * (3 * weights + 13 * hidden * timesteps * batch_size * (1 + cfg.batches)
                + batch_size * timesteps * features * (1 + cfg.batches))
    have, source = available_bytes()
    if need > have:
        raise RnnlabError(f"gradients would need about {gigabytes(need)} (an LSTM of "
                          f"gradients.hidden {hidden:,} units, batches of jena.batch_size "
                          f"{batch_size:,} x {timesteps} steps) but this machine has "
                          f"{gigabytes(have)} {source}; lower gradients.hidden or "
                          "jena.batch_size")


def _study(cfg: GradientsParams, prepared: Path, windows: Path, out: StudyOutputs, *,
           seed: int, batch_size: int, clip_norm: float | None,
           capped: dict[str, int]) -> dict:
    clip = clip_norm or cfg.explode.clip_norm

    features, stats = load_features(prepared, mmap=False)
    spec = load_spec(windows)
    if not 0 < cfg.distance < spec.timesteps:
        raise RnnlabError(f"params.yaml: gradients.distance ({cfg.distance}) must be between 1 "
                          f"and the window length minus one ({spec.timesteps} time steps = "
                          "jena.lookback / jena.step); lower it or lengthen the window")
    check_explode_window(cfg, spec.timesteps)
    check_study_memory(cfg, batch_size, spec.timesteps, features.shape[1])
    train = JenaWindows(features, spec, "train")
    val = JenaWindows(features, spec, "val")
    if batch_size > len(val):   # the fixed batches below would run off the split
        raise RnnlabError(
            f"params.yaml: jena.batch_size ({batch_size:,}) is larger than the {len(val):,} "
            "validation windows the gradients stage draws its fixed batches from; lower "
            f"jena.batch_size to at most {len(val):,}")
    # A fixed set of validation batches, spread over the split.
    picks = np.linspace(0, len(val) - batch_size, cfg.batches).astype(int)
    fixed = [val.batch(val.rows[i:i + batch_size]) for i in picks]

    norms, ratios = {}, {}
    metrics: dict[str, Any] = {}      # the figures, then the run id
    for cell in CELLS:
        seed_everything(seed)
        model = CellRegressor(cell, features.shape[1], cfg.hidden)
        norms[cell, "init"] = state_gradient_norms(model, fixed)
        losses = train_steps(model, train.epoch_batches(1, cfg.train_steps, batch_size, seed),
                             cfg.train_steps)
        norms[cell, "trained"] = state_gradient_norms(model, fixed)
        for when in ("init", "trained"):
            with np.errstate(divide="ignore", invalid="ignore"):   # 0 at the output: refused
                ratio = decay_ratio(norms[cell, when], cfg.distance)
            ratios[f"{cell}_ratio_{cfg.distance}_{when}"] = ratio
            # The ratios reach 1e-31: DVC prints any of them as 0.0, their log10 as -31.0.
            metrics[f"{cell}_log10_ratio_{cfg.distance}_{when}"] = log10(ratio)
        metrics[f"{cell}_train_loss_last"] = float(np.mean(losses[-20:]))
        log.info(f"gradients: {cell}: ||dL/dh|| {cfg.distance} steps back / at the output = "
              f"{ratios[f'{cell}_ratio_{cfg.distance}_init']:.3g} at init, "
              f"{ratios[f'{cell}_ratio_{cfg.distance}_trained']:.3g} after "
              f"{cfg.train_steps} steps")

    traces = explode_traces(cfg, train, seed=seed, batch_size=batch_size,
                            clip_norm=clip_norm)
    plain, clipped = traces.values()
    metrics |= {
        "explode_diverged_step_noclip": plain.diverged_at or 0,
        "explode_diverged_step_clip": clipped.diverged_at or 0,
        "explode_max_grad_norm_noclip": max_finite(plain.grad_norms),
        "explode_max_grad_norm_clip": max_finite(clipped.grad_norms),
        "explode_max_applied_norm_clip": float(max(clipped.clipped_norms or [0])),
        "explode_clip_norm": clip,
    }
    if capped:
        metrics["capped"] = capped
    # The unclipped run's divergence is recorded as its step (and its largest finite norm):
    # every figure left must be a number. Refused before any output is written.
    refuse_non_finite("gradients", metrics, advice=advice, output=out.metrics)
    for label, t in traces.items():
        state = f"diverged at step {t.diverged_at}" if t.diverged_at else "finite throughout"
        log.info(f"gradients: exploding, {label}: max gradient norm "
              f"{max_finite(t.grad_norms):.3g}, {state}")

    depth = len(next(iter(norms.values())))
    write_csv(out.vanishing, ["distance"] + [f"{c}_{w}" for c, w in norms],
              ([d] + [f"{norms[k][d]:.6g}" for k in norms] for d in range(depth)))
    n = max(len(t.losses) for t in traces.values())
    entry = lambda seq, i: f"{seq[i]:.6g}" if i < len(seq) else ""  # noqa: E731
    write_csv(out.exploding, ["step", "loss_noclip", "grad_norm_noclip", "loss_clip",
                               "grad_norm_clip", "applied_norm_clip"],
              ([i + 1, entry(plain.losses, i), entry(plain.grad_norms, i),
                entry(clipped.losses, i), entry(clipped.grad_norms, i),
                entry(clipped.clipped_norms, i)] for i in range(n)))
    ex = cfg.explode
    figure(out.figure, norms, traces, cfg.distance,
           f"{ex.nonlinearity} RNN, W_hh = {ex.recurrent_scale:g} I, last {ex.timesteps} steps, "
           f"SGD lr {ex.lr:g}")

    run_params = {"gradients": asdict(cfg), "jena": {"batch_size": batch_size}, "seed": seed,
                  "clip_norm_used": clip}
    with tracked_run(experiment="rnnlab-jena", run_name="gradients", params=run_params,
                     tags={"variant": "gradients", "dataset": "jena", "seed": seed,
                           "data_md5": stats.csv_md5,
                           "capped": ", ".join(f"{k}={v}" for k, v in capped.items())
                           or "false"},
                     root=repo_root(), claim=CHECKPOINTS / "gradients.run.json") as run:
        # MLflow shows small numbers as they are: the ratios themselves too.
        run.log_metrics({k: v for k, v in (metrics | ratios).items()
                         if isinstance(v, (int, float))})
        for t in traces.values():
            key = "noclip" if t.clip_norm is None else "clip"
            for i, norm in enumerate(t.grad_norms, start=1):
                if np.isfinite(norm):
                    run.log_metrics({f"explode_grad_norm_{key}": norm}, step=i)
        metrics["mlflow_run_id"] = run.id
        write_json(out.metrics, metrics)
        for path in (out.metrics, out.vanishing, out.exploding, out.figure):
            run.log_artifact(path)

    return metrics
