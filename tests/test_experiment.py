"""One variant's training run (rnnlab.lecture.experiment.train_variant) on tiny generated
IMDB data: a capped run says so, a figure that is not a number is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rnnlab.data.download import download_imdb
from rnnlab.data.imdb import ImdbParams, prepare_imdb, save_sequence_spec
from rnnlab.data.synthetic import write_imdb_tarball
from rnnlab.lecture.experiment import Outputs, train_variant
from rnnlab.lecture.finite import NonFiniteResult
from rnnlab.nn.schema import ModelSpec
from rnnlab.training.params import TrainParams
from rnnlab.training.seeds import RunParams

IMDB = ImdbParams(max_features=200, maxlen=30, val_fraction=0.25, batch_size=16)
DENSE = ModelSpec("imdb", "multihot_dense", epochs=3, units=(4,))
# One short epoch of three: capped by max_epochs; validation and test capped too.
QUICK = TrainParams(steps_per_epoch=None, imdb_steps_per_epoch=2, max_epochs=1,
                    max_eval_batches=1, eval_batch_size=8, threads=1)


@pytest.fixture(scope="module")
def imdb(tmp_path_factory) -> Path:
    """60 generated reviews a folder, tokenized: train 90, val 30, test 120."""
    base = tmp_path_factory.mktemp("imdb")
    write_imdb_tarball(base / "a.tar.gz", per_class=60, seed=3)
    download_imdb((base / "a.tar.gz").as_uri(), base / "raw", md5=None, progress=False)
    stats = prepare_imdb(base / "raw", base / "prepared", max_features=IMDB.max_features,
                         maxlen=IMDB.maxlen, val_fraction=IMDB.val_fraction, seed=1)
    save_sequence_spec(stats, base / "windows")
    return base


def train(imdb: Path, root: Path, monkeypatch, train: TrainParams, spec: ModelSpec = DENSE,
          variant: str = "imdb_dense") -> tuple[dict, Outputs]:
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    outputs = Outputs(metrics=root / "metrics" / f"{variant}.json",
                      plots=root / "plots" / f"{variant}.csv", model=root / "models" / "m.pt")
    metrics = train_variant(variant, spec, common=RunParams(seed=1, device="cpu"), train=train,
                            data=IMDB, prepared=imdb / "prepared", windows=imdb / "windows",
                            outputs=outputs, checkpoints=root / "checkpoints")
    return metrics, outputs


def runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("rnnlab-imdb").experiment_id])


def test_a_capped_run_says_which_caps_applied(imdb, tmp_path, monkeypatch):
    """metrics/<variant>.json's ``capped`` and the MLflow tag name the caps that cut the
    run short; an uncapped run (the TF-IDF baseline: one fit on every review) has neither."""
    metrics, outputs = train(imdb, tmp_path, monkeypatch, replace(QUICK, eval_batch_size=16))
    capped = {"train.max_epochs": 1, "train.max_eval_batches": 1}
    assert metrics["capped"] == capped and metrics["epochs_run"] == 1
    assert json.loads(outputs.metrics.read_text())["capped"] == capped
    (run,) = runs(tmp_path)
    assert run.data.tags["capped"] == "train.max_epochs=1, train.max_eval_batches=1"

    tfidf = ModelSpec("imdb", "tfidf_logreg", epochs=1, ngram_max=1)
    metrics, outputs = train(imdb, tmp_path, monkeypatch, QUICK, tfidf, "imdb_tfidf_logreg")
    assert "capped" not in json.loads(outputs.metrics.read_text())
    assert {r.data.tags["variant"]: r.data.tags["capped"] for r in runs(tmp_path)} == {
        "imdb_dense": "train.max_epochs=1, train.max_eval_batches=1",
        "imdb_tfidf_logreg": "false"}


@pytest.mark.hostile
def test_a_figure_that_is_not_a_number_is_refused(imdb, tmp_path, monkeypatch):
    """One validation batch of one review holds one class: its AUC is NaN. The stage stops
    with one line naming the variant, the metric and the fix; no metrics file, the run is
    FAILED."""
    with pytest.raises(NonFiniteResult) as info:
        train(imdb, tmp_path, monkeypatch, replace(QUICK, eval_batch_size=1))
    assert str(info.value) == (
        "imdb_dense: val_auc is nan (and test_auc), not a figure a result can hold: the "
        "validation examples evaluated (train.max_eval_batches = 1 batch(es) of "
        "train.eval_batch_size = 1) hold one class only and an AUC needs both: raise "
        f"train.max_eval_batches or set it to null; {tmp_path}/metrics/imdb_dense.json not "
        "written")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "plots").exists()
    (run,) = runs(tmp_path)
    assert run.info.status == "FAILED"


@pytest.mark.hostile
def test_a_model_the_params_cannot_build_is_refused_before_the_run_opens(imdb, tmp_path,
                                                                        monkeypatch):
    """The model is built once before any MLflow run opens: params it cannot be built
    from (a conv_gru with too few time steps) leave no FAILED run behind."""
    from rnnlab.core.errors import RnnlabError

    def refuse(*args, **kwargs):
        raise RnnlabError("cannot build")

    monkeypatch.setattr("rnnlab.lecture.experiment.build_model", refuse)
    with pytest.raises(RnnlabError, match="cannot build"):
        train(imdb, tmp_path, monkeypatch, QUICK)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.hostile
def test_a_batch_larger_than_the_training_split_is_said(imdb, tmp_path, monkeypatch, caplog):
    """A batch past the training examples (90 reviews here) repeats reviews to fill up, where
    Keras trains on one smaller batch: said in one warning naming the key and the most it
    may be (not refused: a small mirror or the tests' tiny data may want it). 90 is quiet,
    and so is a full pass (steps null: one batch of all 90, as Keras)."""
    def fit(batch_size: int, train: TrainParams = QUICK) -> list[str]:
        caplog.clear()
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        with caplog.at_level("WARNING", logger="rnnlab.lecture.experiment"):
            train_variant("imdb_dense", DENSE, common=RunParams(seed=1, device="cpu"),
                          train=train, data=replace(IMDB, batch_size=batch_size),
                          prepared=imdb / "prepared", windows=imdb / "windows",
                          outputs=Outputs(metrics=tmp_path / "m.json", plots=tmp_path / "p.csv",
                                          model=tmp_path / "m.pt"),
                          checkpoints=tmp_path / "checkpoints")
        return [r.getMessage() for r in caplog.records if "batch_size" in r.getMessage()]

    assert fit(91) == [
        "imdb_dense: params.yaml: imdb.batch_size (91) is larger than the 90 training reviews: "
        "each batch repeats examples to fill up (Keras would train on one batch of 90); lower "
        "imdb.batch_size to at most 90 for that"]
    assert fit(90) == []
    assert fit(91, replace(QUICK, imdb_steps_per_epoch=None)) == []


@pytest.mark.hostile
@pytest.mark.parametrize("spec, where", [
    (ModelSpec("imdb", "embed_rnn", epochs=1, units=(100_000,)), "models.imdb_lstm.units"),
    (replace(DENSE, units=(4,)), "imdb.batch_size"),
])
def test_a_run_the_machine_cannot_hold_is_refused_before_anything_opens(imdb, tmp_path,
                                                                        monkeypatch, spec,
                                                                        where):
    """Sizes past the machine's memory (a 100,000-unit LSTM; a batch of ten million
    reviews) stop the stage in one line with the estimate and the key to lower, before any
    array is loaded or any MLflow run opens (today: an allocator's traceback, or the OOM
    killer, minutes in)."""
    from rnnlab.core.errors import RnnlabError

    data = IMDB if where != "imdb.batch_size" else replace(IMDB, batch_size=10_000_000_000)
    monkeypatch.setattr("rnnlab.lecture.experiment.build_task",
                        lambda *a: pytest.fail("the data were loaded"))
    with pytest.raises(RnnlabError) as caught:
        monkeypatch.chdir(tmp_path)
        train_variant("imdb_lstm", spec, common=RunParams(seed=1, device="cpu"), train=QUICK,
                      data=data, prepared=imdb / "prepared", windows=imdb / "windows",
                      outputs=Outputs(metrics=tmp_path / "m.json", plots=tmp_path / "p.csv",
                                      model=tmp_path / "m.pt"),
                      checkpoints=tmp_path / "checkpoints")
    message = str(caught.value)
    assert message.startswith("train@imdb_lstm would need about") and "\n" not in message
    assert where in message and "available" in message
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.hostile
def test_a_checkpoint_folder_in_the_way_is_refused_before_the_run_opens(imdb, tmp_path,
                                                                        monkeypatch):
    """``checkpoints`` a file: one line before any MLflow run opens (its claim file goes
    there), not a traceback from the run's bookkeeping."""
    from rnnlab.core.errors import RnnlabError

    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(RnnlabError, match=r"checkpoints is a file, where the folder"):
        train(imdb, tmp_path, monkeypatch, QUICK)
    assert not (tmp_path / "mlflow.db").exists()


