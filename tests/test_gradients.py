import numpy as np
import pytest
import torch

from rnnlab.lecture.gradients import (
    CellRegressor,
    decay_ratio,
    explode_run,
    scale_recurrent_weights,
    state_gradient_norms,
)


def batches(n=2, batch=16, steps=40, features=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, steps, features, generator=g), torch.randn(batch, generator=g))
            for _ in range(n)]


def stream(seed=0, **kw):
    i = 0
    while True:
        yield batches(1, seed=seed + i, **kw)[0]
        i += 1


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unrolled_cell_equals_the_fused_layer(cell):
    torch.manual_seed(0)
    model = CellRegressor(cell, 5, 8)
    x, _ = batches(1)[0]
    pred, states = model.unrolled(x)
    torch.testing.assert_close(pred, model(x), rtol=1e-5, atol=1e-6)
    assert len(states) == 40 and states[-1].shape == (16, 8)


def test_norm_at_the_output_is_the_head_weight_over_batch():
    # L1 loss on the last state: dL/dh_T = sign(pred - y) / B * w_out for every sample.
    torch.manual_seed(1)
    model = CellRegressor("gru", 5, 8)
    norms = state_gradient_norms(model, batches(1))
    assert norms[0] == pytest.approx(model.out.weight.norm().item() / 16, rel=1e-5)


def test_simple_rnn_vanishes_faster_than_lstm():
    torch.manual_seed(2)
    data = batches(2)
    rnn = CellRegressor("rnn", 5, 16)
    with torch.no_grad():
        rnn.rnn.weight_hh_l0.mul_(0.5)          # small recurrent weights
    lstm = CellRegressor("lstm", 5, 16)
    rnn_norms, lstm_norms = state_gradient_norms(rnn, data), state_gradient_norms(lstm, data)
    assert decay_ratio(rnn_norms, 20) < decay_ratio(lstm_norms, 20)
    assert decay_ratio(rnn_norms, 20) < 1e-3
    assert np.all(np.diff(np.log(rnn_norms[:30])) < 0)     # shrinks at every step back


def test_clipping_bounds_every_update_and_prevents_divergence():
    runs = {}
    for clip in (None, 1.0):
        torch.manual_seed(3)
        model = CellRegressor("rnn", 5, 16, nonlinearity="relu")
        scale_recurrent_weights(model, 1.5)
        runs[clip] = explode_run(model, stream(), 60, lr=0.1, clip_norm=clip)
    plain, clipped = runs[None], runs[1.0]
    assert plain.diverged_at is not None and plain.diverged_at < 10
    assert not np.isfinite(plain.losses[-1]) or not np.isfinite(plain.grad_norms[-1])
    assert clipped.diverged_at is None and len(clipped.losses) == 60
    assert np.mean(clipped.losses[-10:]) < clipped.losses[0]    # and it still learns
    assert max(clipped.clipped_norms) <= 1.0 + 1e-5
    assert max(clipped.grad_norms) > 1.0            # clipping had something to do


def test_explode_run_stops_at_the_first_non_finite_loss():
    torch.manual_seed(4)
    model = CellRegressor("rnn", 5, 8)
    with torch.no_grad():
        model.out.bias.fill_(float("inf"))
    trace = explode_run(model, stream(), 10, lr=0.1, clip_norm=None)
    assert trace.diverged_at == 1 and len(trace.losses) == 1


def test_decay_ratio_checks_the_distance():
    with pytest.raises(ValueError, match="beyond the window"):
        decay_ratio(np.ones(10), 10)
