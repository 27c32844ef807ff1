"""DVC stage: train one model variant (``models.<variant>`` in params.yaml), log to MLflow."""

import argparse
import csv
import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _params import JenaConfig, SourceConfig, load_params, run_stage, section

from rnnlab.config import from_mapping
from rnnlab.device import resolve_device
from rnnlab.download import atomic_output
from rnnlab.errors import RnnlabError
from rnnlab.jena import CANONICAL_MD5, load_features
from rnnlab.models import ModelSpec, build_model, count_parameters
from rnnlab.paths import repo_root
from rnnlab.tasks import JenaTask
from rnnlab.tracking import tracked_run
from rnnlab.train import TrainConfig, fit, seed_everything
from rnnlab.windows import make_window_spec

CHECKPOINTS = Path("checkpoints")   # resume state; not a DVC out (DVC clears outs before a run)


@dataclass(frozen=True)
class TrainParams:
    steps_per_epoch: int | None
    max_epochs: int | None = None
    max_eval_batches: int | None = None
    clip_norm: float | None = None


def write_outputs(result, metrics: dict, plots: Path, metrics_path: Path) -> None:
    with atomic_output(metrics_path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    columns = ["epoch", "train_loss", "val_loss", "val_mae", "val_mae_degc"]
    with atomic_output(plots) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in result.history:
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
    if spec.dataset != "jena":
        raise RnnlabError(f"{where}.dataset: {spec.dataset!r} has no training stage yet "
                          "(only jena)")
    jena = section(params, "jena", JenaConfig)
    train = section(params, "train", TrainParams)
    source = section(params, "data.jena", SourceConfig)
    seed = params.get("seed")
    if not isinstance(seed, int):
        raise RnnlabError(f"params.yaml: seed: expected an integer, got {seed!r}")
    device = resolve_device(str(params.get("device", "auto")))

    features, stats = load_features(args.prepared, mmap=False)            # (N, 14) float32
    window = make_window_spec(n_rows=stats["n_rows"], lookback=spec.lookback or jena.lookback,
                              step=spec.step or jena.step, delay=jena.delay,
                              target_index=stats["target_index"], splits=jena.splits)
    target_std = stats["std"][stats["target"]]
    task = JenaTask(features, window, batch_size=jena.batch_size, reverse=spec.reverse,
                    target_std=target_std)
    seed_everything(seed)
    model = build_model(spec, n_features=features.shape[1], timesteps=window.timesteps)
    epochs = min(spec.epochs, train.max_epochs) if train.max_epochs else spec.epochs
    config = TrainConfig(epochs=epochs, steps_per_epoch=train.steps_per_epoch, seed=seed,
                         clip_norm=train.clip_norm, max_eval_batches=train.max_eval_batches)

    run_params = {"variant": args.variant, "model": asdict(spec), "train": asdict(config),
                  "jena": asdict(jena) | {"lookback": window.lookback, "step": window.step},
                  "data": {"jena": asdict(source)}, "seed": seed, "device": str(device)}
    fingerprint = hashlib.sha256(json.dumps(
        {**run_params, "data_stats": stats}, sort_keys=True, default=str).encode()).hexdigest()
    real = (source.md5 or "").lower() == CANONICAL_MD5
    tags = {"variant": args.variant, "dataset": "jena", "seed": seed,
            "data_source": "canonical" if real else "other"}
    checkpoint = CHECKPOINTS / f"{args.variant}.pt"
    checkpoint.parent.mkdir(exist_ok=True)

    with tracked_run(experiment="rnnlab-jena", run_name=args.variant, params=run_params,
                     tags=tags, root=repo_root()) as run:
        run.log_training_data(features[window.train[0] - window.lookback:window.train[1]],
                              name="jena-normalized-train", source=source.url)
        result = fit(model, task, config, device, checkpoint=checkpoint,
                     fingerprint=fingerprint, desc=args.variant,
                     on_epoch=lambda epoch, row: run.log_metrics(row, step=epoch),
                     progress=sys.stderr.isatty())
        metrics = {"val_mae": result.val["mae"], "test_mae": result.test["mae"],
                   "val_mae_degc": result.val["mae_degc"],
                   "test_mae_degc": result.test["mae_degc"], "best_epoch": result.best_epoch,
                   "epochs_run": len(result.history), "n_params": count_parameters(model),
                   "seconds_per_epoch": result.seconds_per_epoch, "device": str(device),
                   "mlflow_run_id": run.id}
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        write_outputs(result, metrics, args.plots, args.metrics)
        with atomic_output(args.model) as tmp:
            torch.save(model.state_dict(), tmp)
        run.log_artifact(args.metrics)
        run.log_loss_curves(result.history, f"{args.variant} (best epoch {result.best_epoch})")
        run.log_model(model.cpu())
    checkpoint.unlink(missing_ok=True)
    print(f"{args.variant}: val MAE {metrics['val_mae']:.4f} ({metrics['val_mae_degc']:.2f} degC), "
          f"test MAE {metrics['test_mae']:.4f} ({metrics['test_mae_degc']:.2f} degC), "
          f"best epoch {result.best_epoch}, {metrics['n_params']:,} parameters, "
          f"{result.seconds_per_epoch:.1f} s/epoch on {device}")


if __name__ == "__main__":
    run_stage(main)
