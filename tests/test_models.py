"""Every variant in params.yaml builds, learns and sends a gradient to every parameter."""

from pathlib import Path

import pytest
import torch
import yaml

from rnnlab.core.config import from_mapping
from rnnlab.core.errors import RnnlabError
from rnnlab.nn.models import (
    REGISTRY,
    Embedded,
    Head,
    ModelSpec,
    Recurrent,
    build_model,
    count_parameters,
)

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


def _grad_fns(out: torch.Tensor) -> set[str]:
    """The names of the autograd nodes behind ``out``."""
    seen, todo, names = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def _both_routes(layer, ids, table, training: bool, seed: int = 11):
    """Outputs, the table's and every parameter's gradient, by ``forward_ids`` and by
    embedding-then-layer, with the same dropout draws; and the autograd nodes of each."""
    results = []
    for route in ("ids", "embedding"):
        layer.train(training)
        torch.manual_seed(seed)
        out = (layer.forward_ids(ids, table) if route == "ids"
               else layer(torch.nn.functional.embedding(ids, table)))
        table.grad = None
        layer.zero_grad()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append(([out.detach(), table.grad] + [p.grad for p in layer.parameters()],
                        _grad_fns(out)))
    return results


def set_input_dropout(layer, p: float) -> None:
    """The input dropout of a ``Recurrent`` and of each of its directions."""
    for module in (layer, layer.forward_rnn, layer.backward_rnn):
        if module is not None:
            module.dropout = p


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_recurrent_layer_reading_token_ids_equals_the_embedding_route(
        cell, bidirectional, return_sequences, fused):
    """``forward_ids`` (the table projected once, its rows gathered) gives the outputs and
    gradients of embedding-then-layer up to rounding, in training (with the same
    recurrent-dropout mask) and in evaluation (where input dropout is off, so the table
    route runs), for int64 and non-contiguous int32 ids; without the C++ recurrences it is
    the embedding route."""
    from rnnlab.nn import fused as fused_module
    if fused and not fused_module.available():
        pytest.skip(f"fused extension unavailable: {fused_module.unavailable_reason()}")
    vocab, batch, steps = 40, 6, 9
    torch.manual_seed(5)
    table = torch.nn.Parameter(torch.empty(vocab, 7).uniform_(-0.5, 0.5))
    # (without the C++ recurrences only a GRU has recurrent dropout)
    layer = Recurrent(cell, 7, 5, dropout=0.0,
                      recurrent_dropout=0.3 if fused or cell == "gru" else 0.0,
                      activation="tanh", bidirectional=bidirectional,
                      return_sequences=return_sequences)
    for direction in (layer.forward_rnn, layer.backward_rnn):
        if direction is not None:
            direction.native = fused
    ids = torch.randint(0, vocab, (batch, steps))
    ids[:, :3] = 0                                             # front padding, repeated ids
    strided = torch.randint(0, vocab, (steps, batch), dtype=torch.int32).t()   # (B, T) view
    for training, token_ids in ((True, ids), (False, ids), (True, strided)):
        (ours, ours_nodes), (reference, reference_nodes) = _both_routes(
            layer, token_ids, table, training)
        assert ("_TableRecurrenceBackward" in ours_nodes) == fused, ours_nodes
        assert ("EmbeddingBackward0" in ours_nodes) == (not fused), ours_nodes
        assert "_TableRecurrenceBackward" not in reference_nodes
        for mine, theirs in zip(ours, reference):
            # float32 sums in another order: equal within 1e-5 of each tensor's scale
            torch.testing.assert_close(mine, theirs, rtol=1e-5,
                                       atol=1e-5 * float(theirs.abs().max()))

    # Evaluation ignores input dropout, so the table route serves it; training with an
    # input mask, or a table with more rows than the batch has tokens, takes the embedding.
    set_input_dropout(layer, 0.2)
    (ours, nodes), (reference, _) = _both_routes(layer, ids, table, training=False)
    assert ("_TableRecurrenceBackward" in nodes) == fused
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, rtol=1e-5,
                                   atol=1e-5 * float(theirs.abs().max()))
    assert "_TableRecurrenceBackward" not in _both_routes(layer, ids, table, training=True)[0][1]
    set_input_dropout(layer, 0.0)
    assert "_TableRecurrenceBackward" not in _both_routes(layer, ids[:2, :3], table, True)[0][1]


@pytest.mark.parametrize("name", sorted(k for k, v in IMDB_TORCH_VARIANTS.items()
                                         if v["arch"] == "embed_rnn"))
