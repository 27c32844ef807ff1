"""End to end: real `dvc repro` in a fresh copy of this repository, data from loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rnnlab.synthetic import JENA_CSV_NAME

ROOT = Path(__file__).resolve().parents[1]
SMALL_JENA = {"lookback": 144, "step": 6, "delay": 24, "train_rows": [0, 2500],
              "val_rows": [2501, 3800], "test_rows": [3801, None]}


def project_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone would have them, in a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def env_for_tools() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    return env


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=env_for_tools(), capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(repo: Path, **sections) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in sections.items():
        node = params
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def hand_naive_mae(csv_bytes: bytes, split: tuple[int, int], lookback=144, step=6, delay=24):
    """The persistence MAE straight from the CSV text, by the lecture's recipe."""
    lines = csv_bytes.decode().split("\n")[1:]
    temp = np.array([float(line.split(",")[2]) for line in lines])
    std = temp[:2500].std()
    lo, hi = split
    rows = np.arange(lo + lookback, hi)
    return np.mean(np.abs(temp[rows + delay] - temp[rows - step])) / std


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return project_copy(tmp_path_factory.mktemp("clone"))


def test_dvc_repro_end_to_end(repo, http_server, small_jena_zip):
    import zipfile

    from mlflow.tracking import MlflowClient

    zip_path, md5 = small_jena_zip
    shutil.copy(zip_path, http_server.root / "jena.zip")
    url = http_server.url("jena.zip")
    set_params(repo, data__jena__url=url, data__jena__md5="0" * 32,
               **{f"jena__{k}": v for k, v in SMALL_JENA.items()})
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "initial")

    # A wrong checksum stops the pipeline with one clear line and leaves no file behind.
    failed = sh(repo, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "error:" in failed.stderr and "md5 mismatch" in failed.stderr
    assert url in failed.stderr and md5 in failed.stderr
    assert "params.yaml: data.jena.md5" in failed.stderr
    assert not (repo / "data" / "raw").exists() or not any((repo / "data" / "raw").iterdir())

    set_params(repo, data__jena__md5=md5)
    sh(repo, "git", "commit", "-qam", "point at the loopback mirror")
    sh(repo, "dvc", "repro")

    csv = repo / "data/raw/jena_climate_2009_2016.csv"
    assert hashlib.md5(csv.read_bytes()).hexdigest() == md5
    assert csv.read_bytes() == zipfile.ZipFile(zip_path).read(JENA_CSV_NAME)
    prepared = repo / "data/prepared/jena/normalized"
    assert np.load(prepared / "features.npy").shape == (5000, 14)
    windows = json.loads((repo / "data/prepared/jena/windows/windows.json").read_text())
    assert windows["val"] == [2501 + 144, 3800] and windows["timesteps"] == 24

    metrics = json.loads((repo / "metrics/naive.json").read_text())
    raw = csv.read_bytes()
    assert metrics["val_mae"] == pytest.approx(hand_naive_mae(raw, (2501, 3800)), rel=1e-5)
    assert metrics["test_mae"] == pytest.approx(hand_naive_mae(raw, (3801, 5000 - 25)), rel=1e-5)
    stats = json.loads((prepared / "stats.json").read_text())
    assert metrics["val_mae_degc"] == pytest.approx(metrics["val_mae"] * stats["std"]["T (degC)"])

    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    dvc_metrics = shown[""]["data"]["metrics/naive.json"]["data"]
    assert dvc_metrics["val_mae"] == pytest.approx(metrics["val_mae"])

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("rnnlab-jena")
    assert exp.artifact_location == (repo / "mlruns").as_uri()
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == metrics["mlflow_run_id"] and run.info.run_name == "naive"
    assert run.data.metrics["val_mae"] == pytest.approx(metrics["val_mae"])
    head = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert run.data.tags["git_commit"] == head
    assert run.data.tags["dvc_exp_name"] == "workspace"
    assert run.data.tags["variant"] == "naive" and run.data.tags["data_source"] == "other"
    assert run.data.params["jena.lookback"] == "144"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["naive.json"]

    # Nothing changed: nothing reruns, no new run.
    again = sh(repo, "dvc", "repro")
    assert "didn't change, skipping" in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 1

    # An experiment with another delay reruns windows and naive, not download/normalize.
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "results")
    exp_run = sh(repo, "dvc", "exp", "run", "-n", "delay12", "-S", "jena.delay=12")
    assert "Running stage 'naive'" in exp_run.stdout
    assert "Running stage 'normalize_jena'" not in exp_run.stdout
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.tags["dvc_exp_name"] == "delay12"
    assert runs[0].data.params["jena.delay"] == "12"
