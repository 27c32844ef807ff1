"""`python -m rnnlab.tools.leaderboard`: DVC experiments as rows, narrow enough for a terminal."""

from __future__ import annotations

import json
import sys

import yaml

from rnnlab.tools.leaderboard import Row, leaderboard

from _project import sh


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
    assert all(c[0].endswith("*") for c in cells(text, "main")[1:3])     # lowest MAE
    assert cells(text, "main")[-1] == ["0.880*"]                         # highest accuracy
    assert cells(text, "workspace")[-1] == ["0.850"]
    assert "best model: gru_variant_number_0, val mae 0.260, in main" in text
    assert "best model: imdb_lstm_reversed, val accuracy 0.880, in main" in text
    assert "recurrent_dropout" not in text      # the same in every row: not a column


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
