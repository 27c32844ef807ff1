"""End to end: real `dvc repro` in a fresh copy of this repository, data from loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rnnlab.data.synthetic import JENA_CSV_NAME

from _project import env_for_tools, run_queue, set_params, sh, small_project


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
    return small_project(tmp_path / "clone", http_server, small_jena_zip)


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
    # A result names everything it came from: the commit, the lock, the packages, the data.
    lock = hashlib.sha256((repo / "requirements.lock").read_bytes()).hexdigest()[:16]
    assert run.data.tags["lock_sha256"] == lock
    assert len(run.data.tags["env_sha256"]) == 16
    assert run.data.tags["data_md5"] == md5
    assert run.data.tags["dvc_exp_name"] == "workspace"
    assert run.data.tags["variant"] == "naive" and run.data.tags["data_source"] == "other"
    assert run.data.params["jena.lookback"] == "144"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["naive.json"]

    # Nothing changed: nothing reruns, no new run.
    again = sh(repo, "dvc", "repro", "naive")
    assert "didn't change, skipping" in again.stdout
    assert len(client.search_runs([exp.experiment_id])) == 1

    # A good download, then a failing one (a wrong md5): the good copy stays, as DVC sees it
    # (the out is persist: true, so DVC does not delete it before the stage reruns).
    good = csv.read_bytes()
    set_params(repo, data__jena__md5="1" * 32)
    failed = sh(repo, "dvc", "repro", "download_jena", check=False)
    assert failed.returncode != 0 and "md5 mismatch" in failed.stderr
    assert csv.read_bytes() == good
    status = sh(repo, "dvc", "status", "download_jena").stdout
    assert "deleted" not in status and "data.jena" in status, status     # params only
    set_params(repo, data__jena__md5=md5)
    assert "up to date" in sh(repo, "dvc", "status", "naive").stdout

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
    # Named after the experiment too; params as params.yaml writes them, not (0, 2500).
    assert runs[0].info.run_name == "naive (delay12)" and runs[1].info.run_name == "naive"
    assert runs[0].data.params["jena.delay"] == "12"
    assert runs[0].data.params["jena.train_rows"] == "[0, 2500]"
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))

    # A quick look caps the gradients stage too; the report of the Jena half alone runs
    # through DVC (no IMDB data: its deps must not name it) and says the IMDB half did not.
    set_params(repo, train__max_epochs=1, gradients__distance=10)
    sh(repo, "dvc", "repro", "gradients")
    grads = json.loads((repo / "metrics/gradients.json").read_text())
    assert grads["capped"] == {"gradients.train_steps": 20, "gradients.batches": 2}
    report = sh(repo, "dvc", "repro", "-s", "report")
    assert "Running stage 'report'" in report.stdout
    summary = (repo / "reports/summary.md").read_text()
    assert "- IMDB reviews: **this half did not run** in this workspace" in summary
    assert table_row(summary, "naive")[1] == f"{metrics['val_mae']:.3f}"
    assert "Capped: a quick look (`gradients.train_steps` = 20, `gradients.batches` = 2)" \
        in summary
    assert not (repo / "data/prepared/imdb").exists()


def test_whole_pipeline_end_to_end(tiny_pipeline, monkeypatch):
    """`dvc repro` of everything: every variant of both halves trains briefly, is tracked."""
    from mlflow.tracking import MlflowClient

    repo = tiny_pipeline
    models = yaml.safe_load((repo / "params.yaml").read_text())["models"]
    variants = [k for k, v in models.items() if v["dataset"] == "jena"]
    assert "gru64_dropout" in variants           # the README's example, trained like the rest
    imdb_variants = [k for k, v in models.items() if v["dataset"] == "imdb"]
    assert {"dense", "gru", "gru_dropout", "gru_stacked", "gru_reversed", "bigru", "conv_gru",
            "lstm"} <= set(variants)
    assert {"imdb_dense", "imdb_simplernn", "imdb_lstm", "imdb_lstm_reversed", "imdb_bilstm",
            "imdb_tfidf_logreg"} <= set(imdb_variants)

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    imdb_exp = client.get_experiment_by_name("rnnlab-imdb")
    imdb_runs = {r.info.run_name: r for r in client.search_runs([imdb_exp.experiment_id])}
    assert set(imdb_runs) == set(imdb_variants)
    for variant in imdb_variants:
        metrics = json.loads((repo / f"metrics/{variant}.json").read_text())
        assert set(metrics) >= {"val_accuracy", "test_accuracy", "val_auc", "test_auc",
                                "val_loss", "test_loss", "best_epoch", "n_params",
                                "seconds_per_epoch", "device", "mlflow_run_id"}
        assert metrics["n_seeds"] == 1 and "per_seed" not in metrics
        assert 0 <= metrics["val_accuracy"] <= 1 and metrics["mlflow_run_id"] == \
            imdb_runs[variant].info.run_id
        assert imdb_runs[variant].data.tags["dataset"] == "imdb"
        assert imdb_runs[variant].data.tags["data_source"] == "other"   # generated reviews
        assert imdb_runs[variant].data.tags["data_md5"] == json.loads(
            (repo / "data/raw/imdb/archive.json").read_text())["md5"]
        # A run logs the model fields its architecture reads, no others: the UI's
        # model.cell column is empty for dense and tf-idf, not a misleading "lstm".
        params = imdb_runs[variant].data.params
        assert ("model.cell" in params) == (models[variant]["arch"] == "embed_rnn"), variant
        if "model.cell" in params:
            assert params["model.cell"] == models[variant].get("cell", "lstm")
    # The generated reviews carry a clear signal: the classical baseline finds it.
    assert json.loads((repo / "metrics/imdb_tfidf_logreg.json").read_text())["test_accuracy"] > 0.8

    exp = client.get_experiment_by_name("rnnlab-jena")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"naive", "gradients", *variants}
    grads = json.loads((repo / "metrics/gradients.json").read_text())
    for cell in ("rnn", "gru", "lstm"):
        assert grads[f"{cell}_log10_ratio_10_init"] < 0          # the ratio is below 1
        assert f"{cell}_ratio_10_init" not in grads                # DVC would print 0.0
        assert runs["gradients"].data.metrics[f"{cell}_ratio_10_init"] == pytest.approx(
            10 ** grads[f"{cell}_log10_ratio_10_init"], rel=0.03)
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
        assert run.data.tags["seed"] == "1337"
        assert run.data.params["train.epochs"] == "1"
        # A quick look says so (one epoch of its 20 or 40; 2 of 10 evaluation batches).
        assert metrics["capped"] == {"train.max_epochs": 1, "train.max_eval_batches": 2}
        assert run.data.tags["capped"] == "train.max_epochs=1, train.max_eval_batches=2"
        assert run.data.params["train.init"] == "keras"
        history = client.get_metric_history(run.info.run_id, "epoch/val_loss")
        assert [m.step for m in history] == [1]
        assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_mae")
                ] == [pytest.approx(metrics["val_mae"])]
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
    # Every run finished: the store holds exactly the runs the stages made.
    all_runs = client.search_runs([exp.experiment_id, imdb_exp.experiment_id])
    assert len(all_runs) == len(variants) + len(imdb_variants) + 2
    assert {r.info.status for r in all_runs} == {"FINISHED"}


def read_metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / f"{name}.json").read_text())


def table_row(summary: str, variant: str) -> list[str]:
    """The report's row of ``variant``, capped (``| `gru` (capped) |``) or not."""
    (line,) = [ln for ln in summary.splitlines()
               if ln.startswith((f"| `{variant}` |", f"| `{variant}` (capped) |"))]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_puts_every_result_beside_the_lecture(tiny_pipeline):
    repo = tiny_pipeline
    summary = (repo / "reports/summary.md").read_text()
    assert "not the canonical file" in summary and "**real**" not in summary
    assert "Capped run" in summary and "train.max_epochs = 1" in summary
    models = yaml.safe_load((repo / "params.yaml").read_text())["models"]
    lecture_jena = {"naive": "0.290 (2.57)", "dense": "0.300", "gru": "0.265",
                    "gru_dropout": "0.262", "gru_stacked": "0.263", "gru_reversed": "0.400",
                    "bigru": "0.262", "conv_gru": "0.273", "lstm": "–"}
    for variant, lecture in lecture_jena.items():
        row = table_row(summary, variant)
        m = read_metrics(repo, variant)
        assert row[1] == f"{m['val_mae']:.3f}" and row[3] == f"{m['test_mae']:.3f}"
        assert row[2] == f"{m['val_mae_degc']:.2f}" and row[4] == f"{m['test_mae_degc']:.2f}"
        assert row[5].startswith(lecture)
        assert row[7] == "–"        # no Keras side-by-side run on this tiny generated data
        assert row[8] == f"{m['n_params']:,}" and row[10] == "cpu"
    lecture_imdb = {"imdb_dense": "0.88", "imdb_simplernn": "0.85", "imdb_lstm": "0.89",
                    "imdb_lstm_reversed": "0.88", "imdb_bilstm": "0.89", "imdb_tfidf_logreg": "–"}
    for variant, lecture in lecture_imdb.items():
        row = table_row(summary, variant)
        m = read_metrics(repo, variant)
        assert row[1] == f"{m['val_accuracy']:.3f}" and row[4] == f"{m['test_auc']:.3f}"
        assert row[5] == lecture
        assert row[7] == "–"
        assert float(row[9]) == pytest.approx(m["seconds_per_epoch"], abs=0.051)
    for variant in models:     # one row each, matched whole; capped (every one but TF-IDF's
        # one fit: one epoch of its 10 to 40, two evaluation batches) marked as such
        capped = read_metrics(repo, variant).get("capped")
        assert (capped is None) == (variant == "imdb_tfidf_logreg"), variant
        assert table_row(summary, variant)[0] == f"`{variant}`" + (" (capped)" if capped else "")
    assert table_row(summary, "naive")[0] == "`naive`"
    assert "*(capped)*: a quick look" in summary
    for chart in ("jena_validation", "imdb_validation", "jena_vs_lecture", "imdb_vs_lecture"):
        png = (repo / f"reports/{chart}.png").read_bytes()
        assert png[:4] == b"\x89PNG" and len(png) > 10_000
        assert f"]({chart}.png)" in summary
    # The charts are DVC image plots too.
    shown = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)
    assert "reports/jena_validation.png" in shown["data"]


