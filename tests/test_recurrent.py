import pytest
import torch

from rnnlab.nn.recurrent import DropoutGRU, _GRURecurrence


def reference_gru(x, layer, mask_x=None, mask_h=None):
    """The GRU equations written out step by step, masks applied at every step."""
    w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
    b_ih, b_hh = layer.bias_ih_l0, layer.bias_hh_l0
    hidden = layer.hidden_size
    act = torch.relu if layer.activation == "relu" else torch.tanh
    h = x.new_zeros(x.size(0), hidden)
    outs = []
    for t in range(x.size(1)):
        xt = x[:, t] if mask_x is None else x[:, t] * mask_x
        hm = h if mask_h is None else h * mask_h
        gi, gh = xt @ w_ih.T + b_ih, hm @ w_hh.T + b_hh
        r = torch.sigmoid(gi[:, :hidden] + gh[:, :hidden])
        z = torch.sigmoid(gi[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = act(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, 1), h


@pytest.mark.parametrize("return_sequences", [False, True])
def test_equals_nn_gru_at_zero_dropout(return_sequences):
    torch.manual_seed(0)
    ref = torch.nn.GRU(5, 7, batch_first=True)
    layer = DropoutGRU(5, 7, return_sequences=return_sequences)
    layer.load_state_dict(ref.state_dict())          # same parameter names and layout
    x = torch.randn(4, 11, 5, requires_grad=True)
    seq, h_n = ref(x)
    expected = seq if return_sequences else h_n[0]
    got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # ... and so are the gradients of every parameter and of the input.
    (got ** 2).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    x.grad = None
    (expected ** 2).sum().backward()
    for mine, theirs in zip(grads, [p.grad for p in ref.parameters()] + [x.grad]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_hand_written_backward_passes_gradcheck(relu, masked, return_sequences):
    torch.manual_seed(1)
    steps, batch, hidden = 6, 3, 4
    gi = torch.randn(steps, batch, 3 * hidden, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(3 * hidden, hidden, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(3 * hidden, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(batch, hidden, dtype=torch.float64) > 0.3) / 0.7 if masked else None
    fn = lambda g, w, b: _GRURecurrence.apply(g, w, b, mask, relu, return_sequences)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (gi, w_hh, b_hh), eps=1e-6, atol=1e-6)


def test_one_mask_per_sequence_reused_at_every_step():
    torch.manual_seed(2)
    layer = DropoutGRU(6, 8, dropout=0.4, recurrent_dropout=0.3, return_sequences=True).train()
    x = torch.randn(5, 9, 6)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    mask_x, mask_h = layer.sample_masks(5)            # the masks that call drew
    expected, _ = reference_gru(x, layer, mask_x, mask_h)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # Inverted scaling: kept units are scaled by 1/(1-p), dropped ones are exactly 0.
    for mask, p in ((mask_x, 0.4), (mask_h, 0.3)):
        kept = mask[mask != 0]
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))
    # Each sequence has its own masks.
    assert not torch.equal(mask_x[0], mask_x[1]) or not torch.equal(mask_x[1], mask_x[2])


def test_mask_rate_and_scale():
    torch.manual_seed(4)
    layer = DropoutGRU(50, 60, dropout=0.2, recurrent_dropout=0.5)
    mask_x, mask_h = layer.sample_masks(400)
    assert (mask_x == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (mask_h == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert mask_x.mean().item() == pytest.approx(1.0, abs=0.02)


def test_dropout_is_off_in_eval_mode():
    torch.manual_seed(5)
    layer = DropoutGRU(4, 6, dropout=0.5, recurrent_dropout=0.5)
    plain = DropoutGRU(4, 6)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, 7, 4)
    layer.eval()
    torch.testing.assert_close(layer(x), plain(x))
    torch.testing.assert_close(layer(x), layer(x))     # deterministic
    layer.train()
    assert not torch.allclose(layer(x), plain(x))


def test_relu_activation_matches_reference():
    torch.manual_seed(6)
    layer = DropoutGRU(3, 5, activation="relu", return_sequences=True)
    x = torch.randn(2, 8, 3)
    torch.testing.assert_close(layer(x), reference_gru(x, layer)[0], rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation 'sigmoid'"):
        DropoutGRU(3, 4, activation="sigmoid")
    with pytest.raises(ValueError, match="recurrent_dropout must be in"):
        DropoutGRU(3, 4, recurrent_dropout=1.0)
