"""The persistent recurrences (rnnlab.nn.persistent) against the CPU's C++ kernels.

On a GPU these run the compiled Triton kernels on CUDA tensors; without one (CI), the same
kernels run in Triton's interpreter on CPU tensors, so their arithmetic is checked on
every run. The reference is rnnlab.nn.fused, itself tested against nn.GRU/nn.LSTM/nn.RNN
(tests/test_fused.py): outputs and every gradient within 1e-5 of each tensor's scale.
"""

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Before the kernels are first built (rnnlab.nn.persistent imports them on first use).
    os.environ["TRITON_INTERPRET"] = "1"

from rnnlab.core.errors import RnnlabError  # noqa: E402
from rnnlab.nn import fused, persistent  # noqa: E402
from rnnlab.nn.models import ModelSpec, build_model  # noqa: E402
from rnnlab.nn.recurrent import RecurrentLayer  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = 1e-5


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 in the reference's products on a GPU."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    scale = want.abs().max().item() or 1.0
    err = (got.cpu() - want.cpu()).abs().max().item() / scale
    assert err <= TOL, f"{what}: {err:.2e} of the scale apart"


def _inputs(cell, steps, batch, hidden, masked, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    gates = persistent.GATES[cell]
    gi = torch.randn(steps, batch, gates * hidden, generator=g, dtype=dtype)
    w = torch.randn(gates * hidden, hidden, generator=g, dtype=dtype) / hidden ** 0.5
    b = torch.randn(gates * hidden, generator=g, dtype=dtype) * 0.1
    mask = (torch.rand(batch, hidden, generator=g) > 0.4).to(dtype) / 0.6 if masked else None
    return gi, w, b, mask


def _reference(cell, gi, w, b, mask, relu, seq):
    if cell == "lstm":
        return fused.lstm_recurrence(gi, w, b, mask, seq)
    return getattr(fused, f"{cell}_recurrence")(gi, w, b, mask, relu, seq)


def _run(fn, tensors, mask, grad_seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves, mask)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed),
                         dtype=out.dtype).to(out.device)
    (out * weight).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


CASES = [(cell, relu) for cell in ("gru", "lstm", "rnn")
         for relu in ((False, True) if cell != "lstm" else (False,))]


@pytest.mark.fast
@pytest.mark.parametrize("cell,relu", CASES)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("seq", [False, True], ids=["last", "seq"])
def test_equals_the_cpu_kernels(cell, relu, masked, seq):
    """Outputs and the gradients of gi, w_hh and b_hh, on a batch that leaves a partly
    filled block of rows and a hidden size that is not a power of two."""
    before = persistent.calls[cell]
    gi, w, b, mask = _inputs(cell, steps=9, batch=21, hidden=12, masked=masked)
    want = _run(lambda *a: _reference(cell, *a, relu, seq), (gi, w, b), mask)
    dev = lambda t: None if t is None else t.to(DEVICE)
    got = _run(lambda *a: persistent.recurrence(cell, *a, relu, seq),
               [dev(t) for t in (gi, w, b)], dev(mask))
    for name, g, ref in zip(("output", "d gi", "d w_hh", "d b_hh"), got, want):
        _close(g, ref, name)
    assert persistent.calls[cell] == before + 1     # the kernels ran, not another path


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_the_lecture_sizes(cell):
    """32 units (every lecture layer) and a batch of two full blocks."""
    gi, w, b, mask = _inputs(cell, steps=12, batch=32, hidden=32, masked=True, seed=3)
    want = _run(lambda *a: _reference(cell, *a, False, True), (gi, w, b), mask)
    got = _run(lambda *a: persistent.recurrence(cell, *a, False, True),
               [t.to(DEVICE) for t in (gi, w, b)], mask.to(DEVICE))
    for name, g, ref in zip(("output", "d gi", "d w_hh", "d b_hh"), got, want):
        _close(g, ref, f"{cell} {name}")


@pytest.mark.fast
@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("seq", [False, True], ids=["last", "seq"])
def test_gradcheck_float64(cell, seq):
    gi, w, b, mask = _inputs(cell, steps=3, batch=18, hidden=3, masked=True,
                             dtype=torch.float64)
    leaves = [t.to(DEVICE).requires_grad_() for t in (gi, w, b)]
    mask = mask.to(DEVICE)
    assert torch.autograd.gradcheck(
        lambda g, w_, b_: persistent.recurrence(cell, g, w_, b_, mask, False, seq),
        leaves, fast_mode=True)


