"""`python -m rnnlab.tools.leaderboard`: DVC experiments as rows, narrow enough for a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnnlab.tools.leaderboard import Row, leaderboard

from _project import env_for_tools, sh


def cells(text: str, name: str) -> list[str]:
    """The cells of every line that starts with row ``name``, table by table."""
    return [line.split()[1:] for line in text.splitlines() if line.split()[:1] == [name]]


def test_a_wide_sweep_fits_the_width_and_marks_the_best():
    """Many variants and long param names: blocks of columns no wider than asked, each
    with the experiment names; the lowest MAE and the highest accuracy marked."""
    models = {f"gru_variant_number_{i}": {"dataset": "jena"} for i in range(12)}
    models |= {"imdb_lstm_reversed": {"dataset": "imdb"}}

    def row(name: str, mae: float, acc: float, lookback: int) -> Row:
        params = {f"models.{v}.dataset": s["dataset"] for v, s in models.items()}
        params |= {"jena.lookback": lookback, "models.gru_dropout.recurrent_dropout": 0.2}
        metrics = {v: {"val_mae": mae + i / 100, "test_mae": 1.0}
                   for i, v in enumerate(models) if v.startswith("gru")}
        metrics |= {"naive": {"val_mae": 0.29}, "imdb_lstm_reversed": {"val_accuracy": acc}}
        return Row(name, params, metrics)

    rows = [row("workspace", 0.30, 0.85, 720), row("main", 0.26, 0.88, 1440),
            row("a-long-experiment-name-beyond-the-column", 0.31, 0.80, 720)]
    text = leaderboard(rows, width=100)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100
    assert text.count("\n\n") >= 3, "the Jena table continues in a second block"
    assert cells(text, "main")[0] == ["1440"]
    assert cells(text, "main")[1][0] == "0.290"          # naive: a tie in every row, no mark
    assert all(c.endswith("*") for c in cells(text, "main")[1][1:] + cells(text, "main")[2])
    assert cells(text, "main")[-1] == ["0.880*"]                         # highest accuracy
    assert cells(text, "workspace")[-1] == ["0.850"]
    assert "best model: gru_variant_number_0, val mae 0.260, in main" in text
    assert "best model: imdb_lstm_reversed, val accuracy 0.880, in main" in text
    assert "recurrent_dropout" not in text      # the same in every row: not a column


def test_params_of_the_sweep_come_first_ties_are_unmarked_inherited_figures_marked():
    """The params the experiments differ in make the table; one that is the same in all of
    them and differs only from the baseline commit (a data URL pointed at a local copy)
    is a line below it. A figure a row did not compute is marked ``^`` and never best; a
    column whose figures all tie has no ``*``."""
    url = "file:///srv/mirror/a/rather/long/path/to/jena_climate_2009_2016.csv.zip"

    def row(name: str, kind: str, lookback: int, units: int, gru: float,
            inherited: frozenset[str] = frozenset()) -> Row:
        params = {"data.jena.url": url if kind != "baseline" else "https://s3/jena.zip",
                  "jena.lookback": lookback, "models.gru.units": [units],
                  "models.gru.dataset": "jena", "models.imdb_lstm.dataset": "imdb"}
        metrics = {"naive": {"val_mae": 0.31 if lookback == 1440 else 0.29},
                   "gru": {"val_mae": gru}, "imdb_lstm": {"val_accuracy": 0.75}}
        return Row(name, params, metrics, kind=kind, inherited=set(inherited))

    rows = [row("workspace", "workspace", 720, 64, 0.262),
            row("main", "baseline", 1440, 32, 0.265),
            row("short", "experiment", 1440, 16, 0.265, {"gru"}),      # reran naive only
            row("wide", "experiment", 720, 64, 0.262)]
    text = leaderboard(rows, width=100)
    lines = text.splitlines()
    assert lines[0] == "params that differ between the experiments:"
    table = lines[:lines.index(next(ln for ln in lines if ln.startswith("the same in")))]
    assert "url" not in "".join(table) and cells(text, "wide")[0] == ["720", "[64]"]
    footer = next(ln for ln in lines if ln.lstrip().startswith("data.jena.url"))
    assert footer.split()[1].startswith("file:///srv/mirror/")        # cut in the middle,
    assert footer.split()[1].endswith("…a_climate_2009_2016.csv.zip")  # to fit 100 columns
    assert footer.endswith("(main: https://s3/jena.zip)") and len(footer) <= 100
    assert lines.index(footer) < lines.index(next(ln for ln in lines if ln.startswith("Jena")))
    jena = {name: cells(text, name)[1] for name in ("workspace", "main", "short", "wide")}
    assert jena["short"] == ["0.310", "0.265^"]             # gru: main's figure, not computed
    assert jena["main"] == ["0.310", "0.265"]               # 0.265 is not the best here
    assert jena["wide"] == ["0.290*", "0.262*"] and jena["workspace"] == ["0.290*", "0.262*"]
    assert "best model: gru, val mae 0.262, in wide, workspace" in text
    assert [cells(text, n)[2] for n in ("workspace", "main")] == [["0.750"], ["0.750"]]
    assert "*" not in text.split("IMDB:", 1)[1].split("\n", 1)[1]   # every figure ties
    assert "^ not computed at its row's params" in text


def test_leaderboard_of_a_real_experiment(pipeline_copy):
    """A real `dvc exp run` with a changed param beside its baseline, read from DVC."""
    repo = pipeline_copy
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny results")
    branch = sh(repo, "git", "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    baseline = json.loads((repo / "metrics/dense.json").read_text())["val_mae"]
    sh(repo, "dvc", "exp", "run", "-n", "dense8", "-S", "models.dense.units=[8]",
       "train@dense")
    ours = json.loads((repo / "metrics/dense.json").read_text())["val_mae"]
    assert ours != baseline

    text = sh(repo, sys.executable, "-m", "rnnlab.tools.leaderboard", "--width", "100").stdout
    assert max(map(len, text.splitlines())) <= 100, text
    assert [c[0] for c in (cells(text, "dense8")[0], cells(text, branch)[0])] == ["[8]", "[32]"]
    header = [ln for ln in text.splitlines() if ln.startswith("experiment")][1].split()
    dense = header.index("dense") - 1
    best, other = sorted([(ours, "dense8"), (baseline, branch)])
    assert cells(text, best[1])[1][dense] == f"{best[0]:.3f}*"
    assert cells(text, other[1])[1][dense] == f"{other[0]:.3f}"
    assert cells(text, "workspace")[1][dense].startswith(f"{ours:.3f}")
    for name in ("workspace", branch, "dense8"):
        # params, Jena (its 11th column, the README's example variant, in a second block
        # under the experiment names again), IMDB with all six variants
        assert [len(c) for c in cells(text, name)] == [1, 9, 1, 6], text
        assert "–" not in cells(text, name)[-1]
    # the best Jena model over every variant (whichever won on the tiny data), naive aside
    spec = yaml.safe_load((repo / "params.yaml").read_text())["models"]
    jena = {v: json.loads((repo / f"metrics/{v}.json").read_text())["val_mae"]
            for v, m in spec.items() if m["dataset"] == "jena"}
    jena["dense"] = best[0]
    winner = min(jena, key=jena.get)
    expected = f"best model: {winner}, val mae {jena[winner]:.3f}, in "
    assert expected + (best[1] if winner == "dense" else "") in text, text


def test_a_real_sweep_marks_what_each_experiment_did_not_rerun(pipeline_copy, small_jena_zip):
    """Two real experiments that each rerun one variant, both with the Jena URL pointed at a
    local copy (`file://`, as the README says): the table leads with what they differ in,
    the URL is a line below it; an experiment whose windows changed (`jena.lookback`) has
    its other Jena figures marked inherited, one with the baseline's windows not; ties are
    unmarked (IMDB: no experiment reran it)."""
    repo = pipeline_copy
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny results")
    branch = sh(repo, "git", "rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    local = f"data.jena.url={small_jena_zip[0].as_uri()}"
    sh(repo, "dvc", "exp", "run", "-n", "short", "-S", local, "-S", "jena.lookback=120",
       "train@gru_dropout")
    sh(repo, "dvc", "exp", "run", "-n", "narrow", "-S", local, "-S", "jena.lookback=144",
       "-S", "models.gru_dropout.units=[8]", "train@gru_dropout")     # the baseline's windows

    text = sh(repo, sys.executable, "-m", "rnnlab.tools.leaderboard", "--width", "100").stdout
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, text
    assert lines[0] == "params that differ between the experiments:", text
    footer = lines.index(next(ln for ln in lines if ln.startswith("the same in")))
    assert "url" not in "".join(lines[:footer]), text
    assert "lookback" in "".join(lines[:footer]) and "units" in "".join(lines[:footer])
    assert lines[footer] == f"the same in the workspace and every experiment, other in {branch}:"
    assert lines[footer + 1].split()[0] == "data.jena.url" and "jena.zip" in lines[footer + 1]
    assert cells(text, "short")[0] == ["120", "[32]"] and cells(text, "narrow")[0] == ["144", "[8]"]

    header = [ln for ln in lines if ln.startswith("experiment")][1].split()[1:]
    jena = {n: cells(text, n)[1] + cells(text, n)[2] for n in ("short", "narrow", branch)}
    dropout = header.index("dropout")           # gru_dropout, cut as "gru / dropout"
    for name in ("narrow", branch):
        assert not any(c.endswith("^") for c in jena[name]), (name, text)
    assert not jena["short"][dropout].endswith("^"), text          # what it reran
    assert all(c.endswith("^") for j, c in enumerate(jena["short"]) if j != dropout), text
    for j, name in enumerate(header):           # the others tie in every computed row
        if j != dropout:
            assert not any(jena[n][j].endswith("*") for n in jena), (name, text)
    imdb = [cells(text, n)[-1] for n in ("short", "narrow", branch, "workspace")]
    assert all(c == imdb[0] for c in imdb) and not any("*" in c or "^" in c
                                                       for row in imdb for c in row), text
    best = [ln for ln in lines if ln.startswith("best model: imdb")]
    assert best[0].endswith(", in every row that computed it"), text
    assert "^ not computed at its row's params" in text


def leaderboard_in(folder: Path, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "rnnlab-leaderboard")], cwd=folder,
                          env=env_for_tools(), stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=300)


@pytest.mark.hostile
def test_the_leaderboard_outside_a_repository_is_one_line(tmp_path):
    """Outside a clone it ended in DVC's 64-line NotDvcRepoError traceback."""
    proc = leaderboard_in(tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"error: {tmp_path} is not inside an rnnlab repository (no dvc.yaml and params.yaml "
        "above it); run this from your clone"]
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.hostile
def test_the_leaderboard_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """`rnnlab-leaderboard | head` with a reader gone before the table is written: quiet,
    141 as a command killed by SIGPIPE (a BrokenPipeError traceback and exit 1 before:
    DVC's colorama wrapper writes stdout through)."""
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, "dvc", "init", "-q")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-qm", "initial")
    read, write = os.pipe()
    os.close(read)
    try:
        proc = leaderboard_in(tmp_path, stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr[-3000:]
    assert proc.stderr == ""
