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

from rnnlab.synthetic import JENA_CSV_NAME, write_imdb_tarball

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


@pytest.fixture
def repo(tmp_path, http_server, small_jena_zip):
    """A fresh copy of the project whose params point at small archives on loopback HTTP."""
    repo = project_copy(tmp_path / "clone")
    zip_path, md5 = small_jena_zip
    shutil.copy(zip_path, http_server.root / "jena.zip")
    imdb_md5 = write_imdb_tarball(http_server.root / "imdb.tar.gz", per_class=40, seed=2)
    set_params(repo, data__jena__url=http_server.url("jena.zip"), data__jena__md5=md5,
               data__imdb__url=http_server.url("imdb.tar.gz"), data__imdb__md5=imdb_md5,
               imdb__maxlen=60, imdb__max_features=300,
               **{f"jena__{k}": v for k, v in SMALL_JENA.items()})
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "initial")
    return repo


def test_data_half_end_to_end(repo, http_server, small_jena_zip):
    import zipfile

    from mlflow.tracking import MlflowClient

    zip_path, md5 = small_jena_zip
    url = http_server.url("jena.zip")

    # A wrong checksum stops the pipeline with one clear line and leaves no file behind.
    set_params(repo, data__jena__md5="0" * 32)
    failed = sh(repo, "dvc", "repro", "naive", check=False)
    assert failed.returncode != 0
    assert "error:" in failed.stderr and "md5 mismatch" in failed.stderr
    assert url in failed.stderr and md5 in failed.stderr
    assert "params.yaml: data.jena.md5" in failed.stderr
    assert not (repo / "data" / "raw").exists() or not any((repo / "data" / "raw").iterdir())

    set_params(repo, data__jena__md5=md5)
    sh(repo, "dvc", "repro", "naive")

    csv = repo / "data/raw/jena_climate_2009_2016.csv"
    assert hashlib.md5(csv.read_bytes()).hexdigest() == md5
    assert csv.read_bytes() == zipfile.ZipFile(zip_path).read(JENA_CSV_NAME)
    prepared = repo / "data/prepared/jena"
    assert np.load(prepared / "features.npy").shape == (5000, 14)
    windows = json.loads((repo / "data/prepared/jena_windows/windows.json").read_text())
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
    again = sh(repo, "dvc", "repro", "naive")
    assert "didn't change, skipping" in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 1

    # An experiment with another delay, in a temporary copy under .dvc/tmp/exps, reruns
    # windows and naive (not download/normalize) and logs to the same store.
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "results")
    exp_run = sh(repo, "dvc", "exp", "run", "--temp", "-n", "delay12", "-S", "jena.delay=12",
                 "naive")
    assert "Running stage 'naive'" in exp_run.stdout
    assert "Running stage 'normalize_jena'" not in exp_run.stdout
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    assert len(runs) == 2 and runs[0].data.tags["dvc_exp_name"] == "delay12"
    assert runs[0].data.params["jena.delay"] == "12"
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))


TRAIN_CAPS = {"train__max_epochs": 1, "train__steps_per_epoch": 3, "train__max_eval_batches": 2,
              "gradients__distance": 10, "gradients__train_steps": 5, "gradients__batches": 2,
              "gradients__explode__steps": 10}


def test_whole_pipeline_end_to_end(repo, monkeypatch):
    """`dvc repro` of everything: every variant of both halves trains briefly, is tracked."""
    from mlflow.tracking import MlflowClient

    models = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    variants = [k for k, v in models.items() if v["dataset"] == "jena"]
    imdb_variants = [k for k, v in models.items() if v["dataset"] == "imdb"]
    assert {"dense", "gru", "gru_dropout", "gru_stacked", "gru_reversed", "bigru", "conv_gru",
            "lstm"} <= set(variants)
    assert {"imdb_dense", "imdb_simplernn", "imdb_lstm", "imdb_lstm_reversed", "imdb_bilstm",
            "imdb_tfidf_logreg"} <= set(imdb_variants)
    set_params(repo, **TRAIN_CAPS, models__conv_gru__lookback=120)
    sh(repo, "dvc", "repro")

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    imdb_exp = client.get_experiment_by_name("rnnlab-imdb")
    imdb_runs = {r.info.run_name: r for r in client.search_runs([imdb_exp.experiment_id])}
    assert set(imdb_runs) == set(imdb_variants)
    for variant in imdb_variants:
        metrics = json.loads((repo / f"metrics/{variant}.json").read_text())
        assert set(metrics) >= {"val_accuracy", "test_accuracy", "val_auc", "test_auc",
                                "val_loss", "test_loss", "best_epoch", "n_params",
                                "seconds_per_epoch", "device", "mlflow_run_id"}
        assert 0 <= metrics["val_accuracy"] <= 1 and metrics["mlflow_run_id"] == \
            imdb_runs[variant].info.run_id
        assert imdb_runs[variant].data.tags["dataset"] == "imdb"
    # The generated reviews carry a clear signal: the classical baseline finds it.
    assert json.loads((repo / "metrics/imdb_tfidf_logreg.json").read_text())["test_accuracy"] > 0.8

    exp = client.get_experiment_by_name("rnnlab-jena")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"naive", "gradients", *variants}
    grads = json.loads((repo / "metrics/gradients.json").read_text())
    for cell in ("rnn", "gru", "lstm"):
        assert 0 < grads[f"{cell}_ratio_10_init"] < 1
    assert grads["explode_max_applied_norm_clip"] <= 1.0 + 1e-5
    assert grads["mlflow_run_id"] == runs["gradients"].info.run_id
    assert (repo / "plots/gradients.png").read_bytes()[:4] == b"\x89PNG"
    for variant in variants:
        metrics = json.loads((repo / f"metrics/{variant}.json").read_text())
        assert set(metrics) >= {"val_mae", "test_mae", "val_mae_degc", "test_mae_degc",
                                "best_epoch", "n_params", "seconds_per_epoch", "device",
                                "mlflow_run_id"}
        assert 0 < metrics["val_mae"] < 5 and metrics["best_epoch"] == 1
        assert metrics["device"] == "cpu" and metrics["n_params"] > 0
        run = runs[variant]
        assert run.info.run_id == metrics["mlflow_run_id"]
        assert run.data.metrics["val_mae"] == pytest.approx(metrics["val_mae"])
        assert run.data.tags["variant"] == variant and run.data.tags["dataset"] == "jena"
        assert run.data.params["train.epochs"] == "1"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [1]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"loss_curves.png", f"{variant}.json"} <= artifacts
        assert run.inputs.dataset_inputs, "the training data is logged as a dataset input"
        assert (repo / f"plots/{variant}.csv").read_text().startswith(
            "epoch,train_loss,val_loss,val_mae,val_mae_degc\n1,")
        assert (repo / f"models/{variant}.pt").stat().st_size > 0
    # The logged model loads and predicts.
    import mlflow.pytorch
    import torch
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    model = mlflow.pytorch.load_model(f"runs:/{runs['gru'].info.run_id}/model")
    assert model(torch.zeros(2, 24, 14)).shape == (2,)
    # The top-level plot overlays every variant's validation curve.
    shown = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)
    assert "jena_validation_mae" in json.dumps(shown)
    # Editing one variant reruns only that variant.
    set_params(repo, models__lstm__units=[16])
    rerun = sh(repo, "dvc", "repro")
    assert "Running stage 'train@lstm'" in rerun.stdout
    assert "Running stage 'train@gru'" not in rerun.stdout