def test_seeds_side_by_side_give_each_seed_its_own_figures_and_run(imdb, tmp_path,
                                                                    monkeypatch):
    """``RNNLAB_SEEDS_TOGETHER=1`` (on a GPU ``auto`` does it): a stage's seeds train side
    by side, and the stage writes what it writes with them one after another (every
    figure; on a CPU the same bits), one MLflow run per seed with its epochs, tagged."""
    from mlflow.tracking import MlflowClient

    quick = replace(QUICK, max_epochs=2)
    written = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("RNNLAB_SEEDS_TOGETHER", mode)
        root = tmp_path / mode
        root.mkdir()
        monkeypatch.chdir(root)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        outputs = Outputs(metrics=root / "m.json", plots=root / "p.csv", model=root / "m.pt")
        train_variant("imdb_dense", DENSE, common=RunParams(seed=1, seeds=(4, 9), device="cpu"),
                      train=quick, data=IMDB, prepared=imdb / "prepared",
                      windows=imdb / "windows", outputs=outputs, checkpoints=root / "ckpt")
        metrics = json.loads(outputs.metrics.read_text())
        written[mode] = ({k: v for k, v in metrics.items()
                          if k not in ("seconds_per_epoch", "mlflow_run_id", "per_seed")},
                         {s: {k: v for k, v in m.items()
                              if k not in ("seconds_per_epoch", "mlflow_run_id")}
                          for s, m in metrics["per_seed"].items()},
                         outputs.plots.read_text().splitlines()[0], outputs.model.read_bytes())
        client = MlflowClient(f"sqlite:///{root}/mlflow.db")
        found = client.search_runs([client.get_experiment_by_name("rnnlab-imdb").experiment_id])
        assert sorted(r.data.tags["seed"] for r in found) == ["4", "9"]
        for r in found:
            assert r.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(r.info.run_id,
                                                              "epoch/val_loss")] == [1, 2]
            assert r.data.tags.get("trained_with") == (
                "2 seeds side by side" if mode == "1" else None)
        assert not (root / "ckpt").exists()
    one_after_another, side_by_side = written["0"], written["1"]
    assert one_after_another[0]["n_seeds"] == 2
    assert one_after_another[1]["4"] != one_after_another[1]["9"], "two seeds, two trainings"
    assert one_after_another[:3] == side_by_side[:3]
    assert len(one_after_another[3]) > 0


