"""DVC stage: the naive persistence baseline's MAE on val and test, to DVC and MLflow."""

import argparse
import json
from pathlib import Path

from _params import JenaConfig, SourceConfig, load_params, run_stage, section

from rnnlab.download import atomic_output
from rnnlab.jena import CANONICAL_MD5, load_features
from rnnlab.naive import naive_mae
from rnnlab.paths import repo_root
from rnnlab.tracking import tracked_run
from rnnlab.windows import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("windows", type=Path)
    parser.add_argument("metrics", type=Path)
    args = parser.parse_args()
    params = load_params()
    jena = section(params, "jena", JenaConfig)
    source = section(params, "data.jena", SourceConfig)

    features, stats = load_features(args.prepared)       # memory-mapped
    spec = load_spec(args.windows)
    target_std = stats["std"][stats["target"]]
    metrics = {}
    for split in ("val", "test"):
        mae = naive_mae(features, spec, split)
        metrics[f"{split}_mae"] = mae
        metrics[f"{split}_mae_degc"] = mae * target_std
    real = (source.md5 or "").lower() == CANONICAL_MD5
    tags = {"variant": "naive", "dataset": "jena", "seed": params.get("seed"),
            "data_md5": source.md5, "data_source": "canonical" if real else "other"}
    run_params = {"jena": vars(jena), "data": {"jena": vars(source)}, "seed": params.get("seed")}
    with tracked_run(experiment="rnnlab-jena", run_name="naive", params=run_params,
                     tags=tags, root=repo_root()) as run:
        run.log_metrics(metrics)
        metrics |= {"n_params": 0, "n_val_windows": spec.count("val"),
                    "n_test_windows": spec.count("test"), "device": "cpu",
                    "mlflow_run_id": run.id}
        with atomic_output(args.metrics) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        run.log_artifact(args.metrics)
    print(f"naive: val MAE {metrics['val_mae']:.4f} ({metrics['val_mae_degc']:.2f} degC), "
          f"test MAE {metrics['test_mae']:.4f} ({metrics['test_mae_degc']:.2f} degC)"
          + ("" if real else "  [data is not the canonical Jena file: not comparable with "
                             "the lecture's 0.29 / 2.57 degC]"))


if __name__ == "__main__":
    run_stage(main)
