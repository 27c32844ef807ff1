"""The fused C++ recurrences against nn.GRU / nn.LSTM / nn.RNN, DropoutGRU and gradcheck."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.nn import fused
from rnnlab.nn.recurrent import DropoutGRU, _GRURecurrence

from _reference import reference_gru

# Where the C++ recurrences cannot be built these tests skip, saying why; under
# RNNLAB_REQUIRE_CPP=1 (CI) importing fused's build fails the run instead.
pytestmark = pytest.mark.skipif(not fused.available(),
                                reason=f"fused extension unavailable: {fused.unavailable_reason()}")

B, T, I, H = 5, 7, 3, 6  # noqa: E741  (batch, time, input, hidden)
GATES = {"gru": 3, "lstm": 4, "rnn": 1}
# Every instruction set this CPU runs (AVX-512, AVX2, portable on this project's machine):
# the tests that take the ``isa`` fixture run once with each, the slower ones forced.
ISAS = fused.supported_isas() if fused.available() else ["unavailable"]


@pytest.fixture(params=ISAS)
def isa(request):
    before = fused.isa()
    fused.set_isa(request.param)
    try:
        yield request.param
    finally:
        fused.set_isa(before)


def _fused_layer(cell, rnn, x, mask_h=None, return_sequences=True):
    """Runs the fused recurrence with rnn's weights on batch-first x."""
    gi = F.linear(x.transpose(0, 1), rnn.weight_ih_l0, rnn.bias_ih_l0)      # (T, B, G*H)
    w, b = rnn.weight_hh_l0, rnn.bias_hh_l0
    if cell == "gru":
        return fused.gru_recurrence(gi, w, b, mask_h, False, return_sequences)
    if cell == "lstm":
        return fused.lstm_recurrence(gi, w, b, mask_h, return_sequences)
    relu = rnn.nonlinearity == "relu"
    return fused.rnn_recurrence(gi, w, b, mask_h, relu, return_sequences)


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("cell,nonlinearity", [("gru", None), ("lstm", None),
                                               ("rnn", "tanh"), ("rnn", "relu")])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_matches_torch_modules(cell, nonlinearity, return_sequences, isa):
    torch.manual_seed(0)
    kwargs = {"nonlinearity": nonlinearity} if nonlinearity else {}
    ref = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](I, H, batch_first=True, **kwargs)
    mine = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](I, H, batch_first=True, **kwargs)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, I)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, _ = ref(x1)
    target = out_ref if return_sequences else out_ref[:, -1]
    out = _fused_layer(cell, mine, x2, return_sequences=return_sequences)
    out = out.transpose(0, 1) if return_sequences else out
    assert out.shape == target.shape
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)
    g = torch.randn_like(target)
    (target * g).sum().backward()
    (out * g).sum().backward()
    for a, b in zip(_grads(mine, x2), _grads(ref, x1)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_gru_matches_dropout_gru_reference(activation, return_sequences, isa):
    torch.manual_seed(1)
    ref = DropoutGRU(I, H, dropout=0.3, recurrent_dropout=0.4, activation=activation,
                     return_sequences=return_sequences)
    ref.train()
    x = torch.randn(B, T, I)
    masks = ref.sample_masks(B)
    assert masks[0] is not None and masks[1] is not None
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref = reference_gru(ref, x1, masks)
    g = torch.randn_like(out_ref)          # O(1) gradients, so 1e-5 is a few float32 ulps
    ref_grads = torch.autograd.grad((out_ref * g).sum(), [x1, *ref.parameters()])
    # What DropoutGRU's fused path does, with the C++ recurrence in place of _GRURecurrence.
    gi = F.linear((x2 * masks[0][:, None, :]).transpose(0, 1), ref.weight_ih_l0,
                  ref.bias_ih_l0)
    out = fused.gru_recurrence(gi, ref.weight_hh_l0, ref.bias_hh_l0, masks[1],
                               activation == "relu", return_sequences)
    out = out.transpose(0, 1) if return_sequences else out
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-5)
    grads = torch.autograd.grad((out * g).sum(), [x2, *ref.parameters()])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_gru_is_a_drop_in_for_gru_recurrence_function(relu, return_sequences):
    torch.manual_seed(2)
    gi = torch.randn(T, B, 3 * H)
    w, b = torch.randn(3 * H, H) * 0.4, torch.randn(3 * H)
    mask = torch.bernoulli(torch.full((B, H), 0.7)) / 0.7
    outs, grads = [], []
    for fn in (_GRURecurrence.apply, fused.gru_recurrence):
        args = [t.clone().requires_grad_() for t in (gi, w, b)]
        out = fn(*args, mask, relu, return_sequences)
        outs.append(out)
        grads.append(torch.autograd.grad(out.sin().sum(), args))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def _inputs(cell, dtype, mask=True, seed=3):
    g = torch.Generator().manual_seed(seed)
    k = GATES[cell]
    gi = torch.randn(4, 3, k * 4, dtype=dtype, generator=g)
    w = torch.randn(k * 4, 4, dtype=dtype, generator=g) * 0.5
    b = torch.randn(k * 4, dtype=dtype, generator=g)
    m = (torch.bernoulli(torch.full((3, 4), 0.6, dtype=dtype), generator=g) / 0.6
         if mask else None)
    return gi, w, b, m


