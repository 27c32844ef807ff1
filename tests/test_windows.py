import numpy as np
import pytest
import torch

from rnnlab.core.errors import RnnlabError
from rnnlab.data.windows import (
    JenaWindows,
    load_spec,
    make_window_spec,
    save_spec,
    shuffled_batches,
)

N = 3000
SPLITS = {"train": (0, 1500), "val": (1501, 2200), "test": (2201, None)}


@pytest.fixture(scope="module")
def features():
    # Distinct values everywhere: cell (i, j) = i + j / 100, so any off-by-one shows.
    return (np.arange(N)[:, None] + np.arange(14)[None, :] / 100).astype(np.float32)


def spec_for(lookback=144, step=6, delay=24, splits=SPLITS):
    return make_window_spec(n_rows=N, lookback=lookback, step=step, delay=delay,
                            target_index=1, splits=splits)


def direct_sample(features, r, lookback, step, delay, target=1):
    """The lecture's generator for one target row r, written out plainly."""
    x = np.stack([features[i] for i in range(r - lookback, r, step)])
    return x, features[r + delay][target]


def test_ranges_follow_the_convention():
    spec = spec_for()
    assert spec.train == (144, 1500)           # lo + lookback <= r < hi
    assert spec.val == (1501 + 144, 2200)
    assert spec.test == (2201 + 144, N - 24 - 1)  # open split: hi = N - delay - 1
    assert spec.timesteps == 24 and spec.offsets[0] == -144 and spec.offsets[-1] == -6


