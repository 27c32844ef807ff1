"""The CUDA path: cuDNN for layers without a state mask, the persistent Triton kernels for
recurrent dropout (and, with RNNLAB_CUDA_LOOP=cudnn, the CUDA-graphed GRU loops). These
need a CUDA device; the CPU-only CI has none, so they run on a lent GPU machine
(``pytest --noconftest tests/test_cuda.py tests/test_persistent.py``, which
``bench/bench_gpu.py`` also runs first); the last result is in docs/benchmarks.md. The
persistent kernels' arithmetic is checked without a GPU too, in Triton's interpreter
(tests/test_persistent.py)."""

import numpy as np
import pytest
import torch

from rnnlab.data.windows import make_window_spec
from rnnlab.nn import recurrent
from rnnlab.nn.models import ModelSpec, build_model
from rnnlab.nn.recurrent import RecurrentLayer, _CudaGraphed, _GRURecurrence
from rnnlab.training.engine import TrainConfig, fit, fit_together, seed_everything
from rnnlab.training.tasks import JenaTask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 in matmuls or cuDNN, so float32 is compared as float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def graphs(request):
    """``_CudaGraphed.enabled`` set for one test, restored after it."""
    saved = _CudaGraphed.enabled
    yield lambda on: setattr(_CudaGraphed, "enabled", on)
    _CudaGraphed.enabled = saved


def _recurrence(gi, w, b, mask, relu, return_sequences):
    gi, w, b = (t.detach().clone().requires_grad_() for t in (gi, w, b))
    out = _GRURecurrence.apply(gi, w, b, mask, relu, return_sequences)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device,
                          dtype=out.dtype).view_as(out)).sum().backward()
    return [out.detach(), gi.grad, w.grad, b.grad]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_graphed_gru_loop_equals_the_cpu_loop(graphs, relu, masked, return_sequences,
                                              dtype, tol):
    graphs(True)
    torch.manual_seed(0)
    steps, batch, hidden = 50, 16, 32
    gi = torch.randn(steps, batch, 3 * hidden, dtype=dtype)
    w = torch.randn(3 * hidden, hidden, dtype=dtype) / hidden ** 0.5
    b = torch.randn(3 * hidden, dtype=dtype)
    mask = (torch.rand(batch, hidden, dtype=dtype) > 0.3) / 0.7 if masked else None
    cpu = _recurrence(gi, w, b, mask, relu, return_sequences)
    move = lambda t: None if t is None else t.to(CUDA)  # noqa: E731
    for graphed in (recurrent._gru_forward_graphed, recurrent._gru_backward_graphed):
        graphed.graphs.clear()
    for _ in range(3):            # the first call captures, the next ones replay
        got = _recurrence(move(gi), move(w), move(b), move(mask), relu, return_sequences)
        # really graphed: a failed capture would fall back silently, with the same figures
        assert not recurrent._gru_forward_graphed.failed
        assert not recurrent._gru_backward_graphed.failed
        assert len(recurrent._gru_forward_graphed.graphs) == 1
        assert len(recurrent._gru_backward_graphed.graphs) == 1
        for mine, ref in zip(got, cpu):
            # within tol of each tensor's scale: dW_hh sums T x B products, in another order
            torch.testing.assert_close(mine.cpu(), ref, rtol=tol,
                                       atol=tol * max(1.0, ref.abs().max().item()))


def test_graphed_and_step_by_step_gradients_agree_and_pass_gradcheck(graphs):
    graphs(True)
    torch.manual_seed(1)
    gi = torch.randn(6, 3, 12, dtype=torch.float64, device=CUDA, requires_grad=True)
    w = torch.randn(12, 4, dtype=torch.float64, device=CUDA, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, device=CUDA, requires_grad=True)
    mask = ((torch.rand(3, 4, dtype=torch.float64, device=CUDA) > 0.3) / 0.7)
    fn = lambda g, w_, b_: _GRURecurrence.apply(g, w_, b_, mask, False, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (gi, w, b), eps=1e-6, atol=1e-6)
    graphed = _recurrence(gi, w, b, mask, False, True)
    graphs(False)
    eager = _recurrence(gi, w, b, mask, False, True)
    for a, e in zip(graphed, eager):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell,activation", [("gru", "tanh"), ("gru", "relu"),
                                             ("lstm", "tanh"), ("rnn", "tanh")])
