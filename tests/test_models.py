"""Every variant in params.yaml builds, learns and sends a gradient to every parameter."""

from pathlib import Path

import pytest
import torch
import yaml

from rnnlab.config import from_mapping
from rnnlab.errors import RnnlabError
from rnnlab.models import REGISTRY, ModelSpec, Recurrent, build_model, count_parameters

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
JENA_VARIANTS = {k: v for k, v in PARAMS["models"].items() if v["dataset"] == "jena"}
KERAS_PARAMS = {  # Keras' model.summary() totals for the lecture's models, 14 features
    "gru": 4641,          # GRU(32): 3 * (14*32 + 32*32 + 2*32) + Dense(1) 33
    "lstm": 6049 + 128,   # LSTM(32) 6016 + Dense(1) 33; nn.LSTM carries a second bias (4*32)
}


IMDB_TORCH_VARIANTS = {k: v for k, v in PARAMS["models"].items()
                       if v["dataset"] == "imdb" and v["arch"] != "tfidf_logreg"}


def spec_of(name: str) -> ModelSpec:
    return from_mapping(ModelSpec, PARAMS["models"][name], where=f"params.yaml: models.{name}")


def tiny_batch(spec: ModelSpec, batch: int = 8):
    timesteps = 40 if spec.arch == "conv_gru" else 12
    torch.manual_seed(0)
    return torch.randn(batch, timesteps, 14), torch.randn(batch), timesteps


@pytest.mark.parametrize("name", sorted(JENA_VARIANTS))
def test_variant_builds_and_every_parameter_gets_a_gradient(name):
    spec = spec_of(name)
    x, y, timesteps = tiny_batch(spec, batch=7)   # odd: the L1 bias gradient (mean sign) != 0
    model = build_model(spec, n_features=14, timesteps=timesteps).train()
    out = model(x)
    assert out.shape == (7,) and torch.isfinite(out).all()
    torch.nn.functional.l1_loss(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("name", sorted(JENA_VARIANTS))
def test_variant_learns_a_fixed_batch(name):
    spec = spec_of(name)
    x, y, timesteps = tiny_batch(spec, batch=16)
    torch.manual_seed(1)
    model = build_model(spec, n_features=14, timesteps=timesteps)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)

    def loss_now():
        model.eval()
        with torch.no_grad():
            return torch.nn.functional.l1_loss(model(x), y).item()

    before = loss_now()
    for _ in range(30):
        model.train()
        opt.zero_grad()
        torch.nn.functional.l1_loss(model(x), y).backward()
        opt.step()
    assert loss_now() < 0.9 * before


@pytest.mark.parametrize("name, expected", sorted(KERAS_PARAMS.items()))
def test_parameter_counts_match_keras(name, expected):
    assert count_parameters(build_model(spec_of(name), 14, 240)) == expected


def test_lecture_settings_are_the_defaults():
    assert spec_of("gru_dropout").dropout == 0.2 and spec_of("gru_dropout").recurrent_dropout == 0.2
    stacked = spec_of("gru_stacked")
    assert stacked.units == (32, 64) and stacked.activations == ("tanh", "relu")
    assert (stacked.dropout, stacked.recurrent_dropout) == (0.1, 0.5)
    conv = spec_of("conv_gru")
    assert (conv.lookback, conv.step, conv.conv_kernel, conv.pool_size) == (720, 3, 5, 3)
    lecture_epochs = {"dense": 20, "gru": 20, "gru_dropout": 40, "gru_stacked": 40,
                      "gru_reversed": 20, "bigru": 40, "conv_gru": 20, "lstm": 20}
    assert {n: JENA_VARIANTS[n]["epochs"] for n in lecture_epochs} == lecture_epochs


@pytest.mark.parametrize("cell, reference", [("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM),
                                             ("rnn", torch.nn.RNN)])
@pytest.mark.parametrize("fused", [True, False])
def test_bidirectional_layer_equals_torch_with_copied_weights(monkeypatch, cell, reference, fused):
    """Our layers (C++ recurrences, or PyTorch's loop where those cannot be built) compute
    what torch's own bidirectional layer computes with the same weights."""
    torch.manual_seed(3)
    theirs = reference(14, 8, batch_first=True, bidirectional=True)
    ours = Recurrent(cell, 14, 8, dropout=0.0, recurrent_dropout=0.0, activation="tanh",
                     bidirectional=True, return_sequences=True)
    for layer in (ours.forward_rnn, ours.backward_rnn):
        layer.native = fused
    state = theirs.state_dict()
    ours.forward_rnn.load_state_dict({k: v for k, v in state.items() if "reverse" not in k})
    ours.backward_rnn.load_state_dict({k.replace("_reverse", ""): v for k, v in state.items()
                                       if "reverse" in k})
    x = torch.randn(5, 10, 14, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x)[0], rtol=1e-5, atol=1e-6)
    ours(x).sum().backward()
    grad_ours, x.grad = x.grad, None
    theirs(x)[0].sum().backward()
    torch.testing.assert_close(grad_ours, x.grad, rtol=1e-5, atol=1e-5)


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(RnnlabError, match=r"params.yaml: models.x.arch: unknown architecture "
                                          r"'transformer'; known: conv_gru, dense, embed_rnn, gru, lstm, "
                                          r"multihot_dense, tfidf_logreg"):
        from_mapping(ModelSpec, {"dataset": "jena", "arch": "transformer", "epochs": 1},
                     where="params.yaml: models.x")
    assert {"dense", "gru", "lstm", "conv_gru"} <= set(REGISTRY)



@pytest.mark.parametrize("name", sorted(IMDB_TORCH_VARIANTS))
def test_imdb_variant_learns_and_every_parameter_gets_a_gradient(name):
    spec = spec_of(name)
    torch.manual_seed(0)
    vocab = 50
    x = torch.randint(2, vocab, (15, 30))
    x[:, :5] = 0                                        # front padding, as the data has
    y = (x == 7).any(1).float()                         # "positive" if word 7 occurs
    model = build_model(spec, n_features=vocab, timesteps=30)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    out = model(x)
    assert out.shape == (15,)
    loss_fn(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.9, eps=1e-7)
    before = loss_fn(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    assert loss_fn(model(x), y).item() < 0.9 * before


def test_imdb_lecture_architectures():
    assert count_parameters(build_model(spec_of("imdb_simplernn"), 10002, 500)) == (
        10002 * 32 + (32 * 32 + 32 * 32 + 2 * 32) + 33)   # Keras: 320,000 + 2,080 + 33 (+32 bias)
    assert count_parameters(build_model(spec_of("imdb_dense"), 10002, 500)) == (
        10002 * 16 + 16 + 16 * 16 + 16 + 17)


def test_embedding_starts_as_keras_does():
    model = build_model(spec_of("imdb_lstm"), 10002, 500)
    weight = model.body[0].weight
    assert weight.abs().max() <= 0.05 and weight.std() > 0.02