@pytest.mark.parametrize("lookback, step, delay", [(144, 6, 24), (100, 7, 0), (60, 1, 13)])
def test_batch_matches_direct_formula(features, lookback, step, delay):
    spec = spec_for(lookback, step, delay)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        w = JenaWindows(features, spec, split)
        start, stop = getattr(spec, split)
        # random target rows plus both split edges
        rows = np.concatenate([rng.integers(start, stop, 20), [start, start + 1, stop - 1]])
        x, y = w.batch(rows)
        assert x.shape == (len(rows), -(-lookback // step), 14) and y.shape == (len(rows),)
        for b, r in enumerate(rows):
            ex, ey = direct_sample(features, int(r), lookback, step, delay)
            np.testing.assert_array_equal(x[b], ex)
            assert y[b] == ey
        # Every input row of the first window lies inside the split.
        lo = SPLITS[split][0]
        assert x[-3, 0, 0] == lo


def test_reversed_equals_flipped(features):
    spec = spec_for()
    fwd = JenaWindows(features, spec, "val")
    rev = JenaWindows(features, spec, "val", reverse=True)
    rows = fwd.rows[::37]
    (xf, yf), (xr, yr) = fwd.batch(rows), rev.batch(rows)
    np.testing.assert_array_equal(xr.numpy(), xf.numpy()[:, ::-1, :])
    np.testing.assert_array_equal(yr, yf)


def test_ordered_visits_every_window_once(features):
    spec = spec_for()
    w = JenaWindows(features, spec, "val")
    batches = list(w.ordered(batch_size=128))
    seen = np.concatenate([x[:, -1, 0] + 6 for x, _ in batches])   # last input row + step = r
    np.testing.assert_array_equal(seen, np.arange(*spec.val))
    assert len(batches) == -(-spec.count("val") // 128)
    assert len(list(w.ordered(batch_size=128, max_batches=2))) == 2


def test_ordered_joins_batches_without_changing_the_rows(features):
    """``join`` batches per pass (evaluation on a GPU): the same windows in the same order,
    a cap still counted in batches of ``batch_size``."""
    w = JenaWindows(features, spec_for(), "val")
    for cap in (None, 5, 0):
        alone = list(w.ordered(batch_size=50, max_batches=cap))
        joined = list(w.ordered(batch_size=50, max_batches=cap, join=4))
        n = sum(len(y) for _, y in alone)
        assert [len(y) for _, y in joined] == [min(200, n - s) for s in range(0, n, 200)]
        for i in (0, 1):
            np.testing.assert_array_equal(
                torch.cat([b[i] for b in joined]).numpy() if joined else [],
                torch.cat([b[i] for b in alone]).numpy() if alone else [])
    assert sum(len(y) for _, y in w.ordered(batch_size=50, max_batches=5, join=4)) == 250


def test_epoch_batches_are_seeded_by_epoch(features):
    spec = spec_for()
    w = JenaWindows(features, spec, "train")

    def rows_of(epoch, seed, steps=5, batch=64):
        return np.concatenate([x[:, -1, 0].numpy() + 6
                               for x, _ in w.epoch_batches(epoch, steps, batch, seed)])

    np.testing.assert_array_equal(rows_of(3, 1), rows_of(3, 1))     # same (seed, epoch)
    assert not np.array_equal(rows_of(3, 1), rows_of(4, 1))         # another epoch
    assert not np.array_equal(rows_of(3, 1), rows_of(3, 2))         # another seed
    n = spec.count("train")
    one_pass = rows_of(1, 1, steps=n // 64)
    assert len(np.unique(one_pass)) == len(one_pass)                # no repeats within a pass
    assert not np.array_equal(one_pass, np.sort(one_pass))
    assert np.isin(one_pass, np.arange(*spec.train)).all()
    more = rows_of(1, 1, steps=n // 64 + 3)                         # spills into a 2nd pass
    assert len(more) == (n // 64 + 3) * 64
    full = rows_of(1, 1, steps=None, batch=100)                     # one pass, short last batch
    np.testing.assert_array_equal(np.sort(full), np.arange(*spec.train))


def test_an_epochs_batches_are_the_windows_of_its_shuffled_rows(features):
    """epoch_batches sends the epoch's row numbers to the matrix's device in one copy (on a
    GPU, no copy from the host per step): each batch is still ``batch`` of its rows from
    ``shuffled_batches``, the short last one too."""
    w = JenaWindows(features, spec_for(), "train")
    for steps, size in ((7, 64), (None, 100)):
        expected = [w.batch(rows) for rows in shuffled_batches(w.rows, 2, steps, size, 9)]
        got = list(w.epoch_batches(2, steps, size, 9))
        assert len(got) == len(expected) > 1
        for (x, y), (xe, ye) in zip(got, expected):
            assert torch.equal(x, xe) and torch.equal(y, ye)
    assert len(expected[-1][1]) < 100


def test_spec_round_trip(tmp_path):
    spec = spec_for()
    save_spec(spec, tmp_path)
    assert load_spec(tmp_path) == spec


@pytest.mark.parametrize("kwargs, message", [
    (dict(step=0), "jena.step must be >= 1"),
    (dict(lookback=3, step=6), r"jena.lookback \(3\) must be >= jena.step \(6\)"),
    (dict(lookback=800), r"jena.val_rows \[1501, 2200\] holds no window"),
    (dict(splits={**SPLITS, "test": (2201, N)}), r"jena.test_rows .* fall past the last row"),
])
def test_bad_window_params(kwargs, message):
    with pytest.raises(RnnlabError, match=message):
        spec_for(**kwargs)


def test_matrix_and_spec_must_agree(features):
    spec = make_window_spec(n_rows=N + 1, lookback=144, step=6, delay=24, target_index=1,
                            splits=SPLITS)
    with pytest.raises(RnnlabError, match="rerun `dvc repro`"):
        JenaWindows(features, spec, "train")


def test_a_split_past_the_end_is_named_as_params_yaml_writes_it():
    """An open split (end null) in the message reads as params.yaml says it, not None."""
    import pytest

    from rnnlab.core.errors import RnnlabError
    from rnnlab.data.windows import make_window_spec

    with pytest.raises(RnnlabError) as caught:
        make_window_spec(n_rows=1000, lookback=120, step=6, delay=24, target_index=1,
                         splits={"train": (0, 500), "val": (501, 800), "test": (990, None)})
    assert "jena.test_rows [990, null]" in str(caught.value)
    assert "None" not in str(caught.value)


@pytest.mark.hostile
def test_a_variants_own_lookback_and_step_are_named_in_its_errors():
    """models.<v>.lookback/step override jena's: an error about them names the variant's
    keys, not jena.lookback (which the user did not set to that value)."""
    from rnnlab.data.windows import variant_spec

    base = spec_for()
    with pytest.raises(RnnlabError, match=r"^models.gru.lookback \(2\) must be "
                                          r">= models.gru.step \(6\)$"):
        variant_spec(base, 2, 6, name="gru")
    with pytest.raises(RnnlabError, match=r"^models.gru.lookback \(3\) must be "
                                          r">= jena.step \(6\)$"):
        variant_spec(base, 3, None, name="gru")
    with pytest.raises(RnnlabError, match=r"shorten models.gru.lookback$"):
        variant_spec(base, 6000, None, name="gru")
    assert variant_spec(base, 288, None, name="gru").lookback == 288