def test_imdb_model_reading_token_ids_equals_embedding_then_body(name):
    """Each IMDB model (``Embedded``: the first recurrent layer reads the ids; a second
    recurrent layer added to test the rest of the stack) computes what embedding-then-body
    computes, with the same gradients up to rounding; the same bits on 1 and 2 threads."""
    spec = from_mapping(ModelSpec, {**PARAMS["models"][name], "units": [8, 6]}, where=name)
    torch.manual_seed(2)
    model = build_model(spec, n_features=60, timesteps=20).train()
    ids = torch.randint(0, 60, (10, 20))
    y = (ids == 7).any(1).float()

    def loss_and_grads(route_model):
        route_model.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(route_model(ids), y)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss_and_grads(model)
        torch.set_num_threads(2)
        two = loss_and_grads(model)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    embedding, body = model.body[0], model.body[1]
    plain = Head(torch.nn.Sequential(embedding, body), model.out.in_features)
    plain.out = model.out
    for mine, theirs in zip(one, loss_and_grads(plain)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert isinstance(model.body, Embedded)
    assert [k for k in model.state_dict()] == [k for k in plain.state_dict()]
    assert "_TableRecurrenceBackward" in _grad_fns(model(ids))
    embedding.padding_idx = 0          # an option the table route does not reproduce
    nodes = _grad_fns(model(ids))
    assert "_TableRecurrenceBackward" not in nodes and "EmbeddingBackward0" in nodes


def test_imdb_lecture_architectures():
    assert count_parameters(build_model(spec_of("imdb_simplernn"), 10002, 500)) == (
        10002 * 32 + (32 * 32 + 32 * 32 + 2 * 32) + 33)   # Keras: 320,000 + 2,080 + 33 (+32 bias)
    assert count_parameters(build_model(spec_of("imdb_dense"), 10002, 500)) == (
        10002 * 16 + 16 + 16 * 16 + 16 + 17)


def test_embedding_starts_as_keras_does():
    model = build_model(spec_of("imdb_lstm"), 10002, 500)
    weight = model.body[0].weight
    assert weight.abs().max() <= 0.05 and weight.std() > 0.02


# Initial weights (train.init). What Keras 3 draws, read in its source (keras/src/layers/rnn,
# initializers): Dense/Conv1D kernels Glorot-uniform, recurrent ``kernel`` (I, G*H)
# Glorot-uniform, ``recurrent_kernel`` (H, G*H) Orthogonal over the whole matrix (rows
# orthonormal; not each gate's block), biases zero, LSTM forget-gate bias 1.
# tests/test_keras_parity.py checks the same properties on weights Keras itself drew.
TORCH_VARIANTS = {**JENA_VARIANTS, **IMDB_TORCH_VARIANTS}


def build_full_size(name: str, init: str = "keras", seed: int = 0):
    spec = spec_of(name)
    torch.manual_seed(seed)
    if spec.dataset == "imdb":
        return build_model(spec, 10002, 500, init=init)
    return build_model(spec, 14, 240, init=init)


def glorot_limit(weight: torch.Tensor) -> float:
    fan_in, fan_out = weight.size(1), weight.size(0)            # torch: (out, in[, k])
    receptive = weight[0][0].numel()
    return (6.0 / (fan_in * receptive + fan_out * receptive)) ** 0.5


def assert_uniform_within(weight: torch.Tensor, limit: float, what: str):
    assert weight.abs().max() <= limit, f"{what}: outside +-{limit:.4f}"
    if weight.numel() >= 200:       # and it fills the range: a uniform's std is limit/sqrt(3)
        assert abs(weight.std().item() / (limit / 3 ** 0.5) - 1) < 0.15, what


def assert_keras_initialized(model: torch.nn.Module, name: str):
    """Every layer of ``model`` holds what Keras 3's defaults draw."""
    from rnnlab.nn.recurrent import GATES, RecurrentLayer
    kinds = set()
    for path, module in model.named_modules():
        what = f"{name} {path}"
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
            assert_uniform_within(module.weight, glorot_limit(module.weight), what)
            assert (module.bias == 0).all(), what
            kinds.add(type(module).__name__)
        elif isinstance(module, RecurrentLayer):
            gates, hidden = GATES[module.cell], module.hidden_size
            w_ih, w_hh = module.weight_ih_l0.detach(), module.weight_hh_l0.detach()
            limit = (6.0 / (module.input_size + gates * hidden)) ** 0.5
            assert_uniform_within(w_ih, limit, what)
            # Keras' (H, G*H) recurrent kernel has orthonormal rows: ours, its transpose
            # (gate blocks reordered for a GRU), orthonormal columns.
            torch.testing.assert_close(w_hh.t() @ w_hh, torch.eye(hidden), atol=1e-5, rtol=0)
            if gates > 1:               # over the whole matrix, so no gate's block is orthogonal
                block = w_hh[:hidden]
                assert (block.t() @ block - torch.eye(hidden)).abs().max() > 0.1, what
            forget = torch.zeros(gates * hidden)
            if module.cell == "lstm":
                forget[hidden:2 * hidden] = 1.0                     # i, f, g, o
            torch.testing.assert_close(module.bias_ih_l0 + module.bias_hh_l0, forget,
                                       atol=0, rtol=0)
            kinds.add(module.cell)
        elif isinstance(module, torch.nn.Embedding):
            assert module.weight.abs().max() <= 0.05, what
            kinds.add("Embedding")
    return kinds


@pytest.mark.parametrize("name", sorted(TORCH_VARIANTS))
def test_keras_init_is_the_default_for_every_layer(name):
    kinds = assert_keras_initialized(build_full_size(name), name)
    assert "Linear" in kinds


def test_keras_init_covers_every_kind_of_layer():
    kinds = set().union(*(assert_keras_initialized(build_full_size(n), n)
                          for n in ("conv_gru", "lstm", "bigru", "imdb_simplernn")))
    assert kinds == {"Linear", "Conv1d", "gru", "lstm", "rnn", "Embedding"}


def test_lstm_forget_bias_is_one_in_total():
    model = build_full_size("imdb_bilstm")
    for layer in (model.body[1][0].forward_rnn, model.body[1][0].backward_rnn):
        total = (layer.bias_ih_l0 + layer.bias_hh_l0).detach().view(4, 32)   # i, f, g, o
        assert (total[1] == 1).all() and (total[[0, 2, 3]] == 0).all()


def test_init_is_deterministic_under_the_seed():
    a, b, c = (build_full_size("gru_stacked", seed=s) for s in (5, 5, 6))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        assert "bias" in name or not torch.equal(pa, pc), name     # biases: all 0 or 1


@pytest.mark.parametrize("name", ["conv_gru", "lstm", "imdb_simplernn", "imdb_dense"])
def test_torch_init_keeps_pytorchs_defaults(name):
    """``torch``: Kaiming-uniform Linear/Conv1d (limit 1/sqrt(fan_in), biases too) and
    recurrent weights and biases uniform in +-1/sqrt(H); nothing orthogonal, no zero bias."""
    from rnnlab.nn.recurrent import RecurrentLayer
    model = build_full_size(name, init="torch")
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
            limit = 1 / module.weight[0].numel() ** 0.5
            assert_uniform_within(module.weight, limit, path)
            assert module.bias.abs().max() <= limit and (module.bias != 0).all(), path
        elif isinstance(module, RecurrentLayer):
            limit = 1 / module.hidden_size ** 0.5
            for pname, p in module.named_parameters():
                assert_uniform_within(p.detach(), limit, f"{path}.{pname}")
                assert (p != 0).all(), f"{path}.{pname}"
            w_hh = module.weight_hh_l0.detach()
            assert (w_hh.t() @ w_hh - torch.eye(module.hidden_size)).abs().max() > 0.1


def test_unknown_init_is_refused():
    with pytest.raises(RnnlabError, match=r"init 'glorot': choose one of keras, torch"):
        build_full_size("gru", init="glorot")


def test_keras_init_refuses_a_layer_it_does_not_know():
    from rnnlab.nn.models import initialize
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    with pytest.raises(RnnlabError, match=r"no Keras initializer for LayerNorm"):
        initialize(model, "keras")
    assert initialize(model, "torch") is model


def test_initial_weights_do_not_depend_on_the_thread_count():
    """A queue worker runs with OMP_NUM_THREADS=1, `dvc repro` with every core: the same
    seed must give the same starting weights (LAPACK's QR rounded differently per count)."""
    import torch

    from rnnlab.training.seeds import seed_everything

    drawn, before = [], torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seed_everything(3)
            model = build_model(ModelSpec(dataset="jena", arch="gru", epochs=1, units=(32,)),
                                14, 20)
            drawn.append([p.detach().clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*drawn):
        assert torch.equal(a, b)


def test_conv_gru_with_the_fused_front_trains_as_with_pytorch_ops(monkeypatch):
    """The conv front in the C++ kernels (the default on the CPU) against the same model
    with PyTorch's Conv1d, ReLU and max (the front's path where the C++ build is missing):
    one training step's loss and gradients, equal to rounding (the convolutions sum in
    another order than oneDNN's)."""
    import copy

    import rnnlab.nn.models as models_module
    from rnnlab.nn import fused
    if not fused.available():
        pytest.skip(f"fused extension unavailable: {fused.unavailable_reason()}")
    spec = ModelSpec(dataset="jena", arch="conv_gru", epochs=1, units=(8,), conv_filters=6,
                     conv_kernel=3, pool_size=3, dropout=0.1, recurrent_dropout=0.3)
    torch.manual_seed(0)
    model = build_model(spec, n_features=5, timesteps=40)
    x, y = torch.randn(9, 40, 5), torch.randn(9)
    grads = []
    for fused_front in (True, False):
        if not fused_front:
            monkeypatch.setattr(models_module, "_use_fused", lambda t: False)
        copy_ = copy.deepcopy(model)
        torch.manual_seed(1)
        before = fused.calls["conv"]
        loss = torch.nn.functional.l1_loss(copy_(x), y)
        loss.backward()
        assert fused.calls["conv"] == before + 2 * fused_front     # both convolutions
        grads.append([loss.detach()] + [p.grad for p in copy_.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.hostile
def test_a_conv_gru_with_too_few_time_steps_says_the_least_it_needs():
    """Two kernels of 5 and pooling by 3 need 19 time steps (lookback / step): 18 is refused
    with that figure and the keys to change; 19 builds."""
    conv = spec_of("conv_gru")
    with pytest.raises(RnnlabError, match=r"18 time steps .* needs at least 19; raise the "
                                          r"variant's lookback \(models.<variant>.lookback"):
        build_model(conv, n_features=14, timesteps=18)
    assert count_parameters(build_model(conv, n_features=14, timesteps=19)) > 0