@pytest.mark.hostile
def test_a_seed_failing_side_by_side_fails_the_first_run_and_says_whose(imdb, tmp_path,
                                                                         monkeypatch):
    """Side by side every seed trains inside the first seed's MLflow run: when seed 9's loss
    becomes NaN the stage stops naming seed 9, that run ends FAILED with a tag naming it,
    and nothing is written."""
    import torch
    from mlflow.tracking import MlflowClient

    from rnnlab.lecture import experiment
    from rnnlab.training.engine import TrainingDiverged

    real = experiment.build_model

    def poisoned(*args, **kwargs):        # seed_everything(9) just ran: seed 9's weights
        model = real(*args, **kwargs)
        if torch.initial_seed() == 9:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return model

    monkeypatch.setattr(experiment, "build_model", poisoned)
    monkeypatch.setenv("RNNLAB_SEEDS_TOGETHER", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = Outputs(metrics=tmp_path / "m.json", plots=tmp_path / "p.csv",
                      model=tmp_path / "m.pt")
    with pytest.raises(TrainingDiverged, match=r"^imdb_dense seed 9: the loss became nan"):
        train_variant("imdb_dense", DENSE, common=RunParams(seed=1, seeds=(4, 9), device="cpu"),
                      train=QUICK, data=IMDB, prepared=imdb / "prepared",
                      windows=imdb / "windows", outputs=outputs,
                      checkpoints=tmp_path / "ckpt")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab-imdb").experiment_id])
    assert (run.data.tags["seed"], run.info.status) == ("4", "FAILED")
    assert run.data.tags["side_by_side_failure"].startswith(
        "imdb_dense seed 9: the loss became nan at epoch 1, step 1")
    assert not any(p.exists() for p in (outputs.metrics, outputs.plots, outputs.model))


@pytest.mark.hostile
@pytest.mark.parametrize("case", ["jena variant, IMDB folders", "IMDB variant, Jena spec",
                                  "no such folder"])
def test_a_stage_given_another_data_sets_folders_is_one_line(imdb, tmp_path, monkeypatch, case):
    """`python stages/train.py` by hand with the other data set's --prepared/--windows (or a
    folder that is not there) ended in KeyError: 'counts' or FileNotFoundError deep in the
    memory estimate; one line now naming the flag, the folder and `dvc repro train@<v>`,
    before any run opens or file is written."""
    from rnnlab.core.errors import RnnlabError
    from rnnlab.data.jena import JenaParams

    jena_spec = tmp_path / "jena_windows"
    jena_spec.mkdir()
    (jena_spec / "windows.json").write_text(json.dumps({"lookback": 1440, "step": 6}))
    spec, data, prepared, windows, message = {
        "jena variant, IMDB folders": (
            ModelSpec("jena", "gru", epochs=1, units=(4,)),
            JenaParams(lookback=1440, step=6, delay=144, batch_size=16, train_rows=(0, 10),
                       val_rows=(11, 20), test_rows=(21, None), target="T (degC)"),
            imdb / "prepared", imdb / "windows",
            f"--prepared {imdb / 'prepared'}: no jena data there (no features.npy and "
            "stats.json); train@v reads data/prepared/jena and data/prepared/jena_windows: "
            "run it as `dvc repro train@v`, which passes them"),
        "IMDB variant, Jena spec": (
            DENSE, IMDB, imdb / "prepared", jena_spec,
            f"--windows {jena_spec}: no imdb window spec there (windows.json with "
            "'vocab_size'); train@v reads data/prepared/imdb and data/prepared/imdb_windows: "
            "run it as `dvc repro train@v`, which passes them"),
        "no such folder": (
            DENSE, IMDB, tmp_path / "nowhere", imdb / "windows",
            f"--prepared {tmp_path / 'nowhere'}: no imdb data there (no x_train.npy and "
            "stats.json); train@v reads data/prepared/imdb and data/prepared/imdb_windows: "
            "run it as `dvc repro train@v`, which passes them"),
    }[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    outputs = Outputs(metrics=tmp_path / "m.json", plots=tmp_path / "p.csv",
                      model=tmp_path / "m.pt")
    with pytest.raises(RnnlabError) as error:
        train_variant("v", spec, common=RunParams(seed=1, device="cpu"), train=QUICK,
                      data=data, prepared=prepared, windows=windows, outputs=outputs,
                      checkpoints=tmp_path / "checkpoints")
    assert str(error.value) == message
    assert not (tmp_path / "mlflow.db").exists() and not outputs.metrics.exists()