def test_cudnn_layers_equal_the_cpu_layers(cell, activation):
    """Without a state mask, a layer on CUDA runs cuDNN (a relu GRU, which cuDNN lacks, our
    graphed loop): same outputs and gradients as on the CPU."""
    torch.manual_seed(2)
    cpu = RecurrentLayer(cell, 14, 32, activation=activation, return_sequences=True,
                         native=False)
    gpu = RecurrentLayer(cell, 14, 32, activation=activation, return_sequences=True).to(CUDA)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(8, 40, 14)
    outs = []
    for layer, device in ((cpu, "cpu"), (gpu, CUDA)):
        xd = x.detach().to(device).requires_grad_()
        out = layer(xd)
        out.pow(2).sum().backward()
        outs.append([out.detach().cpu(), xd.grad.cpu()] + [p.grad.cpu() for p in layer.parameters()])
    for a, b in zip(*outs):        # within 1e-5 of each tensor's scale, as above
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * max(1.0, a.abs().max().item()))


N = 3000
SPLITS = {"train": (0, 1800), "val": (1801, 2400), "test": (2401, None)}


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    features = rng.normal(0, 0.3, (N, 14)).astype(np.float32)
    features[:, 1] += np.sin(2 * np.pi * np.arange(N) / 144).astype(np.float32)
    spec = make_window_spec(n_rows=N, lookback=120, step=6, delay=12, target_index=1,
                            splits=SPLITS)
    return JenaTask(features, spec, batch_size=32, target_std=2.0)


def _fit(task, arch="gru", **kw):
    seed_everything(7)
    model = build_model(ModelSpec(dataset="jena", arch=arch, epochs=2, **kw), 14, 20)
    return fit(model, task, TrainConfig(epochs=2, steps_per_epoch=8, seed=11), CUDA,
               progress=False)


@pytest.mark.parametrize("arch,kw", [
    ("gru", {"dropout": 0.2, "recurrent_dropout": 0.2}),
    ("gru", {"units": (32, 64), "activations": ("tanh", "relu"), "dropout": 0.1,
             "recurrent_dropout": 0.5}),
    ("conv_gru", {"dropout": 0.1, "recurrent_dropout": 0.5}),
])
def test_training_with_recurrent_dropout_on_cuda(graphs, task, arch, kw, monkeypatch):
    """The CUDA-graphed loop (``RNNLAB_CUDA_LOOP=cudnn``): same seed, same metrics (to
    float32 rounding: cuDNN's convolutions may sum in another order), with graphs and
    without; one capture per signature."""
    monkeypatch.setenv("RNNLAB_CUDA_LOOP", "cudnn")
    graphs(True)
    for fn in (recurrent._gru_forward_graphed, recurrent._gru_backward_graphed):
        fn.graphs.clear()
    a, b = _fit(task, arch, **kw), _fit(task, arch, **kw)
    for fn in (recurrent._gru_forward_graphed, recurrent._gru_backward_graphed):
        assert not fn.failed                     # no capture failed and fell back
    graphs(False)
    c = _fit(task, arch, **kw)
    for run in (b, c):
        for mine, ref in zip(run.history, a.history):
            for key in ("train_loss", "val_loss"):
                assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    for key in a.val:
        assert b.val[key] == pytest.approx(a.val[key], rel=1e-5), key
    layers = 2 if "units" in kw else 1
    # One training signature per layer (the stacked one's layers differ in shapes), those
    # with a state mask: captured once, however many steps ran. (The relu layer also runs
    # the loop in evaluation, without a mask, once per evaluation batch size.)
    training = [key for key in recurrent._gru_forward_graphed.graphs
                if key[-2] is not None]          # (..., mask_h, relu): a state mask
    assert len(training) == layers
    assert len(recurrent._gru_backward_graphed.graphs) == layers
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"] * 1.5


@pytest.mark.parametrize("arch,kw", [
    ("gru", {"dropout": 0.2, "recurrent_dropout": 0.2}),
    ("gru", {"units": (32, 64), "activations": ("tanh", "relu"), "dropout": 0.1,
             "recurrent_dropout": 0.5}),
    ("conv_gru", {"dropout": 0.1, "recurrent_dropout": 0.5}),
])
def test_persistent_training_is_deterministic(task, arch, kw):
    """The default CUDA path for recurrent dropout (the persistent Triton kernels): the same
    seed gives the same metrics, bit for bit, and the kernels really ran."""
    from rnnlab.nn import persistent
    before = persistent.calls["gru"]
    a, b = _fit(task, arch, **kw), _fit(task, arch, **kw)
    assert persistent.calls["gru"] > before
    for mine, ref in zip(b.history, a.history):
        assert (mine["train_loss"], mine["val_loss"]) == (ref["train_loss"], ref["val_loss"])
    assert a.val == b.val
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"] * 1.5


@pytest.mark.parametrize("arch,kw", [("dense", {}), ("gru", {}), ("gru", {"reverse": True}),
                                     ("gru", {"bidirectional": True}), ("lstm", {})])
