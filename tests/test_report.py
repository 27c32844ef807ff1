"""The report from hand-made metrics files: rows, lecture figures, seeds, data source."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rnnlab.core.errors import RnnlabError
from rnnlab.data.imdb import CANONICAL_MD5 as IMDB_MD5
from rnnlab.data.jena import CANONICAL_MD5 as JENA_MD5
from rnnlab.lecture.report import (
    DataSource,
    ReportParams,
    data_digest,
    data_sources,
    run_setup,
    write_report,
)
from rnnlab.tools.params import ModelSpec, load_params
from rnnlab.training.seeds import RunParams

MODELS = {"gru": ModelSpec("jena", "gru", 20), "lstm": ModelSpec("jena", "lstm", 20),
          "imdb_lstm": ModelSpec("imdb", "embed_rnn", 10),
          "imdb_bilstm": ModelSpec("imdb", "embed_rnn", 10, bidirectional=True)}
DEFAULTS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")


def params_with(*, seeds=(), max_epochs=None, distance=100):
    return ReportParams(run=RunParams(seed=1, seeds=tuple(seeds)), jena=DEFAULTS.jena,
                        imdb=DEFAULTS.imdb, models=MODELS, distance=distance,
                        train=replace(DEFAULTS.train, max_epochs=max_epochs))


def row(summary: str, variant: str) -> list[str]:
    """The table row of ``variant``, capped (``| `gru` (capped) |``) or not."""
    (line,) = [ln for ln in summary.splitlines()
               if ln.startswith((f"| `{variant}` |", f"| `{variant}` (capped) |"))]
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture
def outputs(tmp_path):
    metrics, plots = tmp_path / "metrics", tmp_path / "plots"
    metrics.mkdir()
    plots.mkdir()
    (metrics / "naive.json").write_text(json.dumps(
        {"val_mae": 0.2897, "test_mae": 0.3081, "val_mae_degc": 2.564, "test_mae_degc": 2.727,
         "n_params": 0, "device": "cpu"}))
    (metrics / "gru.json").write_text(json.dumps(
        {"val_mae": 0.2651, "val_mae_std": 0.0021, "test_mae": 0.2890, "test_mae_std": 0.003,
         "val_mae_degc": 2.347, "val_mae_degc_std": 0.019, "test_mae_degc": 2.559,
         "test_mae_degc_std": 0.027, "best_epoch": 7.5, "n_params": 4641,
         "per_seed": {"1": {"val_mae": 0.2636, "best_epoch": 7},
                      "2": {"val_mae": 0.2666, "best_epoch": 8}},
         "seconds_per_epoch": 39.06, "device": "cpu", "n_seeds": 2}))
    (plots / "gru.csv").write_text("epoch,train_loss,val_loss,val_mae,val_mae_degc\n"
                                   "1,0.31,0.28,0.28,2.5\n2,0.28,0.27,0.27,2.4\n")
    (metrics / "imdb_lstm.json").write_text(json.dumps(
        {"val_accuracy": 0.8782, "test_accuracy": 0.8666, "val_auc": 0.943, "test_auc": 0.935,
         "best_epoch": 6, "n_params": 328_353, "seconds_per_epoch": 14.8, "device": "cpu",
         "n_seeds": 1}))
    (plots / "imdb_lstm.csv").write_text("epoch,train_loss,val_loss,val_accuracy,val_auc\n"
                                         "1,0.6,0.5,0.80,0.88\n2,0.4,0.35,0.87,0.94\n")
    return tmp_path


def sources(real: bool):
    return {"jena": DataSource("jena", JENA_MD5 if real else "0" * 32, JENA_MD5),
            "imdb": DataSource("imdb", IMDB_MD5 if real else "1" * 32, IMDB_MD5)}


def test_report_rows_seeds_and_missing_variants(outputs):
    summary = write_report(params_with(seeds=[1, 2]), outputs / "metrics", outputs / "plots", outputs / "reports",
                           sources(real=True)).read_text()
    assert summary.count("**real**") == 2 and "Capped run" not in summary
    assert row(summary, "naive")[1:6] == ["0.290", "2.56", "0.308", "2.73", "0.290 (2.57)"]
    gru = row(summary, "gru")
    assert gru[1] == "0.265 ± 0.002" and gru[2] == "2.35 ± 0.02"
    assert gru[5] == "0.265 (2.35)" and gru[6] == "+0.000" and gru[7] == "–"
    assert gru[8] == "4,641" and gru[9] == "39.1" and gru[-2] == "7/8" and gru[-1] == "2"
    assert row(summary, "lstm")[1] == "not run"        # no metrics file: listed, not fatal
    lstm = row(summary, "imdb_lstm")
    assert lstm[1:8] == ["0.878", "0.867", "0.943", "0.935", "0.89", "-0.012", "–"]
    assert row(summary, "imdb_bilstm")[1] == "not run"
    assert "mean ± standard deviation" in summary and "Vanishing gradients" not in summary
    for chart in ("jena_validation", "imdb_validation", "jena_vs_lecture", "imdb_vs_lecture"):
        assert (outputs / "reports" / f"{chart}.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (outputs / "reports").iterdir() if p.name.startswith(".")]


def test_report_says_when_data_is_not_canonical_and_runs_are_capped(outputs):
    summary = write_report(params_with(max_epochs=1), outputs / "metrics", outputs / "plots", outputs / "reports",
                           sources(real=False)).read_text()
    assert summary.count("not the canonical file") == 2 and "**real**" not in summary
    assert "**Capped run** (train.max_epochs = 1)" in summary
    assert "One seed (1)" in summary


def test_report_names_a_broken_metrics_file(outputs):
    (outputs / "metrics" / "gru.json").write_text("{not json")
    with pytest.raises(RnnlabError, match=r"gru\.json: not valid JSON.*dvc repro -f"):
        write_report(params_with(), outputs / "metrics", outputs / "plots",
                     outputs / "reports", sources(real=False))


def test_data_sources_come_from_the_prepared_statistics(tmp_path):
    (tmp_path / "jena").mkdir()
    (tmp_path / "jena" / "stats.json").write_text(json.dumps({"csv_md5": JENA_MD5}))
    sources = data_sources(jena=tmp_path / "jena", imdb=tmp_path / "imdb")
    assert sources["jena"].real and "**real**" in sources["jena"].describe()
    assert not sources["imdb"].real and sources["imdb"].describe() == "not prepared in this workspace"


def test_a_copy_with_the_real_reviews_is_reported_real(tmp_path):
    """Another tarball md5, the real reviews' digest and counts: real, saying what was
    checked; the same md5 with generated reviews: not real."""
    from rnnlab.data.imdb import REAL_REVIEWS_SHA256
    (tmp_path / "imdb").mkdir()
    counts = dict.fromkeys(("train/pos", "train/neg", "test/pos", "test/neg"), 12_500)
    stats = {"archive_md5": "2" * 32, "reviews_sha256": REAL_REVIEWS_SHA256,
             "review_counts": counts}
    (tmp_path / "imdb" / "stats.json").write_text(json.dumps(stats))
    imdb = data_sources(jena=tmp_path / "jena", imdb=tmp_path / "imdb")["imdb"]
    assert imdb.real
    text = imdb.describe()
    assert text.startswith("**real**: another copy") and "2" * 32 in text
    assert "50,000 labelled reviews" in text and REAL_REVIEWS_SHA256[:16] in text
    (tmp_path / "imdb" / "stats.json").write_text(json.dumps(stats | {"reviews_sha256": "3" * 64}))
    imdb = data_sources(jena=tmp_path / "jena", imdb=tmp_path / "imdb")["imdb"]
    assert not imdb.real and "**not the canonical file**" in imdb.describe()


def test_report_states_both_exploding_runs(outputs):
    (outputs / "metrics" / "gradients.json").write_text(json.dumps(
        {"rnn_ratio_100_init": 1e-30, "explode_diverged_step_noclip": 2,
         "explode_diverged_step_clip": 0, "explode_max_grad_norm_noclip": 4156.6,
         "explode_max_grad_norm_clip": 6584.7, "explode_max_applied_norm_clip": 1.0,
         "explode_clip_norm": 1.0}))
    summary = write_report(params_with(), outputs / "metrics", outputs / "plots",
                           outputs / "reports", sources(real=False)).read_text()
    # Each largest norm says which it is: the clipped run's, above the unclipped one's, is
    # the norm before clipping; the updates it applied are at most the threshold.
    assert ("Without clipping: largest finite gradient norm (no clipping: applied as "
            "computed) 4.16e+03, first non-finite step 2. Clipped to 1: largest gradient norm "
            "before clipping 6.58e+03, largest after clipping (the gradient applied) 1, first "
            "non-finite step never.") in summary


def test_one_epoch_charts_have_integer_epoch_ticks(outputs, monkeypatch):
    """After a one-epoch run the validation charts' epoch axis reads 1, not 0.950 ... 1.050."""
    from matplotlib.figure import Figure
    (outputs / "plots" / "gru.csv").write_text("epoch,train_loss,val_loss,val_mae,val_mae_degc\n"
                                               "1,0.31,0.28,0.28,2.5\n")
    (outputs / "plots" / "imdb_lstm.csv").write_text(
        "epoch,train_loss,val_loss,val_accuracy,val_auc\n1,0.6,0.5,0.80,0.88\n")
    ticks: dict[str, list[str]] = {}
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        fig.canvas.draw()
        for ax in fig.axes:
            if ax.get_xlabel() == "epoch":
                low, high = ax.get_xlim()
                ticks[ax.get_title() or "zoom"] = [
                    t.get_text() for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    write_report(params_with(max_epochs=1), outputs / "metrics", outputs / "plots",
                 outputs / "reports", sources(real=False))
    assert ticks == {"Jena: validation MAE per epoch (mean over 2 seeds)": ["1"],
                     "IMDB: validation accuracy per epoch": ["1"]}


def test_a_mean_curves_label_says_its_best_is_the_means(outputs, monkeypatch):
    """With several seeds a curve is their mean per epoch; its best is not the table's figure
    (each seed's best epoch, averaged), and its label says so. One seed: just "best"."""
    from matplotlib.figure import Figure
    labels: list[str] = []
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                labels.extend(t.get_text() for t in ax.get_legend().get_texts())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    write_report(params_with(), outputs / "metrics", outputs / "plots", outputs / "reports",
                 sources(real=False))
    gru = json.loads((outputs / "metrics" / "gru.json").read_text())
    lstm = json.loads((outputs / "metrics" / "imdb_lstm.json").read_text())
    assert gru.get("n_seeds", 1) > 1 and lstm.get("n_seeds", 1) == 1
    assert any(t.startswith("gru: best of the mean 0.") for t in labels), labels
    assert any(t.startswith("imdb_lstm: best 0.") for t in labels), labels


def test_capped_figures_are_marked_in_the_tables(outputs):
    """A variant whose metrics name caps is marked in its table, with a note; the others not."""
    gru = json.loads((outputs / "metrics" / "gru.json").read_text())
    capped = {"train.max_epochs": 1, "train.max_eval_batches": 2}
    (outputs / "metrics" / "gru.json").write_text(json.dumps(gru | {"capped": capped}))
    (outputs / "metrics" / "gradients.json").write_text(json.dumps(
        {"rnn_log10_ratio_100_init": -30.5, "capped": {"gradients.train_steps": 20}}))
    summary = write_report(params_with(max_epochs=1), outputs / "metrics", outputs / "plots",
                           outputs / "reports", sources(real=False)).read_text()
    assert "| `gru` (capped) | 0.265 ± 0.002 |" in summary
    assert "| `naive` | 0.290 |" in summary and "| `imdb_lstm` | 0.878 |" in summary
    assert summary.count("*(capped)*: a quick look") == 1           # under the Jena table only
    assert ("chart `plots/gradients.png`). Capped: a quick look (`gradients.train_steps` = 20)."
            ) in summary


def test_a_half_that_did_not_run_is_named_in_one_line(outputs, tmp_path):
    """Only the Jena half ran (its metrics, its prepared data): the report is written and one
    line says that the IMDB half did not run and how to run it."""
    for name in ("imdb_lstm.json",):
        (outputs / "metrics" / name).unlink()
    (tmp_path / "jena").mkdir()
    (tmp_path / "jena" / "stats.json").write_text(json.dumps({"csv_md5": JENA_MD5}))
    found = data_sources(jena=tmp_path / "jena", imdb=tmp_path / "imdb")
    summary = write_report(params_with(), outputs / "metrics", outputs / "plots",
                           outputs / "reports", found).read_text()
    (imdb,) = [ln for ln in summary.splitlines() if ln.startswith("- IMDB reviews:")]
    assert imdb == ("- IMDB reviews: **this half did not run** in this workspace (no metrics of "
                    "its stages, no prepared data): its rows say \"not run\"; "
                    "`dvc repro --glob 'train@imdb_*'` runs it.")
    assert "- Jena Climate: **real**" in summary
    assert row(summary, "imdb_lstm")[1] == "not run" and row(summary, "gru")[1] != "not run"


def curve(name, values, column="val_mae", arch="gru"):
    from rnnlab.lecture.report import Variant
    return Variant(name, "jena", {"n_seeds": 1},
                   [{"epoch": i + 1, column: v} for i, v in enumerate(values)], arch)


def test_a_curve_that_dwarfs_the_others_gets_a_zoomed_panel():
    from rnnlab.lecture.report import zoom_range
    gru, lstm = curve("gru", [0.31, 0.27]), curve("lstm", [0.33, 0.28])
    dense = curve("dense", [2.4, 0.8], arch="dense")
    low, high = zoom_range([dense, gru, lstm], "val_mae", lower_is_better=True, reference=0.29)
    assert low < 0.27 and 0.33 <= high < 0.8          # the GRU and LSTM curves, not dense's
    assert zoom_range([gru, lstm], "val_mae", lower_is_better=True) is None
    acc = [curve(n, v, "val_accuracy") for n, v in
           (("a", [0.5, 0.52]), ("b", [0.86, 0.88]), ("c", [0.87, 0.89]))]
    low, high = zoom_range(acc, "val_accuracy", lower_is_better=False)
    assert 0.52 < low < 0.86 and high > 0.89


def test_the_data_digest_names_what_the_data_holds_not_how_it_is_stored():
    """The IMDB splits were stored anew with the classes interleaved (same reviews, split and
    vocabulary), and stats.json gained ``not_utf8``: Keras figures measured on the earlier
    layout still stand beside a run on the new one. Other reviews in the validation split,
    or reviews that were not UTF-8, make other data; ``ordered`` also tells layouts apart."""
    before = {"archive_md5": "m", "vocab_size": 10002, "counts": {"train": 3, "val": 2},
              "val_ids": ["train/neg/1_2", "train/pos/7_9"], "seconds": 10.8}
    after = before | {"val_ids": ["train/pos/7_9", "train/neg/1_2"], "not_utf8": [],
                      "seconds": 8.7}
    assert data_digest(after) == data_digest(before) is not None
    assert data_digest(after, ordered=True) != data_digest(before, ordered=True)
    assert data_digest(before, ordered=True) == data_digest(before | {"seconds": 1.0},
                                                            ordered=True)
    assert data_digest(after | {"val_ids": ["train/pos/7_9", "train/neg/3_1"]}) \
        != data_digest(before)
    assert data_digest(after | {"not_utf8": ["train/neg/1_2.txt"]}) != data_digest(before)
    assert data_digest({}) is None
    # A capped evaluation reads the first batches in stored order: then the setup names
    # the ordered digest, and figures from another order no longer stand beside it.
    lstm = MODELS["imdb_lstm"]
    full = params_with()
    capped = replace(full, train=replace(full.train, max_eval_batches=2))
    assert run_setup(full, lstm, "free", "ordered")["data"] == "free"
    assert run_setup(capped, lstm, "free", "ordered")["data"] == "ordered"


def test_the_lecture_keras_figure_stands_beside_a_run_with_the_same_data_and_setup(outputs):
    """bench_fidelity's summary: a Keras figure measured on the same prepared data (digest),
    windows or tokens and budget is shown; one from a reduced budget or other data is not."""
    keras = {"val_accuracy": 0.8801, "val_accuracy_std": 0.0042, "seeds": [1, 2, 3],
             "val_mae": 0.2712, "val_mae_std": 0.001}
    imdb_setup = {"data": "d-imdb", "max_features": 10000, "maxlen": 500, "batch_size": 128,
                  "reverse": False, "epochs": 10, "steps": None, "max_eval_batches": None}
    jena_setup = {"data": "d-jena", "lookback": 1440, "step": 6, "delay": 144,
                  "batch_size": 128, "reverse": False, "epochs": 5, "steps": 200,
                  "max_eval_batches": None}                  # gru trains 20 epochs of 500
    fidelity = {"rows": [{"variant": "imdb_lstm", "setup": imdb_setup, "keras": keras},
                         {"variant": "imdb_bilstm", "setup": imdb_setup, "keras": keras},
                         {"variant": "gru", "setup": jena_setup, "keras": keras}]}
    digests = {"jena": replace(sources(real=True)["jena"], digest="d-jena"),
               "imdb": replace(sources(real=True)["imdb"], digest="d-imdb")}
    summary = write_report(params_with(), outputs / "metrics", outputs / "plots",
                           outputs / "reports", digests, fidelity).read_text()
    assert row(summary, "imdb_lstm")[7] == "0.880 ± 0.004 (3)"
    assert row(summary, "gru")[7] == "–"                     # another budget: not beside ours
    assert "`bench/bench_fidelity.py`" in summary
    other = {"jena": digests["jena"], "imdb": replace(digests["imdb"], digest="d-other")}
    summary = write_report(params_with(), outputs / "metrics", outputs / "plots",
                           outputs / "reports", other, fidelity).read_text()
    assert row(summary, "imdb_lstm")[7] == "–"               # other data: not beside ours
    jena_full = {"rows": [{"variant": "gru", "keras": keras,
                           "setup": jena_setup | {"epochs": 20, "steps": 500}}]}
    summary = write_report(params_with(), outputs / "metrics", outputs / "plots",
                           outputs / "reports", digests, jena_full).read_text()
    assert row(summary, "gru")[7] == "0.271 ± 0.001 (3)"
    from rnnlab.lecture.report import keras_cell
    one = {"val_accuracy": 0.8714, "val_accuracy_std": 0.0, "seeds": [1337]}
    assert keras_cell(one, "val_accuracy") == "0.871 (1)"   # no spread from one seed


# --- Hostile report inputs: one line naming the file (and the field) and the stage to rerun.

GRU_FIX = "rerun the stage that writes it: dvc repro -f train@gru"


def damage(outputs: Path, case: str) -> tuple[Path, str]:
    """Damage one of ``outputs``' files as ``case`` says; return it and the line expected."""
    metrics, plots = outputs / "metrics" / "gru.json", outputs / "plots" / "gru.csv"
    if case == "not utf-8":
        metrics.write_bytes(metrics.read_bytes().replace(b'"cpu"', b'"c\xe9u"'))
        offset = metrics.read_bytes().index(b"\xe9")
        return metrics, f"{metrics}: not UTF-8 (byte 0xe9 at offset {offset}); {GRU_FIX}"
    if case == "oops in a number":
        plots.write_text("epoch,train_loss,val_loss,val_mae,val_mae_degc\n"
                         "1,0.31,0.28,0.28,2.5\n2,0.28,oops,0.27,2.4\n")
        return plots, f"{plots}: line 3, column 'val_loss': 'oops' is not a number; {GRU_FIX}"
    if case in ("per_seed a number", "per_seed of numbers"):
        value = 7 if case == "per_seed a number" else {"1": 7, "2": 8}
        data = json.loads(metrics.read_text()) | {"per_seed": value}
        metrics.write_text(json.dumps(data))
        shown = "7" if case == "per_seed a number" else "{'1': 7, '2': 8}"
        return metrics, (f"{metrics}: per_seed is {shown}, not a mapping of each seed to its "
                         f"metrics; {GRU_FIX}")
    assert case == "a folder"
    metrics.unlink()
    (metrics / "1.json").mkdir(parents=True)
    return metrics, f"{metrics}: a folder, not a file; remove it (rm -r {metrics}) and {GRU_FIX}"


DAMAGE = ["not utf-8", "oops in a number", "per_seed a number", "per_seed of numbers",
          "a folder"]


@pytest.mark.hostile
@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_input_of_the_report_is_one_line(outputs, case):
    """A traceback each before (UnicodeDecodeError, ValueError, AttributeError,
    IsADirectoryError), or for ``per_seed: 7`` a report that silently skipped it; nothing of
    the report written."""
    _, expected = damage(outputs, case)
    with pytest.raises(RnnlabError) as info:
        write_report(params_with(), outputs / "metrics", outputs / "plots",
                     outputs / "reports", sources(real=False))
    assert str(info.value) == expected
    assert not (outputs / "reports").exists() or not list((outputs / "reports").iterdir())


@pytest.mark.hostile
@pytest.mark.parametrize("case", ["not utf-8", "oops in a number", "per_seed of numbers",
                                  "a folder"])
def test_the_report_stage_names_a_damaged_input_in_one_line(outputs, case):
    """The real stage script with dvc.yaml's arguments, in a folder of its own: exit 1, one
    ``error:`` line, no traceback, no report."""
    import shutil
    import subprocess
    import sys

    from _project import ROOT, env_for_tools

    shutil.copy(ROOT / "params.yaml", outputs / "params.yaml")
    (outputs / "docs").mkdir()
    (outputs / "docs" / "fidelity.json").write_text(json.dumps({"rows": []}))
    path, expected = damage(outputs, case)
    relative = expected.replace(str(outputs) + "/", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "report.py"), "--metrics", "metrics",
         "--plots", "plots", "--jena", "data/prepared/jena", "--imdb", "data/prepared/imdb",
         "--fidelity", "docs/fidelity.json", "--out", "reports"],
        cwd=outputs, env=env_for_tools(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [f"error: {relative}"], proc.stderr[-3000:]
    assert not (outputs / "reports").exists() or not list((outputs / "reports").iterdir())
