"""One variant's training run, as ``train@<variant>`` runs it: once per seed, each seed an
MLflow run, resumable from per-epoch checkpoints; then the stage's outputs.

    outputs = Outputs(metrics=Path("metrics/gru.json"), plots=Path("plots/gru.csv"),
                      model=Path("models/gru.pt"))
    train_variant("gru", spec, common=common, train=train, data=jena,
                  prepared=Path("data/prepared/jena"),
                  windows=Path("data/prepared/jena_windows"), outputs=outputs)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from rnnlab.core.atomic import atomic_output, remove_if_empty, write_json
from rnnlab.core.errors import redact
from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import JenaParams
from rnnlab.lecture.baselines import count_tfidf_parameters, fit_tfidf
from rnnlab.lecture.finite import refuse_non_finite
from rnnlab.nn.models import build_model, count_parameters
from rnnlab.nn.recurrent import prepare_native
from rnnlab.nn.schema import ARCHITECTURES, ModelSpec, fields_read
from rnnlab.tracking.paths import repo_root
from rnnlab.tracking.store import tracked_run
from rnnlab.training.checkpoints import CHECKPOINTS, check_checkpoint_path, remove_superseded
from rnnlab.training.device import resolve_device
from rnnlab.training.engine import TrainConfig, fit, fit_together, seed_everything, seeds_together
from rnnlab.training.memory import check_fits, estimate_training
from rnnlab.training.params import TrainParams
from rnnlab.training.seeds import RunParams, combine_seeds
from rnnlab.training.tasks import build_task, check_inputs
from rnnlab.training.threads import resolve_threads, thread_control

log = logging.getLogger(__name__)


class _SeedRun(NamedTuple):
    """One seed's training run of a stage: what names it and what its checkpoint holds."""
    seed: int
    config: TrainConfig
    params: dict[str, Any]          # logged to MLflow
    fingerprint: str                # the checkpoint's: resume only with the same
    checkpoint: Path
    desc: str                       # in log lines and errors


@dataclass(frozen=True)
class Outputs:
    """The files ``dvc.yaml`` declares for one variant."""
    metrics: Path
    plots: Path
    model: Path


def epoch_metrics(row: dict) -> dict:
    """One epoch's figures as MLflow metrics ``epoch/<name>`` (a chart section of their own):
    the plain names (``val_mae``...) hold the kept best epoch's, as metrics/<variant>.json."""
    return {f"epoch/{k}": v for k, v in row.items() if k != "epoch"}


def caps_applied(spec: ModelSpec, train: TrainParams, task: Any) -> dict[str, int]:
    """The quick-look caps (``train.max_epochs``, ``train.max_eval_batches``) that cut this
    variant's run short: fewer epochs than its ``epochs``, fewer evaluation batches than its
    validation or test split holds. The TF-IDF baseline (one fit, every review) has none."""
    if not ARCHITECTURES[spec.arch].torch:
        return {}
    capped = {}
    if train.max_epochs is not None and train.max_epochs < spec.epochs:
        capped["train.max_epochs"] = train.max_epochs
    cap = train.max_eval_batches
    if cap is not None and any(task.eval_size(split) > cap * task.eval_batch_size
                               for split in ("val", "test")):
        capped["train.max_eval_batches"] = cap
    return capped


def capped_tag(capped: dict[str, int]) -> str:
    """The MLflow tag ``capped``: ``false``, or the caps that applied (``train.max_epochs=1``)."""
    return ", ".join(f"{k}={v}" for k, v in capped.items()) or "false"


def advice(key: str, train: TrainParams, task: Any) -> str:
    """What to do about a figure that is not finite (``rnnlab.lecture.finite``)."""
    split = "validation" if key.startswith("val_") else "test"
    if key.endswith("_auc"):     # roc_auc's NaN: one class only among the examples scored
        if train.max_eval_batches is None:
            return (f"the {split} split holds one class only and an AUC needs both: prepare "
                    "the data again (dvc repro -f tokenize_imdb)")
        return (f"the {split} examples evaluated (train.max_eval_batches = "
                f"{train.max_eval_batches} batch(es) of train.eval_batch_size = "
                f"{task.eval_batch_size}) hold one class only and an AUC needs both: raise "
                "train.max_eval_batches or set it to null")
    return ("the model's outputs are not finite (the training diverged): set train.clip_norm "
            "(for example 1.0) and rerun")


def write_plots(path: Path, history: list[dict], extra: tuple[str, ...]) -> None:
    columns = ["epoch", "train_loss", "val_loss", *extra]
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in history:
                writer.writerow([row["epoch"]] + [f"{row[c]:.6f}" for c in columns[1:]])