def test_every_other_jena_architecture_trains_on_cuda(task, arch, kw):
    result = _fit(task, arch, **kw)
    assert np.isfinite(result.val["mae"]) and np.isfinite(result.test["mae"])
    # fit put the matrix on the GPU once, and the windows were gathered there
    assert all(w.features.is_cuda for w in task.windows.values())


@pytest.mark.parametrize("arch,kw", [
    ("gru", {"units": (32, 64), "activations": ("tanh", "relu"), "dropout": 0.1,
             "recurrent_dropout": 0.5}),
    ("gru", {"bidirectional": True}), ("conv_gru", {"dropout": 0.1, "recurrent_dropout": 0.5}),
    ("lstm", {}), ("dense", {}),
])
def test_models_in_evaluation_equal_their_cpu_twins(arch, kw):
    """What validation and test see: gru_stacked's relu layer once ran tanh here (cuDNN's
    GRU has no relu), and only a GPU could show it."""
    seed_everything(3)
    model = build_model(ModelSpec(dataset="jena", arch=arch, epochs=1, **kw), 14, 20).eval()
    for layer in model.modules():
        if isinstance(layer, RecurrentLayer):
            layer.native = False          # the CPU reference: no C++ build on the GPU machine
    x = torch.randn(16, 20, 14)
    with torch.no_grad():
        ref = model(x)
        got = model.to(CUDA)(x.to(CUDA)).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("kw", [{"cell": "rnn"}, {"cell": "lstm"},
                                {"cell": "lstm", "bidirectional": True}])
def test_imdb_models_on_cuda_equal_their_cpu_twins(kw):
    """An IMDB model (``Embedded``) on CUDA reads the embedding then runs cuDNN (the token-id
    route is the C++ recurrences' only): outputs in evaluation and the gradients of one
    training loss equal the CPU twin's."""
    seed_everything(4)
    model = build_model(ModelSpec(dataset="imdb", arch="embed_rnn", epochs=1, **kw), 50, 30)
    for layer in model.modules():
        if isinstance(layer, RecurrentLayer):
            layer.native = False          # the CPU reference: no C++ build on the GPU machine
    ids = torch.randint(0, 50, (12, 30))
    y = (ids == 7).any(1).float()

    def run(m, device):
        m.train().zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(ids.to(device)),
                                                                    y.to(device))
        loss.backward()
        with torch.no_grad():
            out = m.eval()(ids.to(device))
        return [loss.detach(), out] + [p.grad for p in m.parameters()]

    ref = [t.clone() for t in run(model, torch.device("cpu"))]
    got = [t.cpu() for t in run(model.to(CUDA), CUDA)]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * max(1.0, r.abs().max().item()))


@pytest.mark.parametrize("arch,kw", [("gru", {}), ("gru", {"bidirectional": True}),
                                     ("lstm", {}), ("dense", {})])