def test_queued_sweep_with_two_workers(pipeline_copy):
    """`dvc exp run --queue` of a 2-point grid, `dvc queue start -j 2` with one torch thread
    per worker: both experiments finish with their own params, metrics and MLflow runs."""
    from mlflow.tracking import MlflowClient

    repo = pipeline_copy
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny results")
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    before = {r.info.run_id for r in client.search_runs(
        [client.get_experiment_by_name("rnnlab-jena").experiment_id])}

    sh(repo, "dvc", "exp", "run", "--queue", "-S", "models.gru_dropout.dropout=0.1,0.3",
       "train@gru_dropout")
    status = run_queue(repo)
    assert status.count("Success") == 2, status

    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    experiments = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                dropout = data["params"]["params.yaml"]["data"]["models"]["gru_dropout"]["dropout"]
                metrics = data["metrics"]["metrics/gru_dropout.json"]["data"]
                experiments[rev["name"]] = (dropout, metrics)
    assert sorted(d for d, _ in experiments.values()) == [0.1, 0.3]

    new = [r for r in client.search_runs(
        [client.get_experiment_by_name("rnnlab-jena").experiment_id])
        if r.info.run_id not in before]
    assert len(new) == 2 and {r.data.tags["variant"] for r in new} == {"gru_dropout"}
    for run in new:
        dropout, metrics = experiments[run.data.tags["dvc_exp_name"]]
        # The sweep's points differ by name in MLflow's runs list, not only by a tag.
        assert run.info.run_name == f"gru_dropout ({run.data.tags['dvc_exp_name']})"
        assert run.data.params["model.dropout"] == str(dropout)
        assert run.data.params["threads"] == "1"
        assert run.info.run_id == metrics["mlflow_run_id"] and run.info.status == "FINISHED"
        assert run.data.metrics["val_mae"] == pytest.approx(metrics["val_mae"])
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db"))

    # `python -m rnnlab.tracking.runs` counts the runs of each DVC experiment.
    listing = sh(repo, sys.executable, "-m", "rnnlab.tracking.runs").stdout
    for name in experiments:
        (line,) = [ln for ln in listing.splitlines() if ln.startswith(f"{name} ")]
        assert line.split()[1:4] == ["rnnlab-jena", "1", "1"] and line.endswith("gru_dropout")
    (total,) = [ln for ln in listing.splitlines() if ln.startswith("total")]
    total_runs = len(client.search_runs([client.get_experiment_by_name(n).experiment_id
                                         for n in ("rnnlab-jena", "rnnlab-imdb")]))
    assert total.split()[1:] == [str(total_runs), str(total_runs)]


