"""Same results in meaning: one default epoch with the fused C++ recurrences and without them.

Run by hand, after `dvc repro windows_jena` (any Jena file; the full-size one for the
issue's check):

    PYTHONPATH=src python bench/bench_reference.py [--variants gru gru_dropout]

For each variant, two processes train one default epoch (train.steps_per_epoch steps, a
full validation pass) from the same seed: one with the fused recurrences, one with
``RNNLAB_NO_FUSED=1`` (PyTorch's loops: the reference path). Prints both validation MAEs,
their difference and each epoch's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_EPOCH = r"""
import json, sys, time
from pathlib import Path
import torch
from rnnlab.tools.params import load_params
from rnnlab.training.tasks import build_task
from rnnlab.nn.models import build_model
from rnnlab.training.engine import TrainConfig, fit
from rnnlab.training.seeds import seed_everything
from rnnlab.nn import fused
root, variant = Path(sys.argv[1]), sys.argv[2]
params = load_params(root / "params.yaml")
spec = params.variant(variant)
data = build_task(spec, params.jena, params.train, root / "data/prepared/jena",
                  root / "data/prepared/jena_windows")
seed_everything(params.seed)
model = build_model(spec, n_features=data.task.n_inputs, timesteps=data.task.timesteps,
                    init=params.train.init)
config = TrainConfig(epochs=1, steps_per_epoch=data.steps_per_epoch, seed=params.seed)
result = fit(model, data.task, config, torch.device("cpu"), progress=False)
print(json.dumps({"val_mae": result.val["mae"], "seconds": result.seconds_per_epoch,
                  "fused": fused.available()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["gru", "gru_dropout"])
    parser.add_argument("--root", default=str(ROOT), help="a repository with data/prepared/jena")
    args = parser.parse_args()
    print("| variant | val MAE fused | val MAE reference | difference | s/epoch fused | "
          "s/epoch reference |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        runs = {}
        for label, extra in (("fused", {}), ("reference", {"RNNLAB_NO_FUSED": "1"})):
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **extra)
            done = subprocess.run([sys.executable, "-c", ONE_EPOCH, args.root, variant],
                                  env=env, capture_output=True, text=True, check=True)
            runs[label] = json.loads(done.stdout.strip().splitlines()[-1])
        assert runs["fused"]["fused"] and not runs["reference"]["fused"]
        a, b = runs["fused"], runs["reference"]
        print(f"| {variant} | {a['val_mae']:.6f} | {b['val_mae']:.6f} | "
              f"{abs(a['val_mae'] - b['val_mae']):.2e} | {a['seconds']:.1f} | {b['seconds']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
