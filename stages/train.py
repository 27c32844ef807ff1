"""DVC stage: train one model variant (``models.<variant>`` in params.yaml), log to MLflow."""

import argparse
import csv
import hashlib
import json
import pickle
import sys
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from _params import ImdbConfig, JenaConfig, SourceConfig, load_params, run_stage, section

from rnnlab.config import from_mapping
from rnnlab.device import resolve_device
from rnnlab.download import atomic_output
from rnnlab.errors import RnnlabError
from rnnlab.jena import CANONICAL_MD5, load_features
from rnnlab.models import ModelSpec, build_model, count_parameters
from rnnlab.paths import repo_root
from rnnlab.imdb import CANONICAL_MD5 as IMDB_CANONICAL_MD5
from rnnlab.tasks import ImdbTask, JenaTask
from rnnlab.tracking import tracked_run
from rnnlab.train import TrainConfig, fit, seed_everything
from rnnlab.windows import make_window_spec

CHECKPOINTS = Path("checkpoints")   # resume state; not a DVC out (DVC clears outs before a run)


@dataclass(frozen=True)
class TrainParams:
    steps_per_epoch: int | None
    imdb_steps_per_epoch: int | None = None
    max_epochs: int | None = None
    max_eval_batches: int | None = None
    clip_norm: float | None = None


# What each dataset reports: the metric keys of metrics/<variant>.json and plots columns.
REPORT = {
    "jena": {"metrics": ("mae", "mae_degc"), "plots": ("val_mae", "val_mae_degc"),
             "experiment": "rnnlab-jena"},
    "imdb": {"metrics": ("accuracy", "auc", "loss"), "plots": ("val_accuracy", "val_auc"),
             "experiment": "rnnlab-imdb"},
}