def train_variant(variant: str, spec: ModelSpec, *, common: RunParams, train: TrainParams,
                  data: JenaParams | ImdbParams, prepared: Path, outputs: Outputs,
                  windows: Path, checkpoints: Path = CHECKPOINTS,
                  progress: bool = False) -> dict[str, Any]:
    """Train ``variant`` (its ``spec``) once per seed of ``run``, log each seed, write
    ``outputs``; return the metrics. ``common``: seed(s) and device; ``data``: the params
    section of its data set."""
    check_inputs(spec.dataset, prepared, windows, f"train@{variant}")
    torch_model = ARCHITECTURES[spec.arch].torch
    if torch_model:   # before any array is loaded: a run the machine cannot hold is one line
        check_fits(estimate_training(variant, spec, data, train, prepared, windows),
                   f"train@{variant}")
    several = len(common.seed_list) > 1

    def checkpoint_of(seed: int) -> Path:
        return checkpoints / (f"{variant}.seed{seed}.pt" if several else f"{variant}.pt")

    for seed in common.seed_list:   # before any MLflow run opens: where its checkpoint goes
        check_checkpoint_path(checkpoint_of(seed), variant)
    prep = build_task(spec, data, train, prepared, windows)
    task = prep.task
    if torch_model:   # a model the params cannot build is one line before any run opens
        build_model(spec, n_features=task.n_inputs, timesteps=task.timesteps, init=train.init)
        n_train = task.eval_size("train")
        # Fixed steps per epoch draw full batches, repeating examples past the split (a
        # full pass, steps null, gives one batch of them all, as Keras): said, not refused.
        if data.batch_size > n_train and prep.steps_per_epoch is not None:
            key, what = f"{spec.dataset}.batch_size", \
                "windows" if spec.dataset == "jena" else "reviews"
            log.warning(f"{variant}: params.yaml: {key} ({data.batch_size:,}) is larger than "
                        f"the {n_train:,} training {what}: each batch repeats examples to fill "
                        f"up (Keras would train on one batch of {n_train:,}); lower {key} to "
                        f"at most {n_train:,} for that")
    device = resolve_device(common.device) if torch_model else torch.device("cpu")
    epochs = min(spec.epochs, train.max_epochs or spec.epochs)
    config = TrainConfig(epochs=epochs, steps_per_epoch=prep.steps_per_epoch, seed=common.seed,
                         clip_norm=train.clip_norm,
                         max_eval_batches=train.max_eval_batches)
    seeds = common.seed_list
    capped = caps_applied(spec, train, task)
    if capped:
        log.info("%s: a quick look, capped by %s: not comparable with the lecture", variant,
                 capped_tag(capped))
    policy = resolve_threads(train.threads)
    if device.type != "cpu":
        policy = replace(policy, tuned=False)
    if torch_model:
        log.info("%s: %s on %s", variant, policy.describe(), device)
    # Only the fields the variant's architecture reads: a dense model logs no ``model.cell``.
    model_params = {k: v for k, v in asdict(spec).items() if k in fields_read(spec.arch)}
    base_params = {"variant": variant, "model": model_params, spec.dataset: prep.data_params,
                   "device": str(device), "seeds": seeds, "threads": policy.threads,
                   "threads_source": policy.source + (", tuned" if policy.tuned else "")}

    runs: list[_SeedRun] = []
    for seed in seeds:
        config = replace(config, seed=seed)
        run_params = base_params | {"seed": seed, "train": asdict(config) | {
            "eval_batch_size": train.eval_batch_size, "init": train.init}}
        fingerprint = hashlib.sha256(json.dumps(       # thread count aside: resume anyway
            {**run_params, "threads": None, "threads_source": None,
             "data_stats": prep.data_stats}, sort_keys=True,
            default=str).encode()).hexdigest()
        runs.append(_SeedRun(seed, config, run_params, fingerprint, checkpoint_of(seed),
                             f"{variant} seed {seed}" if several else variant))
    together = torch_model and seeds_together(device, len(seeds))
    if together:
        log.info("%s: seeds %s side by side on %s (RNNLAB_SEEDS_TOGETHER: %s)", variant,
                 ", ".join(map(str, seeds)), device, os.environ.get("RNNLAB_SEEDS_TOGETHER",
                                                                    "auto"))

    def build(seed: int) -> torch.nn.Module:
        seed_everything(seed)
        model = build_model(spec, n_features=task.n_inputs, timesteps=task.timesteps,
                            init=train.init)
        prepare_native(model, device)
        return model

    per_seed, models = [], []
    trained: list[tuple[torch.nn.Module, Any]] = []       # together: every seed's, at once
    for n, (seed, config, run_params, fingerprint, checkpoint, desc) in enumerate(runs, start=1):
        tags = {"variant": variant, "dataset": spec.dataset, "seed": seed,
                "data_source": prep.data_source, "data_md5": prep.data_md5 or "unrecorded",
                "capped": capped_tag(capped)}
        if together:
            tags["trained_with"] = f"{len(seeds)} seeds side by side"
        with tracked_run(experiment=task.experiment, run_name=variant, params=run_params,
                         tags=tags, root=repo_root(),
                         claim=checkpoint.with_suffix(".run.json")) as run:
            if n == 1:   # dead attempts' claims are closed now; live ones are respected
                remove_superseded(checkpoints)   # metrics newer than a checkpoint: stale
            on_epoch = lambda epoch, row: run.log_metrics(epoch_metrics(row),  # noqa: E731
                                                          step=epoch)
            if torch_model:
                run.log_training_data(task.training_rows(), name=f"{spec.dataset}-train",
                                      source=str(Path(prepared).resolve()))
            if together and n == 1:
                # Every seed trains now, inside the first seed's run (its epochs logged as
                # they end; the others' when their runs open below).
                built = [build(r.seed) for r in runs]
                try:
                    results = fit_together(
                        built, task, [r.config for r in runs], device,
                        checkpoints=[r.checkpoint for r in runs],
                        fingerprints=[r.fingerprint for r in runs],
                        on_epochs=[on_epoch] + [None] * (len(runs) - 1),
                        descs=[r.desc for r in runs], progress=progress,
                        threads=thread_control(policy))
                except Exception as e:
                    # This run ends FAILED for every seed's failure: its tag says whose.
                    with contextlib.suppress(Exception):    # the stage's error comes first
                        run.set_tag("side_by_side_failure", redact(
                            (str(e).splitlines() or [type(e).__name__])[0])[:500])
                    raise
                trained = list(zip(built, results))
            if together:
                model, result = trained[n - 1]
                if n > 1:
                    for row in result.history:
                        on_epoch(int(row["epoch"]), row)
                n_params = count_parameters(model)
            elif torch_model:
                model = build(seed)
                result = fit(model, task, config, device, checkpoint=checkpoint,
                             fingerprint=fingerprint, desc=desc, progress=progress,
                             threads=thread_control(policy),
                             epochs_after=(len(seeds) - n) * config.epochs,
                             on_epoch=on_epoch)
                n_params = count_parameters(model)
            else:                            # scikit-learn baseline: one fit, no epochs
                result, model = fit_tfidf(task.prepared, ngram_max=spec.ngram_max, c=spec.c,
                                          seed=seed)
                n_params = count_tfidf_parameters(model)
                for row in result.history:
                    run.log_metrics(epoch_metrics(row), step=row["epoch"])
            metrics: dict[str, Any] = {
                f"{split}_{k}": values[k] for split, values in
                (("val", result.val), ("test", result.test)) for k in task.metric_keys}
            metrics |= {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                        "n_params": n_params, "seconds_per_epoch": result.seconds_per_epoch,
                        "device": str(device), "mlflow_run_id": run.id}
            if capped:
                metrics["capped"] = capped
            # Inside the run: a refused result ends it FAILED, and nothing is written.
            refuse_non_finite(desc, metrics, output=outputs.metrics,
                              advice=lambda key: advice(key, train, task),
                              first=lambda key: key.endswith("_auc"))
            run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            run.log_dict(metrics, f"{variant}.json")     # this seed's metrics file
            run.log_loss_curves(result.history, f"{desc} (best epoch {result.best_epoch})")
            if torch_model:
                run.log_model(model.cpu())
        per_seed.append((seed, metrics, result.history))
        models.append(model)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if k.startswith(("val_", "test_")))
        log.info("%s: %s; best epoch %d, %s parameters, %.1f s/epoch on %s", desc, shown,
                 result.best_epoch, f"{n_params:,}", result.seconds_per_epoch, metrics["device"])

    metrics, history = combine_seeds(per_seed)
    write_json(outputs.metrics, metrics)
    write_plots(outputs.plots, history, task.plot_columns)
    with atomic_output(outputs.model) as tmp:      # the first seed's weights are the model
        if torch_model:
            torch.save(models[0].state_dict(), tmp)
        else:
            tmp.write_bytes(pickle.dumps(models[0]))
    for path in [checkpoints / f"{variant}.pt", *checkpoints.glob(f"{variant}.seed*.pt")]:
        path.unlink(missing_ok=True)
    remove_if_empty(checkpoints)
    if len(seeds) > 1:
        shown = ", ".join(f"{k} {metrics[k]:.4f} +- {metrics[k + '_std']:.4f}"
                          for k in metrics if f"{k}_std" in metrics)
        log.info("%s, %d seeds: %s", variant, len(seeds), shown)
    return metrics