@pytest.mark.fast
def test_deterministic_and_eval_equals_training_without_masks():
    gi, w, b, _ = _inputs("gru", steps=6, batch=17, hidden=8, masked=False)
    gi, w, b = (t.to(DEVICE) for t in (gi, w, b))
    first = _run(lambda *a: persistent.recurrence("gru", *a), (gi, w, b), None)
    second = _run(lambda *a: persistent.recurrence("gru", *a), (gi, w, b), None)
    for one, two in zip(first, second):
        assert torch.equal(one, two)
    with torch.no_grad():     # the inference sweep keeps no states: the same h_T
        assert torch.equal(persistent.recurrence("gru", gi, w, b, None), first[0])


@pytest.fixture
def loop(monkeypatch):
    """``RNNLAB_CUDA_LOOP`` for one test."""
    return lambda value: monkeypatch.setenv("RNNLAB_CUDA_LOOP", value)


@pytest.mark.fast
@pytest.mark.parametrize("cell,activation", [("gru", "tanh"), ("gru", "relu"),
                                             ("lstm", "tanh"), ("rnn", "tanh")])
def test_a_layer_with_both_dropouts_takes_the_persistent_path(loop, cell, activation):
    """The same layer and masks: persistent and C++ give the same outputs and gradients."""
    torch.manual_seed(0)
    layer = RecurrentLayer(cell, 5, 12, dropout=0.2, recurrent_dropout=0.4,
                           activation=activation, return_sequences=True)
    x = torch.randn(19, 9, 5)
    masks = layer.sample_masks(19)
    results = {}
    for name, device in (("persistent", DEVICE), ("auto", torch.device("cpu"))):
        loop(name)
        copy_ = copy.deepcopy(layer).to(device)
        xx = x.to(device).requires_grad_()
        assert copy_.path(xx, True) == ("persistent" if name == "persistent" else "cpp")
        out = copy_(xx, tuple(m.to(device) for m in masks))
        out.square().sum().backward()
        results[name] = [out, xx.grad] + [p.grad for p in copy_.parameters()]
    for got, want in zip(results["persistent"], results["auto"]):
        _close(got.detach(), want.detach(), f"{cell} layer")


@pytest.mark.parametrize("variant", [
    ModelSpec(dataset="jena", arch="gru", epochs=1, units=(16, 16), dropout=0.1,
              recurrent_dropout=0.5),
    ModelSpec(dataset="jena", arch="gru", epochs=1, units=(16, 8), bidirectional=True,
              dropout=0.2, recurrent_dropout=0.3),
    ModelSpec(dataset="imdb", arch="embed_rnn", epochs=1, cell="lstm", units=(8,),
              embedding_dim=6, bidirectional=True),
    ModelSpec(dataset="jena", arch="conv_gru", epochs=1, units=(16,), conv_filters=8,
              conv_kernel=3, pool_size=2, dropout=0.1, recurrent_dropout=0.5),
], ids=["stacked_dropout", "bidirectional", "imdb_bilstm", "conv_gru"])
def test_a_lecture_model_trains_the_same(loop, variant):
    """One training step's loss and gradients of whole models (stacked with dropout,
    bidirectional, conv front), the same masks on both paths. (On a GPU the masks would
    come from CUDA's generator, so there the models run without dropout.)"""
    torch.manual_seed(1)
    model = build_model(variant, n_features=4 if variant.dataset == "jena" else 30,
                        timesteps=16)
    if DEVICE.type == "cuda":
        for layer in model.modules():
            if isinstance(layer, RecurrentLayer):
                layer.dropout = layer.recurrent_dropout = 0.0
    x = torch.randn(20, 16, 4) if variant.dataset == "jena" else torch.randint(0, 30, (20, 16))
    y = torch.randn(20) if variant.dataset == "jena" else (x[:, 0] > 15).float()
    grads = {}
    for name, device in (("persistent", DEVICE), ("auto", torch.device("cpu"))):
        loop(name)
        copy_ = copy.deepcopy(model).to(device).train()
        before = sum(persistent.calls.values())
        torch.manual_seed(7)
        loss = torch.nn.functional.l1_loss(copy_(x.to(device)).squeeze(-1), y.to(device))
        loss.backward()
        ran = sum(persistent.calls.values()) - before
        assert (ran > 0) == (name == "persistent")
        grads[name] = [loss.detach()] + [p.grad for p in copy_.parameters()]
    for got, want in zip(grads["persistent"], grads["auto"]):
        _close(got, want, "model")