def write_outputs(history, metrics: dict, plots: Path, metrics_path: Path, extra: tuple) -> None:
    with atomic_output(metrics_path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    columns = ["epoch", "train_loss", "val_loss", *extra]
    with atomic_output(plots) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in history:
                writer.writerow([row["epoch"]] + [f"{row[c]:.6f}" for c in columns[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()

    params = load_params()
    models = params.get("models") or {}
    if args.variant not in models:
        raise RnnlabError(f"params.yaml: models: no variant {args.variant!r}; "
                          f"known: {', '.join(models)}")
    where = f"params.yaml: models.{args.variant}"
    spec = from_mapping(ModelSpec, models[args.variant], where=where)
    if spec.dataset not in REPORT:
        raise RnnlabError(f"{where}.dataset: {spec.dataset!r}; choose one of {', '.join(REPORT)}")
    train = section(params, "train", TrainParams)
    source = section(params, f"data.{spec.dataset}", SourceConfig)
    seed = params.get("seed")
    seeds = seed_list(params)
    device = resolve_device(str(params.get("device", "auto")))
    report = REPORT[spec.dataset]
    epochs = min(spec.epochs, train.max_epochs) if train.max_epochs else spec.epochs

    if spec.dataset == "jena":
        jena = section(params, "jena", JenaConfig)
        features, stats = load_features(args.prepared, mmap=False)        # (N, 14) float32
        window = make_window_spec(n_rows=stats["n_rows"], lookback=spec.lookback or jena.lookback,
                                  step=spec.step or jena.step, delay=jena.delay,
                                  target_index=stats["target_index"], splits=jena.splits)
        task = JenaTask(features, window, batch_size=jena.batch_size, reverse=spec.reverse,
                        target_std=stats["std"][stats["target"]])
        n_inputs, timesteps, steps = features.shape[1], window.timesteps, train.steps_per_epoch
        data_params = asdict(jena) | {"lookback": window.lookback, "step": window.step}
        train_data = features[window.train[0] - window.lookback:window.train[1]]
        real = (source.md5 or "").lower() == CANONICAL_MD5
    else:
        imdb = section(params, "imdb", ImdbConfig)
        stats = json.loads((args.prepared / "stats.json").read_text())
        n_inputs, timesteps, steps = stats["vocab_size"], imdb.maxlen, train.imdb_steps_per_epoch
        data_params = asdict(imdb)
        real = (source.md5 or "").lower() == IMDB_CANONICAL_MD5
        task = None if spec.arch == "tfidf_logreg" else ImdbTask(
            args.prepared, batch_size=imdb.batch_size, reverse=spec.reverse)
        train_data = None if task is None else task.data["train"][0].numpy()

    config = TrainConfig(epochs=epochs, steps_per_epoch=steps, seed=seed,
                         clip_norm=train.clip_norm, max_eval_batches=train.max_eval_batches)
    base_params = {"variant": args.variant, "model": asdict(spec), spec.dataset: data_params,
                   "data": {spec.dataset: asdict(source)}, "device": str(device),
                   "seeds": seeds, "threads": torch.get_num_threads()}
    CHECKPOINTS.mkdir(exist_ok=True)

    per_seed = []
    for run_seed in seeds:
        config = replace(config, seed=run_seed)
        run_params = base_params | {"train": asdict(config), "seed": run_seed}
        fingerprint = hashlib.sha256(json.dumps(       # thread count aside: resume anyway
            {**run_params, "threads": None, "data_stats": stats}, sort_keys=True,
            default=str).encode()).hexdigest()
        tags = {"variant": args.variant, "dataset": spec.dataset, "seed": run_seed,
                "data_source": "canonical" if real else "other"}
        suffix = "" if len(seeds) == 1 else f".seed{run_seed}"
        checkpoint = CHECKPOINTS / f"{args.variant}{suffix}.pt"
        desc = args.variant if len(seeds) == 1 else f"{args.variant} seed {run_seed}"
        with tracked_run(experiment=report["experiment"], run_name=args.variant,
                         params=run_params, tags=tags, root=repo_root()) as run:
            if task is None:                 # scikit-learn baseline: one fit, no epochs
                history, result_val, result_test, best_epoch, seconds, model = fit_tfidf(
                    spec, args.prepared, run_seed)
                n_params = int(model[-1].coef_.size + model[-1].intercept_.size)
                for row in history:
                    run.log_metrics(epoch_metrics(row), step=row["epoch"])
            else:
                run.log_training_data(train_data, name=f"{spec.dataset}-train", source=source.url)
                seed_everything(run_seed)
                model = build_model(spec, n_features=n_inputs, timesteps=timesteps)
                result = fit(model, task, config, device, checkpoint=checkpoint,
                             fingerprint=fingerprint, desc=desc,
                             on_epoch=lambda epoch, row: run.log_metrics(epoch_metrics(row),
                                                                         step=epoch),
                             progress=sys.stderr.isatty())
                history, result_val, result_test = result.history, result.val, result.test
                best_epoch, seconds = result.best_epoch, result.seconds_per_epoch
                n_params = count_parameters(model)
            metrics = {f"{split}_{k}": values[k] for split, values in
                       (("val", result_val), ("test", result_test)) for k in report["metrics"]}
            metrics |= {"best_epoch": best_epoch, "epochs_run": len(history),
                        "n_params": n_params, "seconds_per_epoch": seconds,
                        "device": "cpu" if task is None else str(device),
                        "mlflow_run_id": run.id}
            run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            run.log_dict(metrics, f"{args.variant}.json")     # this seed's metrics file
            run.log_loss_curves(history, f"{desc} (best epoch {best_epoch})")
            if task is not None:
                run.log_model(model.cpu())
        per_seed.append((run_seed, metrics, history, model))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if k.startswith(("val_", "test_")))
        print(f"{desc}: {shown}; best epoch {best_epoch}, {n_params:,} parameters, "
              f"{seconds:.1f} s/epoch on {metrics['device']}")

    metrics, history = combine_seeds([(s, m, h) for s, m, h, _ in per_seed])
    write_outputs(history, metrics, args.plots, args.metrics, report["plots"])
    model = per_seed[0][3]                  # the first seed's weights are the stage's model
    with atomic_output(args.model) as tmp:
        if task is None:
            with open(tmp, "wb") as f:
                pickle.dump(model, f)
        else:
            torch.save(model.state_dict(), tmp)
    for path in [CHECKPOINTS / f"{args.variant}.pt", *CHECKPOINTS.glob(f"{args.variant}.seed*.pt")]:
        path.unlink(missing_ok=True)
    if len(seeds) > 1:
        shown = ", ".join(f"{k} {metrics[k]:.4f} +- {metrics[k + '_std']:.4f}"
                          for k in metrics if k.startswith(("val_", "test_"))
                          and not k.endswith("_std") and f"{k}_std" in metrics)
        print(f"{args.variant}, {len(seeds)} seeds: {shown}")


def epoch_metrics(row: dict) -> dict:
    """One epoch's figures as MLflow metrics ``epoch/<name>`` (a chart section of their own):
    the plain names (``val_mae``...) hold the kept best epoch's, as metrics/<variant>.json."""
    return {f"epoch/{k}": v for k, v in row.items() if k != "epoch"}


def seed_list(params: dict) -> list[int]:
    """``seeds`` when given (each variant trains once per seed), else ``[seed]``."""
    seed = params.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RnnlabError(f"params.yaml: seed: expected an integer, got {seed!r}")
    seeds = params.get("seeds") or []
    if not isinstance(seeds, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise RnnlabError(f"params.yaml: seeds: expected a list of integers such as [1, 2, 3] "
                          f"(or [] for the one `seed`), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise RnnlabError(f"params.yaml: seeds: {seeds} repeats a seed; list each once")
    return seeds or [seed]


def combine_seeds(results: list[tuple[int, dict, list[dict]]]) -> tuple[dict, list[dict]]:
    """One seed: its metrics and history. Several: means, ``<metric>_std`` (ddof 1) and
    ``per_seed``; the history is the per-epoch mean over seeds."""
    if len(results) == 1:
        _, metrics, history = results[0]
        return metrics | {"n_seeds": 1}, history
    first = results[0][1]
    metrics: dict = {}
    for key, value in first.items():
        values = [m[key] for _, m, _ in results]
        if key == "mlflow_run_id" or not isinstance(value, (int, float)):
            metrics[key] = value
        else:
            metrics[key] = float(statistics.fmean(values))
            if key.startswith(("val_", "test_")):
                metrics[f"{key}_std"] = float(statistics.stdev(values))
    metrics["n_seeds"] = len(results)
    metrics["per_seed"] = {str(s): {k: v for k, v in m.items()
                                    if k.startswith(("val_", "test_")) or k in
                                    ("best_epoch", "mlflow_run_id")}
                           for s, m, _ in results}
    n_epochs = min(len(h) for _, _, h in results)
    history = [{key: float(statistics.fmean(h[i][key] for _, _, h in results))
                for key in results[0][2][i]} for i in range(n_epochs)]
    for row in history:
        row["epoch"] = int(row["epoch"])
    return metrics, history


def fit_tfidf(spec: ModelSpec, prepared: Path, seed: int):
    """The scikit-learn baseline, shaped like one epoch of the engine's history."""
    import time

    from rnnlab.baselines import binary_metrics, make_tfidf_logreg
    from rnnlab.imdb import load_imdb, load_texts

    texts = load_texts(prepared)
    labels = {s: load_imdb(prepared, s)[1] for s in ("train", "val", "test")}
    began = time.perf_counter()
    model = make_tfidf_logreg(ngram_max=spec.ngram_max, c=spec.c, seed=seed)
    model.fit(texts["train"], labels["train"])
    seconds = time.perf_counter() - began
    scores = {s: binary_metrics(model.predict_proba(texts[s])[:, 1], labels[s])
              for s in ("train", "val", "test")}
    history = [{"epoch": 1, "train_loss": scores["train"]["loss"], "val_loss": scores["val"]["loss"],
                "val_accuracy": scores["val"]["accuracy"], "val_auc": scores["val"]["auc"],
                "seconds": seconds}]
    return history, scores["val"], scores["test"], 1, seconds, model


if __name__ == "__main__":
    run_stage(main)