def _call(cell, gi, w, b, m, relu, return_sequences):
    if cell == "gru":
        return fused.gru_recurrence(gi, w, b, m, relu, return_sequences)
    if cell == "lstm":
        return fused.lstm_recurrence(gi, w, b, m, return_sequences)
    return fused.rnn_recurrence(gi, w, b, m, relu, return_sequences)


@pytest.mark.parametrize("cell,relu", [("gru", False), ("gru", True), ("lstm", False),
                                       ("rnn", False), ("rnn", True)])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("mask", [True, False])
def test_gradcheck_float64(cell, relu, return_sequences, mask, isa):
    gi, w, b, m = _inputs(cell, torch.float64, mask)
    if relu:   # keep pre-activations away from relu's kink, where finite differences fail
        gi = gi + torch.where(gi > 0, 0.3, -0.3).to(gi)
    args = tuple(t.requires_grad_() for t in (gi, w, b))
    assert torch.autograd.gradcheck(
        lambda gi_, w_, b_: _call(cell, gi_, w_, b_, m, relu, return_sequences), args)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_deterministic_and_thread_count_independent(cell, isa):
    gi, w, b, m = _inputs(cell, torch.float32, seed=4)
    gi = torch.randn(30, 67, GATES[cell] * 4)          # odd batch: uneven blocks
    m = torch.bernoulli(torch.full((67, 4), 0.7)) / 0.7
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (2, 2, 1, 3):
            torch.set_num_threads(threads)
            args = [t.clone().requires_grad_() for t in (gi, w, b)]
            out = _call(cell, *args, m, False, True)
            results.append([out.detach(), *torch.autograd.grad(out.cos().sum(), args)])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)


