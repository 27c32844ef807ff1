"""Several seeds folded into one result."""

import statistics

import pytest

from rnnlab.training.seeds import combine_seeds


def history(*val_losses):
    return [{"epoch": i + 1, "train_loss": 1.0, "val_loss": v} for i, v in enumerate(val_losses)]


def metrics(val, best, run):
    return {"val_mae": val, "test_mae": val + 0.1, "best_epoch": best, "n_params": 10,
            "device": "cpu", "mlflow_run_id": run}


def test_one_seed_is_passed_through():
    m, h = combine_seeds([(7, metrics(0.3, 2, "a"), history(0.5, 0.4))])
    assert m == metrics(0.3, 2, "a") | {"n_seeds": 1}
    assert h == history(0.5, 0.4)


def test_several_seeds_mean_spread_and_per_seed():
    m, h = combine_seeds([(1, metrics(0.3, 2, "a"), history(0.5, 0.4, 0.35)),
                          (2, metrics(0.4, 1, "b"), history(0.7, 0.6))])
    assert m["val_mae"] == pytest.approx(0.35)
    assert m["val_mae_std"] == pytest.approx(statistics.stdev([0.3, 0.4]))
    assert m["test_mae_std"] == pytest.approx(statistics.stdev([0.4, 0.5]))
    assert "n_params_std" not in m and "best_epoch_std" not in m      # spreads of results only
    assert m["best_epoch"] == 1.5 and m["n_params"] == 10
    # A count every seed shares stays a count (metrics/<v>.json said 4641.0 parameters).
    assert isinstance(m["n_params"], int) and isinstance(m["best_epoch"], float)
    assert m["device"] == "cpu" and m["mlflow_run_id"] == "a" and m["n_seeds"] == 2
    assert m["per_seed"] == {"1": {"val_mae": 0.3, "test_mae": pytest.approx(0.4),
                                   "best_epoch": 2, "mlflow_run_id": "a"},
                             "2": {"val_mae": 0.4, "test_mae": pytest.approx(0.5),
                                   "best_epoch": 1, "mlflow_run_id": "b"}}
    # The history covers the epochs every seed ran, averaged; epochs stay integers.
    assert h == [{"epoch": 1, "train_loss": 1.0, "val_loss": pytest.approx(0.6)},
                 {"epoch": 2, "train_loss": 1.0, "val_loss": pytest.approx(0.5)}]
    assert all(isinstance(row["epoch"], int) for row in h)


def test_no_result_is_an_error():
    with pytest.raises(ValueError, match="no results"):
        combine_seeds([])