def test_the_graphed_training_step_equals_the_step_as_it_is(task, arch, kw, monkeypatch):
    """RNNLAB_CUDA_GRAPH_STEP=1 without dropout: the same losses and metrics as without the
    graph (the same kernels replayed), and a graph was really captured."""
    from rnnlab.training import engine
    monkeypatch.setenv("RNNLAB_CUDA_GRAPH_STEP", "0")
    plain = _fit(task, arch, **kw)
    monkeypatch.setenv("RNNLAB_CUDA_GRAPH_STEP", "1")
    before = engine._GraphedStep.captured
    graphed = _fit(task, arch, **kw)
    assert engine._GraphedStep.captured == before + 1
    for mine, ref in zip(graphed.history, plain.history):
        for key in ("train_loss", "val_loss"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    for key in plain.val:
        assert graphed.val[key] == pytest.approx(plain.val[key], rel=1e-5), key


def test_the_graphed_training_step_with_dropout_is_deterministic(task, monkeypatch):
    """With dropout the graph draws its own masks: the same seed, the same run."""
    monkeypatch.setenv("RNNLAB_CUDA_GRAPH_STEP", "1")
    kw = {"dropout": 0.1, "recurrent_dropout": 0.5}
    a, b = _fit(task, "gru", **kw), _fit(task, "gru", **kw)
    for mine, ref in zip(b.history, a.history):
        assert (mine["train_loss"], mine["val_loss"]) == (ref["train_loss"], ref["val_loss"])
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"] * 1.5


@pytest.mark.parametrize("arch,kw", [
    ("gru", {"dropout": 0.2, "recurrent_dropout": 0.2}),      # the persistent kernels
    ("lstm", {}),                                             # cuDNN
])
def test_seeds_side_by_side_on_cuda_train_as_each_would_alone(task, arch, kw):
    """engine.fit_together on a GPU (each seed's work on its own stream, each seed with
    its own CUDA generator state): every seed's figures as when it trains alone (to float32
    rounding: cuBLAS may choose differently on another stream)."""
    seeds = [11, 12, 13]

    def model(seed):
        seed_everything(seed)
        return build_model(ModelSpec(dataset="jena", arch=arch, epochs=2, **kw), 14, 20)

    configs = [TrainConfig(epochs=2, steps_per_epoch=8, seed=s) for s in seeds]
    separately = [fit(model(s), task, c, CUDA, progress=False) for s, c in zip(seeds, configs)]
    side_by_side = fit_together([model(s) for s in seeds], task, configs, CUDA,
                                checkpoints=[None] * 3, fingerprints=[""] * 3,
                                on_epochs=[None] * 3, descs=[str(s) for s in seeds],
                                progress=False)
    assert len({r.val["mae"] for r in separately}) == 3, "three seeds, three trainings"
    for a, b in zip(separately, side_by_side):
        for mine, ref in zip(b.history, a.history):
            for key in ("train_loss", "val_loss"):
                assert mine[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
        for key in a.val:
            assert b.val[key] == pytest.approx(a.val[key], rel=1e-5), key


def test_an_epochs_row_numbers_cross_to_the_gpu_in_one_copy(task):
    """On a GPU a training epoch's (and an evaluation pass's) row numbers go to the device
    in one copy, not one copy from the host per batch."""
    from torch.profiler import ProfilerActivity, profile

    task.to_device(CUDA)
    for batches in (lambda: task.train_batches(1, 8, 3),
                    lambda: task.eval_batches("val", None)):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            n = sum(1 for _ in batches())
            torch.cuda.synchronize()
        copies = [e for e in prof.events() if "HtoD" in e.name]
        assert n > 1 and len(copies) == 1, [e.name for e in copies]


@pytest.mark.parametrize("arch,kw", [
    ("gru", {"units": (32, 64), "activations": ("tanh", "relu"), "dropout": 0.1,
             "recurrent_dropout": 0.5}),
    ("lstm", {}),
])
def test_evaluation_on_cuda_joins_batches_and_changes_no_figure(task, arch, kw,
                                                                 monkeypatch):
    """On a GPU one forward pass takes ``eval_join`` evaluation batches (2048 rows; 128
    here, so the small validation split makes several passes and a short last one): the
    persistent relu layer of gru_stacked and cuDNN's LSTM give the figures of one batch
    at a time."""
    from rnnlab.training import engine
    from rnnlab.training.engine import eval_join, evaluate
    monkeypatch.setattr(engine, "GPU_EVAL_ROWS", 128)
    seed_everything(3)
    model = build_model(ModelSpec(dataset="jena", arch=arch, epochs=1, **kw), 14, 20).to(CUDA)
    task.to_device(CUDA)
    sizes = []
    hook = model.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
    joined = evaluate(model, task, "val", CUDA, None)
    hook.remove()
    join, n = eval_join(CUDA, task.eval_batch_size), task.eval_size("val")
    assert join == 4 and n % 128
    assert sizes == [min(128, n - s) for s in range(0, n, 128)] and len(sizes) > 2
    alone = evaluate(model, task, "val", CUDA, None, join=1)
    for key in alone:
        assert joined[key] == pytest.approx(alone[key], rel=1e-5), key


def test_layers_too_large_for_the_persistent_kernels_take_another_path(monkeypatch):
    """Past persistent.MAX_HIDDEN units (weights no longer on chip): a GRU with recurrent
    dropout or relu takes the CUDA-graphed loop, an LSTM or SimpleRNN without a state mask
    cuDNN, and one with recurrent dropout is one line naming the limit and the fixes."""
    from rnnlab.core.errors import RnnlabError
    monkeypatch.delenv("RNNLAB_CUDA_LOOP", raising=False)
    from rnnlab.nn import persistent
    units = persistent.MAX_HIDDEN + 32
    x = torch.randn(8, 6, 5, device=CUDA)

    def layer(cell, recurrent_dropout=0.0, activation="tanh"):
        return RecurrentLayer(cell, 5, units, dropout=0.0, recurrent_dropout=recurrent_dropout,
                              activation=activation, return_sequences=False).to(CUDA).train()

    assert layer("gru", 0.3).path(x, True) == "graph"
    assert layer("gru", activation="relu").path(x, False) == "graph"
    assert layer("rnn", activation="relu").path(x, False) == "torch"
    assert layer("lstm").path(x, False) == "torch"
    for cell in ("lstm", "rnn"):
        with pytest.raises(RnnlabError, match=f"a {cell} layer with recurrent_dropout on CUDA: "
                           f"{units} units: the persistent recurrences keep a layer's weights "
                           "on chip up to 64 units, and cuDNN has no recurrent dropout"):
            layer(cell, 0.3)(x)
    before = dict(persistent.calls)
    layer("gru", 0.3)(x).sum().backward()
    assert persistent.calls == before