@pytest.mark.parametrize("shape", [(6, 8, 320), (96, 14, 1000), (5, 3, 37), (128, 32, 4099)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_product_is_exact_to_rounding_and_the_same_bits_on_any_thread_count(shape, dtype,
                                                                              isa):
    """``fused.product`` (the input projections) against a float64 product, and the same
    bits on 1, 2 and 3 threads: MKL's sgemm gave a (6 x 8) @ (8 x 320) product 1e-6 apart
    on one thread and two on an AVX2 machine. Part-filled last vectors (37, 4099 columns)
    and fewer columns than one task's group (37) included."""
    m, k, n = shape
    g = torch.Generator().manual_seed(sum(shape))
    w, x = torch.randn(m, k, generator=g, dtype=dtype), torch.randn(k, n, generator=g,
                                                                     dtype=dtype)
    b = torch.randn(m, generator=g, dtype=dtype)
    exact = torch.addmm(b[:, None].double(), w.double(), x.double())
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(fused.product(w, x, b))
    finally:
        torch.set_num_threads(before)
    assert fused.last_isa() == isa
    atol = (1e-5 if dtype == torch.float32 else 1e-12) * float(exact.abs().max())
    torch.testing.assert_close(runs[0].double(), exact, rtol=0, atol=atol)
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    torch.testing.assert_close(fused.product(w, x) + b[:, None], runs[0], rtol=0, atol=atol)


@pytest.mark.parametrize("rows,k,m", [(10_000, 32, 128), (2049, 14, 96), (37, 5, 9), (1, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_projection_and_its_weight_gradient_the_same_bits_on_any_thread_count(
        rows, k, m, dtype, isa):
    """``rows_project`` (x row-major in and out, tiles of rows transposed in registers) gives
    ``product``'s bits; ``rows_project_grad`` (the projection's weight and bias gradients,
    rows summed in fixed parts of 1,024) is exact to rounding against float64 and the same
    bits on 1, 2 and 3 threads. Row counts that fill no whole vector or part included."""
    g = torch.Generator().manual_seed(rows + k)
    x, w = torch.randn(rows, k, generator=g, dtype=dtype), torch.randn(m, k, generator=g,
                                                                        dtype=dtype)
    b, grad = torch.randn(m, generator=g, dtype=dtype), torch.randn(rows, m, generator=g,
                                                                     dtype=dtype)
    assert torch.equal(fused.rows_project(x, w, b), fused.product(w, x.t(), b).t())
    assert torch.equal(fused.rows_project(grad, w.t()), fused.product(w.t(), grad.t()).t())
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(fused.rows_project_grad(grad, x))
    finally:
        torch.set_num_threads(before)
    assert fused.last_isa() == isa
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, exact in zip(runs[0], (grad.double().t() @ x.double(), grad.double().sum(0))):
        torch.testing.assert_close(got.double(), exact, rtol=0,
                                   atol=tol * float(exact.abs().max()))
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))


@pytest.mark.parametrize("cell,relu", [("gru", False), ("gru", True), ("lstm", False),
                                       ("rnn", False), ("rnn", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_kernels_equal_the_training_forward(cell, relu, dtype, isa):
    """Without gradients the kernels keep no per-step states; the outputs stay bit-identical,
    for h_T and for the whole sequence, with and without a mask, for any thread count."""
    gi = torch.randn(37, 67, GATES[cell] * 16, dtype=dtype)     # odd batch: uneven blocks
    w = torch.randn(GATES[cell] * 16, 16, dtype=dtype) * 0.3
    b = torch.randn(GATES[cell] * 16, dtype=dtype)
    m = torch.bernoulli(torch.full((67, 16), 0.7, dtype=dtype)) / 0.7
    before = torch.get_num_threads()
    try:
        for mask in (None, m):
            for return_sequences in (True, False):
                args = [t.clone().requires_grad_() for t in (gi, w, b)]
                trained = _call(cell, *args, mask, relu, return_sequences)
                assert trained.requires_grad
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    with torch.no_grad():
                        inferred = _call(cell, gi, w, b, mask, relu, return_sequences)
                    assert inferred.shape == trained.shape
                    assert torch.equal(inferred, trained.detach())
    finally:
        torch.set_num_threads(before)


def test_one_thread_uses_one_thread():
    """With torch.set_num_threads(1), CPU time ~= wall time (no second busy thread)."""
    import resource
    import time

    gi = torch.randn(200, 64, 96)
    w, b = torch.randn(96, 32) * 0.2, torch.randn(96)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fused.gru_recurrence(gi, w, b, None, False, True)        # warm-up
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(5):
            fused.gru_recurrence(gi, w, b, None, False, True)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    finally:
        torch.set_num_threads(before)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    assert cpu < 1.3 * (t1 - t0) + 0.01, (cpu, t1 - t0)


def test_rejects_bad_shapes():
    gi, w, b, _ = _inputs("gru", torch.float32)
    with pytest.raises(RuntimeError, match="w_hh"):
        fused.gru_recurrence(gi, w[:-1], b, None, False, True)
    with pytest.raises(RuntimeError, match="mask_h"):
        fused.gru_recurrence(gi, w, b, torch.ones(2, 4), False, True)


def test_build_failure_falls_back_with_one_warning(tmp_path):
    """A compiler that fails: available() is False, one warning gives the cause and the
    fix; with RNNLAB_REQUIRE_CPP=1 (CI) the same failure is an error instead."""
    import os
    import subprocess
    import sys

    code = ("from rnnlab.nn import fused\n"
            "print(fused.available(), fused.available())\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), CXX="/bin/false")
    env.pop("RNNLAB_REQUIRE_CPP", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    warnings = [line for line in done.stderr.splitlines() if "Warning" in line]
    assert len(warnings) == 1, done.stderr
    assert "did not build" in warnings[0] and "CalledProcessError" in warnings[0]
    assert "install a C++ compiler" in warnings[0]

    required = subprocess.run([sys.executable, "-c", code], env=env | {"RNNLAB_REQUIRE_CPP": "1"},
                              capture_output=True, text=True, timeout=300)
    assert required.returncode != 0
    assert "RNNLAB_REQUIRE_CPP=1 requires them" in required.stderr


@pytest.mark.hostile
def test_rnnlab_no_fused_0_keeps_the_kernels_and_1_says_it_turned_them_off(tmp_path):
    """RNNLAB_NO_FUSED=0 read as "off" and blamed a missing compiler: 0 and empty keep the
    kernels; any other value turns them off with a note that says so, not a build error."""
    import os
    import subprocess
    import sys

    code = "from rnnlab.nn import fused\nprint(fused.available())\n"
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, RNNLAB_NO_FUSED="0"))
    assert kept.returncode == 0 and kept.stdout.split() == ["True"], kept.stderr
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, RNNLAB_NO_FUSED="1"))
    assert off.returncode == 0 and off.stdout.split() == ["False"], off.stderr
    warnings = [line for line in off.stderr.splitlines() if "Warning" in line]
    assert len(warnings) == 1 and "RNNLAB_NO_FUSED=1 turns the C++ recurrences off" in \
        warnings[0] and "compiler" not in warnings[0], off.stderr


def test_training_on_the_cpu_runs_the_cpp_recurrences():
    """Every recurrent cell's training step and evaluation on the CPU goes through the C++
    recurrences: a silent fall back to another path fails here."""
    from rnnlab.nn.recurrent import RecurrentLayer

    for cell in ("gru", "lstm", "rnn"):
        layer = RecurrentLayer(cell, I, H, dropout=0.2, recurrent_dropout=0.3)
        x = torch.randn(B, T, I)
        before = fused.calls[cell]
        assert layer.path(x, True) == layer.path(x, False) == "cpp"
        layer(x).sum().backward()
        layer.eval()
        with torch.no_grad():
            layer(x)
        assert fused.calls[cell] == before + 2, cell


@pytest.mark.parametrize("flush", [True, False])
def test_every_worker_thread_keeps_the_callers_denormal_mode(flush):
    """torch.set_flush_denormal(True) (the engine's setting) must hold in the kernels'
    worker threads too: denormals there made a GRU epoch 3x slower."""
    T, B, H = 3, 64, 32                      # 64 rows: several blocks, both threads busy
    gi = torch.full((T, B, H), 1e-39)        # a float32 denormal; relu(gi) passes it on
    w_hh, b_hh = torch.zeros(H, H), torch.zeros(H)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    was = torch.set_flush_denormal(flush)
    try:
        h = fused.rnn_recurrence(gi, w_hh, b_hh, None, True, False)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    assert was
    if flush:
        assert (h == 0).all()
    else:
        assert (h > 0).all() and (h < 1.18e-38).all()


def test_a_copy_of_the_package_elsewhere_reuses_the_build(tmp_path):
    """Two clones (or a clone and a test copy) share one compiled build: the second one
    loads it without recompiling (before, ninja saw a new source path and took 70 s)."""
    import os
    import shutil
    import subprocess
    import sys

    assert fused.available()
    built = next((fused._cache_root() / fused.build_key()).glob("*.so"))
    stamp = built.stat().st_mtime_ns
    copy = tmp_path / "elsewhere" / "src"
    shutil.copytree(Path(fused.__file__).parents[1], copy / "rnnlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = "from rnnlab.nn import fused; print(fused.__file__, fused.available())"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(copy)),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    where, ok = done.stdout.split()
    assert where.startswith(str(copy)) and ok == "True"
    assert built.stat().st_mtime_ns == stamp, "the copy recompiled the extension"


def _scale_close(mine, theirs, what):
    """Equal within 1e-5 of the reference tensor's scale (its largest magnitude)."""
    scale = float(theirs.abs().max())
    err = float((mine - theirs).abs().max())
    assert err <= 1e-5 * max(scale, 1e-12), f"{what}: {err:.3g} off at scale {scale:.3g}"


@pytest.mark.parametrize("cell,relu", [("gru", False), ("gru", True), ("lstm", False),
                                       ("rnn", False), ("rnn", True)])
@pytest.mark.parametrize("hidden", [32, 6])
def test_every_instruction_set_gives_the_same_results(cell, relu, hidden):
    """Outputs and every gradient of each instruction set's kernels against the best one's,
    within 1e-5 of each tensor's scale: a compile-time H (32) and a runtime one (6), a
    batch that fills no lane block (37), masks, both output forms; and the kernel that ran
    was the one asked for."""
    g = torch.Generator().manual_seed(11)
    k = GATES[cell]
    gi = torch.randn(23, 37, k * hidden, generator=g)
    w = torch.randn(k * hidden, hidden, generator=g) / hidden ** 0.5
    b = torch.randn(k * hidden, generator=g) * 0.1
    m = torch.bernoulli(torch.full((37, hidden), 0.7), generator=g) / 0.7
    before = fused.isa()
    try:
        for mask in (None, m):
            for return_sequences in (True, False):
                results = {}
                for name in fused.supported_isas():
                    fused.set_isa(name)
                    args = [t.clone().requires_grad_() for t in (gi, w, b)]
                    out = _call(cell, *args, mask, relu, return_sequences)
                    assert fused.last_isa() == name
                    grads = torch.autograd.grad(out.sin().sum(), args)
                    assert fused.last_isa() == name
                    results[name] = [out.detach(), *grads]
                best = results[fused.supported_isas()[0]]
                for name, tensors in results.items():
                    for what, a, ref in zip(("out", "d gi", "d w_hh", "d b_hh"), tensors, best):
                        _scale_close(a, ref, f"{name} {cell} mask={mask is not None} "
                                             f"seq={return_sequences} {what}")
    finally:
        fused.set_isa(before)


def test_an_instruction_set_this_cpu_lacks_is_one_clear_error():
    with pytest.raises(Exception) as info:
        fused.set_isa("avx1024")
    message = str(info.value)
    assert "RNNLAB_CPU_ISA='avx1024'" in message
    for name in fused.supported_isas():
        assert name in message
    assert "\n" not in message


def test_the_environment_chooses_the_instruction_set():
    import os
    import subprocess
    import sys
    code = ("import torch; from rnnlab.nn import fused; "
            "fused.gru_recurrence(torch.randn(3, 2, 6), torch.randn(6, 2), torch.randn(6), "
            "None, False, True); print(fused.isa(), fused.last_isa())")
    for name in fused.supported_isas():
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, RNNLAB_CPU_ISA=name), check=True)
        assert done.stdout.split() == [name, name]


@pytest.mark.parametrize("cell,relu", [("gru", False), ("gru", True), ("lstm", False),
                                       ("rnn", False), ("rnn", True)])
def test_every_instruction_set_runs_whole_layers_like_the_reference(cell, relu, isa):
    """Two stacked RecurrentLayers on the C++ path (the input projection and all of its
    gradients in C++ as well), with input dropout (and recurrent dropout for the GRU, the
    one cell the Python route has it for), a batch of 37 that the kernels pad to 48: the
    outputs and the gradients of the input and of every weight equal the Python route's
    (native=False) within 1e-5 of each tensor's scale."""
    from rnnlab.nn.recurrent import RecurrentLayer
    torch.manual_seed(21)
    activation = "relu" if relu else "tanh"
    p_rec = 0.3 if cell == "gru" else 0.0

    def stack(native):
        first = RecurrentLayer(cell, 5, 32, dropout=0.2, recurrent_dropout=p_rec,
                               activation=activation, return_sequences=True, native=native)
        second = RecurrentLayer(cell, 32, 6, dropout=0.2, recurrent_dropout=p_rec,
                                activation=activation, native=native)
        return first, second

    ours, theirs = stack(True), stack(False)
    for a, b in zip(ours, theirs):
        b.load_state_dict(a.state_dict())
    x = torch.randn(37, 11, 5)
    masks = [layer.sample_masks(37) for layer in ours]
    results = []
    for first, second in (ours, theirs):
        xi = x.clone().requires_grad_()
        out = second(first(xi, masks[0]), masks[1])
        params = [*first.parameters(), *second.parameters()]
        grads = torch.autograd.grad(out.tanh().sum(), [xi, *params])
        results.append([out.detach(), *grads])
    assert fused.last_isa() == isa
    for i, (a, b) in enumerate(zip(*results)):
        _scale_close(a, b, f"{isa} {cell} tensor {i}")


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_every_instruction_set_reads_token_ids_like_the_embedding(cell, isa):
    """The table route (a projected embedding table's columns gathered in token order, its
    gradient added per token in C++) against embedding-then-layer, each instruction set."""
    from rnnlab.nn.recurrent import RecurrentLayer
    torch.manual_seed(8)
    layer = RecurrentLayer(cell, 7, 16, recurrent_dropout=0.25).train()
    table = torch.nn.Parameter(torch.randn(40, 7) * 0.5)
    ids = torch.randint(0, 40, (19, 9))
    ids[:, :3] = 0                                         # front padding, repeated ids
    results = []
    for route in ("table", "embedding"):
        torch.manual_seed(3)       # forward_ids draws the state mask: the same one both times
        if route == "table":
            out = layer.forward_ids(ids, table)
        else:
            out = layer(torch.nn.functional.embedding(ids, table), layer.sample_masks(19))
        if route == "table":
            assert fused.last_isa() == isa
        params = [table, *layer.parameters()]
        results.append([out.detach(), *torch.autograd.grad(out.sin().sum(), params)])
    for i, (a, b) in enumerate(zip(*results)):
        _scale_close(a, b, f"{isa} {cell} tensor {i}")


@pytest.mark.parametrize("cell,relu", [("gru", False), ("lstm", False), ("rnn", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_projected_table_is_read_in_token_order_and_takes_its_gradient_by_token(
        cell, relu, dtype, isa):
    """On the table route the forward kernels gather each step's rows of the projected table
    themselves (tiles of rows transposed in registers): a plain copy, so the same bits as the
    same kernels over the rows gathered beforehand (index_select on the transposed table),
    states and saved gates in training, states in inference. ``table_grad`` adds each
    token's gate gradients into its row. Widths that fill no whole vector (H = 6), repeated
    ids and a recurrent mask included."""
    ext, code = fused._require(), fused._isa_code()
    lanes = {"avx512": 16, "avx2": 8, "portable": 4}[isa]
    forward = getattr(ext, f"{cell}_forward")
    torch.manual_seed(5)
    for H, V, steps, Bp in [(32, 300, 37, 32), (6, 7, 3, 16)]:
        G = GATES[cell] * H
        table = torch.randn(V, G, dtype=dtype)
        order = torch.randint(0, V, (steps * Bp,))
        gi = table.t().contiguous().index_select(1, order).view(G, steps, Bp)
        mask = (torch.rand(H, Bp) > 0.3).to(dtype) / 0.7
        args = (torch.randn(G, H, dtype=dtype) * 0.3, torch.randn(G, dtype=dtype), mask) \
            + (() if cell == "lstm" else (relu,))
        for train, seq in [(True, True), (False, True), (False, False)]:
            gathered = forward(gi, *args, train, seq, code, None, 0, None, None)
            routed = forward(table, *args, train, seq, code, order, steps, None, None)
            assert len(routed) == len(gathered)
            assert all(torch.equal(a, b) for a, b in zip(routed, gathered)), (H, train, seq)
        dgi = torch.randn(Bp // lanes, steps, G, lanes, dtype=dtype)
        per_token = dgi.permute(2, 1, 0, 3).reshape(G, steps * Bp).t().double()
        exact = torch.zeros(V, G, dtype=torch.float64).index_add_(0, order, per_token)
        got = ext.table_grad(dgi, order, V, code).double()
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert (got - exact).abs().max() <= tol * exact.abs().max(), (G, V)
    with pytest.raises(RuntimeError, match="outside the table's 9 rows"):
        forward(torch.zeros(9, G, dtype=dtype), *args, False, False, code,
                torch.full((steps * Bp,), 9), steps, None, None)


@pytest.mark.parametrize("cell,relu", [("gru", False), ("gru", True), ("lstm", False),
                                       ("rnn", True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_layer_projects_each_step_in_the_loop_with_the_bits_of_one_product(cell, relu,
                                                                             dtype, isa):
    """Given the layer's input x and W_ih, the forward kernels compute each step's input
    projections as the step begins (no (G*H, T, Bp) tensor between two passes): the same
    bits as the loop over gi made by ``product`` beforehand, states and saved gates in
    training, states in inference, with and without b_ih; H = 6 and I = 3 fill no whole
    vector tile. A w_ih of the wrong shape is one clear error."""
    ext, code = fused._require(), fused._isa_code()
    forward = getattr(ext, f"{cell}_forward")
    torch.manual_seed(7)
    for H, I, steps, Bp in [(32, 14, 11, 32), (6, 3, 4, 16)]:  # noqa: E741
        G = GATES[cell] * H
        x = torch.randn(I, steps, Bp, dtype=dtype)
        w_ih, b_ih = torch.randn(G, I, dtype=dtype), torch.randn(G, dtype=dtype)
        mask = (torch.rand(H, Bp) > 0.3).to(dtype) / 0.7
        args = (torch.randn(G, H, dtype=dtype) * 0.3, torch.randn(G, dtype=dtype), mask) \
            + (() if cell == "lstm" else (relu,))
        for bias in (b_ih, None):
            gi = fused.product(w_ih, x.reshape(I, -1), bias).view(G, steps, Bp)
            for train, seq in [(True, True), (False, True), (False, False)]:
                before = forward(gi, *args, train, seq, code, None, 0, None, None)
                inside = forward(x, *args, train, seq, code, None, 0, w_ih, bias)
                assert fused.last_isa() == isa
                assert len(inside) == len(before)
                assert all(torch.equal(a, b) for a, b in zip(inside, before)), (H, train, seq)
    with pytest.raises(RuntimeError, match=r"w_ih must be \(\d\*H, I\)"):
        forward(x, *args, False, False, code, None, 0, w_ih[:, :2], None)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_layers_backward_takes_the_input_side_in_the_same_loop(cell, dtype, isa):
    """Given the layer's input x and W_ih, the backward kernels also give dx (step by step)
    and dW_ih, db_ih (per 16 steps, per lane) from the same loop, with no dgi tensor: dx,
    dW_hh and db_hh the same bits as the loop that returns dgi, dW_ih and db_ih exact to
    rounding against float64 sums of that dgi; no dx when it is not wanted."""
    ext, code = fused._require(), fused._isa_code()
    torch.manual_seed(11)
    for H, I, steps, seq in [(32, 14, 37, False), (6, 3, 5, True)]:  # noqa: E741
        G, Bp = GATES[cell] * H, 32
        x = torch.randn(I, steps, Bp, dtype=dtype)
        w_ih, b_ih = torch.randn(G, I, dtype=dtype), torch.randn(G, dtype=dtype)
        w_hh, b_hh = torch.randn(G, H, dtype=dtype) * 0.3, torch.randn(G, dtype=dtype)
        mask = (torch.rand(H, Bp) > 0.3).to(dtype) / 0.7
        relu = () if cell == "lstm" else (False,)
        out, *store = getattr(ext, f"{cell}_forward")(x, w_hh, b_hh, mask, *relu, True, True,
                                                      code, None, 0, w_ih, b_ih)
        grad = torch.randn(*(out.shape if seq else (H, Bp)), dtype=dtype)
        backward = getattr(ext, f"{cell}_backward")
        dgi, dw_hh, db_hh = backward(grad, w_hh, mask, out, *store, *relu, seq, code, None,
                                     None, False)
        dx, dw_ih, db_ih, dw_hh2, db_hh2 = backward(grad, w_hh, mask, out, *store, *relu, seq,
                                                    code, x, w_ih, True)
        assert fused.last_isa() == isa
        dgi = fused._features(dgi)                                   # (G, T, Bp)
        assert torch.equal(dx, fused.product(w_ih.t().contiguous(), dgi.reshape(G, -1))
                           .view(I, steps, Bp))
        assert torch.equal(dw_hh2, dw_hh) and torch.equal(db_hh2, db_hh)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        flat = dgi.reshape(G, -1).double()
        for got, exact in ((dw_ih, flat @ x.reshape(I, -1).double().t()), (db_ih, flat.sum(1))):
            assert (got.double() - exact).abs().max() <= tol * exact.abs().max()
        assert backward(grad, w_hh, mask, out, *store, *relu, seq, code, x, w_ih,
                        False)[0].numel() == 0


def _conv_reference(x, w, b, pool):
    """PyTorch's Conv1d, ReLU, max_pool1d on x (F, T, Bp) -> (C, T', Bp)."""
    y = torch.nn.functional.conv1d(x.permute(2, 0, 1), w, b)
    return torch.nn.functional.max_pool1d(torch.relu(y), pool).permute(1, 2, 0)


@pytest.mark.parametrize("pool", [3, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_convolution_relu_and_pool_in_the_kernels_layout(pool, dtype, isa):
    """``conv_relu_pool`` (Conv1D, ReLU, MaxPool1d with the batch across the lanes, as
    conv_gru's front runs) against PyTorch's ops in float64: the output and every gradient
    (x, weight, bias) exact to rounding; the same bits on 1, 2 and 3 threads; ties (equal
    positive maxima give the gradient to the first, a window of non-positive values gives
    none) and a NaN (its window's output, as PyTorch's) as PyTorch's ops route them."""
    g = torch.Generator().manual_seed(pool)
    F, T, Bp, C, K = 5, 29, 32, 6, 4
    x = torch.randn(F, T, Bp, generator=g, dtype=dtype)
    w = torch.randn(C, F, K, generator=g, dtype=dtype) * 0.5
    b = torch.randn(C, generator=g, dtype=dtype)
    steps = (T - K + 1) // pool
    grad = torch.randn(C, steps, Bp, generator=g, dtype=dtype)
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    exact = _conv_reference(*leaves, pool)
    exact_grads = torch.autograd.grad(exact, leaves, grad.double())
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            mine = [t.clone().requires_grad_() for t in (x, w, b)]
            out = fused.conv_relu_pool(*mine, pool)
            runs.append((out, *torch.autograd.grad(out, mine, grad)))
    finally:
        torch.set_num_threads(before)
    assert fused.last_isa() == isa
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(runs[0], (exact, *exact_grads)):
        assert (got.double() - want).abs().max() <= tol * want.abs().max()
    assert all(torch.equal(a, c) for run in runs[1:] for a, c in zip(runs[0], run))

    zero = torch.zeros_like(w)                    # every step the bias: ties everywhere
    signs = torch.tensor([1.0, -1.0, 2.0, 0.0, -3.0, 0.5], dtype=dtype)
    x_nan = x.clone()
    x_nan[2, 7, 3] = float("nan")
    for xs, ws in ((x, zero), (x_nan, w)):
        mine = [t.clone().requires_grad_() for t in (xs, ws, signs)]
        theirs = [t.clone().requires_grad_() for t in (xs, ws, signs)]
        got, want = fused.conv_relu_pool(*mine, pool), _conv_reference(*theirs, pool)
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got.nan_to_num(), want.nan_to_num())
        ok = ~want.isnan().any(0).any(0)          # sequences no NaN reaches
        got_g = torch.autograd.grad(got[..., ok], mine[2], grad[..., ok])[0]
        want_g = torch.autograd.grad(want[..., ok], theirs[2], grad[..., ok])[0]
        torch.testing.assert_close(got_g, want_g)


def _on_1_2_3_threads(run):
    """run()'s results on 1, 2 and 3 threads, the thread count restored after."""
    before = torch.get_num_threads()
    try:
        return [(torch.set_num_threads(threads), run())[1] for threads in (1, 2, 3)]
    finally:
        torch.set_num_threads(before)


def _multi_hot(ids, vocab, dtype):
    hot = torch.zeros(ids.size(0), vocab, dtype=dtype)
    hot.scatter_(1, ids, 1.0)
    hot[:, 0] = 0.0
    return hot


@pytest.mark.parametrize("units", [16, 5, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_multi_hot_input_times_a_dense_layer_without_the_matrix(units, dtype, isa):
    """``multihot_linear`` (each row sums the weight columns of its distinct words) equals
    the multi-hot matrix times the weights, with every gradient, exact to rounding against
    float64: padding (id 0) and repeated words counted once, a row of padding only giving
    the bias; and the same bits on 1, 2 and 3 threads."""
    g = torch.Generator().manual_seed(units)
    vocab, rows, length = 1000, 40, 300
    ids = torch.randint(0, 60, (rows, length), generator=g)    # many repeats
    ids[: rows // 2] = torch.randint(0, vocab, (rows // 2, length), generator=g)
    ids[3, :] = 0
    ids[5, 100:] = 0
    w = torch.randn(units, vocab, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(units, generator=g, dtype=dtype, requires_grad=True)
    grad = torch.randn(rows, units, generator=g, dtype=dtype)
    exact = _multi_hot(ids, vocab, torch.float64) @ w.detach().double().t() + b.detach().double()
    dw_exact = grad.double().t() @ _multi_hot(ids, vocab, torch.float64)

    def run():
        out = fused.multihot_linear(ids, w, b)
        return (out, *torch.autograd.grad(out, (w, b), grad))

    runs = _on_1_2_3_threads(run)
    assert fused.last_isa() == isa
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(runs[0], (exact, dw_exact, grad.double().sum(0))):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * float(want.abs().max()))
    assert torch.equal(runs[0][0][3], b.detach())                # padding only: the bias
    assert all(torch.equal(a, c) for run in runs[1:] for a, c in zip(runs[0], run))
    with torch.no_grad():                                         # inference: the same bits
        assert torch.equal(fused.multihot_linear(ids, w, b), runs[0][0])


def test_a_multi_hot_layer_names_a_word_id_outside_the_vocabulary():
    w = torch.zeros(4, 10)
    with pytest.raises(RuntimeError, match=r"word id 10 outside the vocabulary's 10 ids"):
        fused.multihot_linear(torch.tensor([[1, 10]]), w)
    with pytest.raises(RuntimeError, match=r"word id -1 outside"):
        fused.multihot_linear(torch.tensor([[-1, 2]]), w)


def test_imdb_dense_trains_through_the_sparse_pass_like_the_dense_model():
    """imdb_dense's model on the CPU goes through ``multihot_linear`` (a silent fall back to
    the (B, vocab) matrix fails here) and gives the dense model's loss and gradients."""
    from rnnlab.nn.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec("imdb", "multihot_dense", epochs=1, units=(16, 16)), 500, 80)
    ids = torch.randint(0, 500, (32, 80))
    y = torch.randint(0, 2, (32,)).float()

    # the other route: the modules one by one, MultiHot's (B, V) matrix
    _routes_agree(model, "multihot", lambda: model(ids),
                  lambda: model.out(nn.Sequential.forward(model.body, ids)).squeeze(-1),
                  lambda out: F.binary_cross_entropy_with_logits(out, y))


def _routes_agree(model, kernel, cpp, other, loss_of):
    """The model's loss and parameter gradients by ``cpp()``, which must call the C++
    ``kernel`` once, and by ``other()``, which must not, agree to float32 rounding."""
    results = []
    for route, calls in ((cpp, 1), (other, 0)):
        model.zero_grad()
        before = fused.calls[kernel]
        loss = loss_of(route())
        assert fused.calls[kernel] == before + calls
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (cpp_loss, cpp_grads), (other_loss, other_grads) = results
    torch.testing.assert_close(cpp_loss, other_loss, rtol=1e-6, atol=1e-7)
    for a, c in zip(cpp_grads, other_grads):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,k,n", [(128, 3360, 32), (37, 101, 19), (5, 16, 1), (130, 50, 70)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_dense_layer_and_its_gradients_exact_to_rounding_on_any_thread_count(rows, k, n,
                                                                                dtype, isa):
    """``fused.dense`` (the dense model's first layer: (128 x 3,360) by (3,360 x 32)) equals
    ``linear`` with its weight's, bias's and input's gradients, exact to rounding against
    float64, on shapes that leave tiles part-filled (rows, columns and outputs that are not
    whole tiles or vectors), with the same bits on 1, 2 and 3 threads and in inference."""
    g = torch.Generator().manual_seed(rows + k + n)
    x = torch.randn(rows, k, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(n, k, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)
    grad = torch.randn(rows, n, generator=g, dtype=dtype)
    xd, wd = x.detach().double(), w.detach().double()
    exact = (xd @ wd.t() + b.detach().double(), grad.double() @ wd, grad.double().t() @ xd,
             grad.double().sum(0))

    def run():
        out = fused.dense(x, w, b)
        return (out, *torch.autograd.grad(out, (x, w, b), grad))

    runs = _on_1_2_3_threads(run)
    assert fused.last_isa() == isa
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(runs[0], exact):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * float(want.abs().max()))
    assert all(torch.equal(a, c) for run in runs[1:] for a, c in zip(runs[0], run))
    with torch.no_grad():
        assert torch.equal(fused.dense(x, w, b), runs[0][0])
        no_bias = xd @ wd.t()
        torch.testing.assert_close(fused.dense(x, w).double(), no_bias, rtol=0,
                                   atol=tol * float(no_bias.abs().max()))


def test_a_dense_layer_gradchecks_in_float64():
    g = torch.Generator().manual_seed(4)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
               for s in ((9, 21), (5, 21), (5,)))
    assert torch.autograd.gradcheck(fused.dense, (x, w, b))


def test_the_dense_model_trains_through_the_cpp_layer_like_nn_linear():
    """The dense model's hidden layer on the CPU runs ``fused.dense`` (a silent fall back to
    ``nn.Linear``'s product fails here), with nn.Linear's loss and gradients, and its
    state_dict is nn.Linear's."""
    from rnnlab.nn.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec("jena", "dense", epochs=1, units=(32,)), 14, 240)
    x, y = torch.randn(64, 240, 14), torch.randn(64)
    hidden = model.body[1]

    _routes_agree(model, "dense", lambda: model(x),
                  lambda: model.out(torch.relu(F.linear(x.flatten(1), hidden.weight,
                                                        hidden.bias))).squeeze(-1),
                  lambda out: F.l1_loss(out, y))
    assert set(model.state_dict()) == {"body.1.weight", "body.1.bias", "out.weight", "out.bias"}


@pytest.mark.parametrize("form", ["keras2", "keras3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rmsprop_in_one_pass_has_the_bits_of_its_operations_in_numpy(form, dtype, isa):
    """``rmsprop_update`` (engine.RMSprop on CPU tensors) gives, on every instruction set and
    on 1, 2 and 3 threads, the bits of v = alpha v + (1 - alpha) g^2 and p += -lr g /
    (sqrt(v) + eps) (keras3: / sqrt(v + eps)) written out in numpy in the dtype, each
    operation rounded on its own: parameters large enough to be split between threads and
    small ones, gradients from 2 to 1e-5 and zero."""
    import numpy as np

    g = torch.Generator().manual_seed(7)
    shapes = [(32, 3360), (70_001,), (32,), (1,)]
    scales = (2.0, 1e-3, 1e-5, 0.0, 1.0)
    steps = [[torch.randn(s, generator=g, dtype=dtype) * c for s in shapes] for c in scales]
    start = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    kind = np.float32 if dtype == torch.float32 else np.float64
    a, rest, eps, step = kind(0.9), kind(1 - 0.9), kind(1e-7), kind(-1e-3)
    want_p = [p.numpy().copy() for p in start]
    want_v = [np.zeros_like(p) for p in want_p]
    for grads in steps:
        for i, grad in enumerate(grads):
            gn = grad.numpy()
            want_v[i] = want_v[i] * a + rest * gn * gn
            d = np.sqrt(want_v[i] + eps) if form == "keras3" else np.sqrt(want_v[i]) + eps
            want_p[i] = want_p[i] + step * gn / d
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            params = [p.clone() for p in start]
            avgs = [torch.zeros_like(p) for p in start]
            for grads in steps:
                fused.rmsprop_update(params, grads, avgs, 0.9, 1e-7, 1e-3, form == "keras3")
            assert fused.last_isa() == isa
            for p, v, wp, wv in zip(params, avgs, want_p, want_v):
                assert np.array_equal(p.numpy(), wp) and np.array_equal(v.numpy(), wv)
    finally:
        torch.set_num_threads(before)


def test_rmsprop_in_one_pass_bumps_versions_and_refuses_mismatched_tensors():
    p, g, v = torch.ones(5), torch.ones(5), torch.zeros(5)
    before = p._version, v._version
    fused.rmsprop_update([p], [g], [v], 0.9, 1e-7, 1e-3, False)
    assert p._version > before[0] and v._version > before[1]
    with pytest.raises(RuntimeError, match="contiguous CPU tensor of the parameter's shape"):
        fused.rmsprop_update([p], [torch.ones(4)], [v], 0.9, 1e-7, 1e-3, False)
    with pytest.raises(RuntimeError, match="contiguous CPU tensor"):
        fused.rmsprop_update([torch.ones(4, 4).t()], [torch.ones(4, 4)], [torch.zeros(4, 4)],
                             0.9, 1e-7, 1e-3, False)


def test_a_dense_layer_refuses_a_bias_off_the_cpu_and_a_second_derivative():
    x, w = torch.randn(4, 6), torch.randn(3, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="bias must be a CPU tensor of M values"):
        fused.dense(x, w.detach(), torch.zeros(3, device="meta"))
    (gw,) = torch.autograd.grad(fused.dense(x, w).square().sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gw.sum().backward()