def test_editing_one_variant_reruns_only_it(pipeline_copy):
    repo = pipeline_copy
    set_params(repo, models__lstm__units=[16])
    rerun = sh(repo, "dvc", "repro")
    assert "Running stage 'train@lstm'" in rerun.stdout
    assert "Running stage 'report'" in rerun.stdout
    assert "Running stage 'train@gru'" not in rerun.stdout
    assert read_metrics(repo, "lstm")["n_params"] == 4 * 16 * (14 + 16 + 2) + 17


@pytest.mark.hostile
def test_a_checkpoint_superseded_by_a_run_cache_restore_is_removed(pipeline_copy):
    """`dvc repro` of gru with other params is killed with kill -9 after its first
    checkpoint; the params go back and DVC restores gru from its run cache (no code of ours
    runs); the next training stage (dense) removes the stale checkpoint and any temp file
    of a checkpoint write the kill cut short, closes the killed run, and keeps a checkpoint
    newer than its variant's metrics (a resumable one). A stage that trains nothing (naive)
    leaves checkpoints alone."""
    from mlflow.tracking import MlflowClient

    repo = pipeline_copy
    ckpt = repo / "checkpoints"
    set_params(repo, train__max_epochs=None, models__gru__epochs=500)
    proc = subprocess.Popen(["dvc", "repro", "-s", "train@gru"], cwd=repo, env=env_for_tools(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (ckpt / "gru.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (ckpt / "gru.pt").exists() and (ckpt / "gru.run.json").exists()
    killed = json.loads((ckpt / "gru.run.json").read_text())["run_id"]
    assert not (repo / "metrics/gru.json").exists()          # DVC deleted the outs first

    sh(repo, "git", "checkout", "params.yaml")
    restored = sh(repo, "dvc", "repro", "-s", "train@gru")
    assert "skipping run" in restored.stdout, restored.stdout
    assert (repo / "metrics/gru.json").exists() and (ckpt / "gru.pt").exists()
    time.sleep(0.01)
    shutil.copy(ckpt / "gru.pt", ckpt / "lstm.pt")   # newer than metrics/lstm.json: resumable
    (ckpt / ".gru.pt.x1y2z3w4.part").write_bytes(b"")  # what a kill during a write leaves

    naive = sh(repo, "dvc", "repro", "-s", "-f", "naive")
    assert "removed" not in naive.stderr and (ckpt / "gru.pt").exists()
    after = sh(repo, "dvc", "repro", "-s", "-f", "train@dense")
    assert "removed checkpoints/gru.pt: metrics/gru.json was written after it" in after.stderr
    assert sorted(p.name for p in ckpt.iterdir()) == ["lstm.pt"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    assert client.get_run(killed).info.status == "KILLED"


def test_seeds_train_each_variant_once_per_seed(pipeline_copy):
    from mlflow.tracking import MlflowClient

    repo = pipeline_copy
    set_params(repo, seeds=[3, 4])
    sh(repo, "dvc", "repro", "-s", "train@gru")
    m = read_metrics(repo, "gru")
    assert m["n_seeds"] == 2 and set(m["per_seed"]) == {"3", "4"}
    per_seed = [m["per_seed"][s]["val_mae"] for s in ("3", "4")]
    assert per_seed[0] != per_seed[1], "two seeds, two different trainings"
    assert m["val_mae"] == pytest.approx(np.mean(per_seed))
    assert m["val_mae_std"] == pytest.approx(np.std(per_seed, ddof=1))

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("rnnlab-jena")
    runs = client.search_runs([exp.experiment_id], "tags.variant = 'gru'")
    by_seed = {r.data.tags["seed"]: r for r in runs}
    assert set(by_seed) == {"1337", "3", "4"}
    for seed in ("3", "4"):
        assert by_seed[seed].info.run_id == m["per_seed"][seed]["mlflow_run_id"]
        assert by_seed[seed].data.metrics["val_mae"] == pytest.approx(
            m["per_seed"][seed]["val_mae"])

    sh(repo, "dvc", "repro", "-s", "report")
    row = table_row((repo / "reports/summary.md").read_text(), "gru")
    assert row[1] == f"{m['val_mae']:.3f} ± {m['val_mae_std']:.3f}" and row[-1] == "2"