def test_an_unknown_loop_is_an_error(loop):
    loop("fastest")
    layer = RecurrentLayer("gru", 3, 4)
    with pytest.raises(RnnlabError, match="RNNLAB_CUDA_LOOP='fastest': choose one of auto"):
        layer(torch.randn(2, 5, 3))


@pytest.mark.parametrize("capability,hidden", [(90, 32), (90, 64), (80, 32), (80, 64)],
                         ids=["hopper-32", "hopper-64", "ampere-32", "ampere-64"])
def test_the_kernels_compile_for_the_gpu_with_everything_on_chip(capability, hidden):
    """Without a GPU: Triton compiles every kernel for the card as it would at the first
    call there, and ptxas reports no spill to local memory at the lecture's 32 units and at
    64, the most these kernels take (gru_stacked's second layer): the weights and the
    state tile stay in registers and shared memory for all 240 steps."""
    assert hidden <= persistent.MAX_HIDDEN
    report = persistent.compile_report(capability, hidden=hidden, steps=240)
    assert len(report) == 12                 # 3 cells x forward/backward x mask or not
    for row in report:
        assert row["registers"] is not None and row["registers"] <= 255, row
        assert row["spills"] == 0, row
        assert 0 < row["shared"] <= 99 * 1024, row


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_a_layer_too_large_for_the_kernels_is_named(loop, cell):
    """Past MAX_HIDDEN units the weights no longer fit on chip (the LSTM's shared memory
    overflows an H100 block at 128): RNNLAB_CUDA_LOOP=persistent refuses such a layer in
    one line, before any kernel is built."""
    from rnnlab.nn.models import Recurrent
    loop("persistent")
    units = persistent.MAX_HIDDEN + 1
    layer = Recurrent(cell, 5, units, dropout=0.0, recurrent_dropout=0.3, activation="tanh",
                      bidirectional=False, return_sequences=False).to(DEVICE)
    before = dict(persistent.calls)
    fix = ("unset RNNLAB_CUDA_LOOP or use at most 64 units" if cell == "gru" else
           "use at most 64 units, recurrent_dropout 0, a gru")   # unset: no CUDA path masks
    with pytest.raises(RnnlabError, match=f"a {cell} layer of {units} units: the persistent "
                       f"recurrences keep a layer's weights on chip up to 64 units; {fix}"):
        layer(torch.randn(4, 6, 5, device=DEVICE))
    assert persistent.calls == before
    small = Recurrent(cell, 5, persistent.MAX_HIDDEN, dropout=0.0, recurrent_dropout=0.3,
                      activation="tanh", bidirectional=False,
                      return_sequences=False).to(DEVICE)
    small(torch.randn(4, 6, 5, device=DEVICE))
    assert persistent.calls[cell] == before[cell] + 1


# What RecurrentLayer.path picks for a CUDA tensor (stood in for: no GPU here; path reads
# only is_cuda, dtype and device): (loop, cell, activation, state mask, units) -> path or
# the start of the error.
ROUTES = [
    ("auto", "gru", "tanh", True, 64, "persistent"),
    ("auto", "gru", "tanh", True, 65, "graph"),
    ("auto", "gru", "relu", False, 65, "graph"),
    ("auto", "lstm", "tanh", False, 65, "torch"),
    ("auto", "rnn", "relu", False, 65, "torch"),
    ("auto", "lstm", "tanh", True, 65, "error: a lstm layer with recurrent_dropout on CUDA: "
     "65 units: the persistent recurrences keep a layer's weights on chip up to 64 units"),
    ("auto", "rnn", "tanh", True, 128, "error: a rnn layer with recurrent_dropout on CUDA: "
     "128 units"),
    ("cudnn", "lstm", "tanh", True, 65, "error: a lstm layer with recurrent_dropout on CUDA: "
     "65 units: the persistent recurrences keep a layer's weights on chip up to 64 units, "
     "and cuDNN has no recurrent dropout; use at most 64 units with RNNLAB_CUDA_LOOP unset, "
     "recurrent_dropout 0"),
    ("cudnn", "lstm", "tanh", True, 64, "error: a lstm layer with recurrent_dropout on CUDA "
     "needs the persistent Triton recurrences"),
    ("cudnn", "gru", "tanh", True, 65, "graph"),
    ("persistent", "lstm", "tanh", False, 64, "persistent"),
    ("persistent", "lstm", "tanh", False, 65, "error: RNNLAB_CUDA_LOOP=persistent: a lstm "
     "layer of 65 units: the persistent recurrences keep a layer's weights on chip up to 64 "
     "units; unset RNNLAB_CUDA_LOOP or use at most 64 units"),
    ("persistent", "rnn", "tanh", True, 65, "error: RNNLAB_CUDA_LOOP=persistent: a rnn layer "
     "of 65 units: the persistent recurrences keep a layer's weights on chip up to 64 units; "
     "use at most 64 units, recurrent_dropout 0, a gru (a slower CUDA-graphed loop) or "
     "device: cpu"),
    ("persistent", "gru", "tanh", False, 65, "error: RNNLAB_CUDA_LOOP=persistent: a gru layer "
     "of 65 units"),
]


@pytest.mark.fast
@pytest.mark.parametrize("choice,cell,activation,state_mask,units,want", ROUTES)
def test_the_path_of_a_cuda_layer_by_its_size(loop, monkeypatch, choice, cell, activation,
                                               state_mask, units, want):
    """Up to MAX_HIDDEN units the persistent kernels; past it a GRU takes the graphed loop
    (with one warning), a layer without a state mask cuDNN, an LSTM or SimpleRNN with
    recurrent dropout is one error naming the limit, whatever RNNLAB_CUDA_LOOP says."""
    import types
    import warnings

    from rnnlab.nn import recurrent
    loop(choice)
    monkeypatch.setattr(persistent, "available", lambda: True)
    monkeypatch.setattr(recurrent, "_warned", set())
    x = types.SimpleNamespace(is_cuda=True, dtype=torch.float32, device=torch.device("cuda"))
    layer = RecurrentLayer(cell, 5, units, recurrent_dropout=0.3, activation=activation)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if want.startswith("error: "):
            with pytest.raises(RnnlabError) as error:
                layer.path(x, state_mask)
            assert str(error.value).startswith(want.removeprefix("error: ")), str(error.value)
        else:
            assert layer.path(x, state_mask) == want
    slower = [str(w.message) for w in caught if "slower CUDA-graphed loop" in str(w.message)]
    assert slower == ([f"a gru layer of {units} units: the persistent recurrences keep a "
                       "layer's weights on chip up to 64 units; it takes the slower "
                       "CUDA-graphed loop"] if want == "graph" and choice == "auto" else [])


@pytest.mark.fast
@pytest.mark.parametrize("seq", [False, True], ids=["last", "seq"])
def test_both_directions_run_in_one_launch(loop, seq):
    """A bidirectional layer's directions as one launch (a grid axis), equal to two
    separate single-direction runs with the same masks."""
    from rnnlab.nn.models import Recurrent
    loop("persistent")
    torch.manual_seed(2)
    layer = Recurrent("gru", 5, 12, dropout=0.2, recurrent_dropout=0.3, activation="tanh",
                      bidirectional=True, return_sequences=seq).to(DEVICE)
    x = torch.randn(18, 7, 5, device=DEVICE)
    before = persistent.calls["gru"]
    torch.manual_seed(3)
    joint = layer(x)
    assert persistent.calls["gru"] == before + 1
    torch.manual_seed(3)                 # the same masks, drawn in the same order
    separate = layer._join(layer.forward_rnn(x), layer.backward_rnn(x.flip(1)))
    assert persistent.calls["gru"] == before + 3
    _close(joint.detach(), separate.detach(), "bidirectional")
