"""Recurrent layers with Keras-style ``dropout`` and ``recurrent_dropout``, and the one
place that decides which code runs their time loop.

PyTorch's ``nn.GRU(dropout=p)`` only drops between stacked layers. The lecture's GRUs
(Gal & Ghahramani's variational dropout, as Keras implements it) draw **one mask per
sequence** for the inputs and one for the recurrent state, and reuse both at every time
step; masks are scaled by 1/(1-p) in training and absent in eval mode.

``RecurrentLayer`` (GRU, LSTM or simple RNN, one direction) keeps ``nn.GRU``'s parameter
names and gate layout (for the GRU: r, z, n, the "reset after" form that Keras' GRU also
uses), so with both rates at 0 it computes exactly what ``nn.GRU``/``nn.LSTM``/``nn.RNN``
compute with the same weights. On the persistent, graphed and TorchScript paths the input
projection of all time steps is one matmul before the loop (the C++ path projects each
step inside it); the loop itself runs on one of these paths (``RecurrentLayer.path``):

=======  ===========================  =====================  ==============================
device   layer                        C++ recurrences        path
=======  ===========================  =====================  ==============================
cpu      any cell, any options        built (the default)    ``cpp``: ``rnnlab.nn.fused``,
                                                             forward and backward in C++
cpu      gru (any options)            not built              ``loop``: the Python loop below,
                                                             backward written by hand
cpu      lstm, rnn; no rec. dropout   not built              ``torch``: PyTorch's own loop
cpu      lstm, rnn; rec. dropout      not built              an error naming the build failure
cuda     rec. dropout or relu,        (CPU only)             ``persistent``:
         up to 64 units                                      ``rnnlab.nn.persistent``, one
                                                             Triton launch for all steps
cuda     gru, rec. dropout or relu,   (CPU only)             ``graph``: the loop below as
         more than 64 units                                  one CUDA graph per shape
cuda     lstm, rnn; rec. dropout,     (CPU only)             an error naming the limit
         more than 64 units
cuda     any other                    (CPU only)             ``torch``: cuDNN
=======  ===========================  =====================  ==============================

On CUDA, ``RNNLAB_CUDA_LOOP`` (``cuda_loop``) changes the CUDA rows: ``persistent``
runs every layer of up to 64 units on the Triton kernels (a larger one is an error);
``cudnn`` is the path before them (cuDNN, and for
a GRU's recurrent dropout or relu the Python loop below captured as one CUDA graph per
shape; an LSTM or RNN with recurrent dropout is then an error). Without Triton, ``auto``
takes that path too, after one warning. With ``TRITON_INTERPRET=1`` and
``RNNLAB_CUDA_LOOP=persistent``, CPU tensors take the persistent path in Triton's
interpreter: that is how the CPU-only CI tests it (tests/test_persistent.py).
``native=False`` on a layer forces the paths of the "not built" rows (benchmarks and tests).
The C++ recurrences are compiled once per machine at install (``./dev.sh``) or at first
use; when they cannot be built, one warning says why and the "not built" rows apply; with
``RNNLAB_REQUIRE_CPP=1`` (CI) that is an error instead. The one reference every path is
tested against (a plain-autograd GRU loop) lives in ``tests/_reference.py``; the CPU paths
are tested there on every run, the CUDA ones on a GPU (tests/test_cuda.py).

Measured by ``bench/bench_ab.py`` against the kernels before the batch went across the
SIMD lanes (2 threads, batch 128, 2026-12-06): a ``gru`` training step 20.2 -> 8.0 ms,
``gru_stacked`` 87.0 -> 35.9 ms (docs/models.md, "How the kernels work").
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from rnnlab.core.errors import RnnlabError


def _gru_forward(gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask_h: Optional[Tensor],
                 relu: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """No-graph forward loop; returns h_T and what the backward needs."""
    steps, batch, three_h = gi.shape
    hidden = three_h // 3
    w_t = w_hh.t()
    h = gi.new_zeros(batch, hidden)
    h_prev = gi.new_empty(steps, batch, hidden)       # state entering each step
    rz_all = gi.new_empty(steps, batch, 2 * hidden)   # reset and update gates
    n_all = gi.new_empty(steps, batch, hidden)        # candidate state
    hn_all = gi.new_empty(steps, batch, hidden)       # W_hn h + b_hn, needed for dr
    for t in range(steps):
        h_prev[t] = h
        h_in = h * mask_h if mask_h is not None else h
        gh = torch.addmm(b_hh, h_in, w_t)                                   # (B, 3H)
        g = gi[t]
        rz = torch.sigmoid(g[:, : 2 * hidden] + gh[:, : 2 * hidden])
        rz_all[t] = rz
        hn = gh[:, 2 * hidden:]
        hn_all[t] = hn
        pre = torch.addcmul(g[:, 2 * hidden:], rz[:, :hidden], hn)
        n = torch.relu(pre) if relu else torch.tanh(pre)
        n_all[t] = n
        h = torch.addcmul(n, rz[:, hidden:], h - n)                         # (1-z) n + z h
    return h, h_prev, rz_all, n_all, hn_all


def _gru_backward(grad_out: Tensor, w_hh: Tensor, mask_h: Optional[Tensor], h_prev: Tensor,
                  rz_all: Tensor, n_all: Tensor, hn_all: Tensor, relu: bool,
                  return_sequences: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Backpropagation through time; returns dgi (T, B, 3H), dW_hh (3H, H), db_hh (3H,)."""
    steps, batch, hidden = h_prev.shape
    dgi = grad_out.new_empty(steps, batch, 3 * hidden)
    dgh_n = grad_out.new_empty(steps, batch, hidden)
    w_rz, w_n = w_hh[: 2 * hidden], w_hh[2 * hidden:]
    dh = grad_out[steps - 1].clone() if return_sequences else grad_out.clone()
    for t in range(steps - 1, -1, -1):
        if return_sequences and t < steps - 1:
            dh = dh + grad_out[t]
        rz = rz_all[t]
        n = n_all[t]
        r = rz[:, :hidden]
        z = rz[:, hidden:]
        dn = dh * (1 - z)
        dpre = dn * (n > 0) if relu else dn * (1 - n * n)
        drz = torch.cat([dpre * hn_all[t], dh * (h_prev[t] - n)], 1) * rz * (1 - rz)
        dgi[t, :, : 2 * hidden] = drz
        dgi[t, :, 2 * hidden:] = dpre
        dghn = dpre * r
        dgh_n[t] = dghn
        dh_in = torch.addmm(dghn @ w_n, drz, w_rz)                          # (B, H)
        dh = dh * z + (dh_in * mask_h if mask_h is not None else dh_in)
    dgh = torch.cat([dgi[:, :, : 2 * hidden], dgh_n], 2).reshape(steps * batch, 3 * hidden)
    h_in = h_prev * mask_h if mask_h is not None else h_prev
    return dgi, dgh.t() @ h_in.reshape(steps * batch, hidden), dgh.sum(0)


class _CudaGraphed:
    """``fn`` (a loop of small ops over tensors) replayed as a CUDA graph.

    On a GPU the loops above launch ~10 kernels per time step, each a few microseconds of
    work behind a launch that costs more: the loop is bound by the CPU that issues the
    launches. Here each signature (shapes, dtypes, device, current stream, the flags, which
    optional arguments are None, and the TF32 settings) is captured once, after two
    warm-up calls on a side stream, and every later call copies its inputs into the graph's
    static tensors, replays the whole loop with one launch and returns clones of the static
    outputs (the next replay overwrites them); a lock keeps two threads from interleaving
    those three steps. Captured graphs stay for the process (one per signature: a training
    shape per layer, and for a relu layer each evaluation batch size). Without graphs
    (``RNNLAB_CUDA_GRAPHS=0``, read when a layer is called; or for a signature whose capture
    failed, with one warning) ``fallback`` runs: the same loop, step by step, with the same
    results.
    """

    enabled: bool | None = None    # None: RNNLAB_CUDA_GRAPHS decides (tests set it)
    instances: list[_CudaGraphed] = []

    def __init__(self, fn: Callable[..., tuple], fallback: Callable[..., tuple]) -> None:
        self.fn, self.fallback = fn, fallback
        self.graphs: dict[tuple, tuple] = {}
        self.failed: set[tuple] = set()     # signatures whose capture failed
        self.lock = threading.Lock()
        _CudaGraphed.instances.append(self)

    def __call__(self, *args):
        enabled = _CudaGraphed.enabled
        if enabled is None:
            enabled = os.environ.get("RNNLAB_CUDA_GRAPHS", "1") != "0"
        if not enabled:
            return self.fallback(*args)
        device = next(a.device for a in args if isinstance(a, Tensor))
        key = (torch.cuda.current_stream(device).cuda_stream,
               torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
               *((tuple(a.shape), a.dtype, a.device) if isinstance(a, Tensor) else a
                 for a in args))
        with self.lock:
            if key in self.failed:
                return self.fallback(*args)
            entry = self.graphs.get(key)
            if entry is None:
                try:
                    entry = self.graphs[key] = self._capture(args, device)
                except Exception as e:  # noqa: BLE001 - this signature runs step by step
                    self.failed.add(key)
                    warnings.warn(f"CUDA graph capture failed for one recurrent loop shape "
                                  f"({type(e).__name__}: {e}); that shape runs step by step, "
                                  f"with the same results", RuntimeWarning, stacklevel=2)
                    return self.fallback(*args)
            graph, static_args, static_out = entry
            for static, arg in zip(static_args, args):
                if isinstance(arg, Tensor):
                    static.copy_(arg)
            graph.replay()
            return tuple(out.clone() for out in static_out)

    def _capture(self, args, device: torch.device) -> tuple:
        with torch.cuda.device(device):
            static_args = [a.detach().clone() if isinstance(a, Tensor) else a for a in args]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.fn(*static_args)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.fn(*static_args)
        return graph, static_args, static_out


# The Python loops captured as CUDA graphs; without graphs they run step by step.
_gru_forward_graphed = _CudaGraphed(_gru_forward, _gru_forward)
_gru_backward_graphed = _CudaGraphed(_gru_backward, _gru_backward)


class _GRURecurrence(torch.autograd.Function):
    """The recurrent part of a GRU with a hand-written backward pass (BPTT).

    Autograd would record ~10 nodes per time step and walk them one by one; here the
    forward runs without a graph and keeps the gates, and the backward is one loop of a
    few (B, H)-sized ops per step plus a single (3H, T*B) x (T*B, H) matmul for dW_hh.
    Shapes: gi (T, B, 3H) time-major, w_hh (3H, H), b_hh (3H,), mask_h (B, H) or None.
    """

    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask_h: Tensor | None,
                relu: bool, return_sequences: bool) -> Tensor:
        forward = _gru_forward_graphed if gi.is_cuda else _gru_forward
        h, h_prev, rz_all, n_all, hn_all = forward(gi, w_hh, b_hh, mask_h, relu)
        ctx.save_for_backward(w_hh, mask_h, h_prev, rz_all, n_all, hn_all)
        ctx.relu, ctx.return_sequences = relu, return_sequences
        if return_sequences:
            return torch.cat([h_prev[1:], h[None]], 0)                      # (T, B, H)
        return h

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        w_hh, mask_h, h_prev, rz_all, n_all, hn_all = ctx.saved_tensors
        backward = _gru_backward_graphed if grad_out.is_cuda else _gru_backward
        dgi, dw_hh, db_hh = backward(grad_out.contiguous(), w_hh, mask_h, h_prev, rz_all,
                                     n_all, hn_all, ctx.relu, ctx.return_sequences)
        return dgi, dw_hh, db_hh, None, None, None


GATES = {"gru": 3, "lstm": 4, "rnn": 1}


class _Projection(torch.autograd.Function):
    """``x @ w.T + b`` whose weight and bias gradients do not depend on the thread count.

    Their products sum over every row of ``x`` (T*B = 25,600 for a Jena batch, V = 10,000
    for IMDB's projected table), and a GEMM library splits so long a sum between threads:
    one thread and two gave gradients 3e-8 apart, so a queue worker (OMP_NUM_THREADS=1) and
    `dvc repro` drifted apart over training. On the CPU with the C++ extension the rows are
    summed in fixed parts in a fixed order (``fused.rows_project_grad``); elsewhere in
    float64, rounded once. (The float64 sums on the CPU took 3.3 ms of an IMDB LSTM step
    against 0.7 for the C++ ones, mostly converting the (10,000, 128) gradient twice.)
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return _linear(x, w, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.size(-1))                        # (rows, G*H)
        grad_x = _linear(grad, w.t(), None) if ctx.needs_input_grad[0] else None
        grad_w = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            grad_w, grad_b = _weight_grads(g2, x.reshape(-1, x.size(-1)), w.dtype)
        return (grad_x, grad_w if ctx.needs_input_grad[1] else None,
                grad_b if ctx.needs_input_grad[2] else None)


def _weight_grads(g: Tensor, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """g (rows, O)^T @ x (rows, I) and g's column sums, in a fixed order of the rows."""
    if _use_fused(x) and g.dtype == x.dtype == dtype:
        from rnnlab.nn import fused
        return fused.rows_project_grad(g.contiguous(), x)
    g64 = g.double()
    return (g64.t() @ x.double()).to(dtype), g64.sum(0).to(dtype)


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x @ w.T + b`` (..., I) -> (..., O), contiguous. On the CPU with the C++ extension,
    its product, whose bits do not depend on the thread count (a GEMM library's do), read
    and written row-major (``fused.rows_project``)."""
    if _use_fused(x) and w.dtype == x.dtype:
        from rnnlab.nn import fused
        out = fused.rows_project(x.reshape(-1, x.size(-1)), w, b)
        return out.view(*x.shape[:-1], w.size(0))
    return torch.nn.functional.linear(x, w, b).contiguous()


def project(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The input projection of every time step in one product: (..., I) -> (..., G*H)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or w.requires_grad
                                           or b.requires_grad):
        return _linear(x, w, b)
    return _Projection.apply(x, w, b)


CUDA_LOOPS = ("auto", "persistent", "cudnn")


def cuda_loop() -> str:
    """``RNNLAB_CUDA_LOOP``, read at every call: which code runs a layer's loop on CUDA.
    ``auto`` (the default): the persistent Triton kernels where cuDNN cannot run the layer
    (a recurrent-dropout mask, a relu GRU or RNN) and the layer has at most
    ``persistent.MAX_HIDDEN`` units, cuDNN elsewhere; ``persistent``: the Triton kernels
    for every layer (a larger one is an error); ``cudnn``: cuDNN, and the CUDA-graphed
    Python loop for what cuDNN cannot run (the path before the persistent kernels)."""
    value = os.environ.get("RNNLAB_CUDA_LOOP", "auto").strip().lower() or "auto"
    if value not in CUDA_LOOPS:
        raise RnnlabError(f"RNNLAB_CUDA_LOOP={value!r}: choose one of {', '.join(CUDA_LOOPS)}")
    return value


def _interpreting() -> bool:
    """Triton's interpreter is on (tests): ``RNNLAB_CUDA_LOOP=persistent`` then runs the
    persistent kernels on CPU tensors too."""
    from rnnlab.nn import persistent
    return persistent.interpreting()


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _warn_no_triton(reason: str | None) -> None:
    _warn_once(f"the persistent CUDA recurrences cannot run ({reason}); recurrent dropout "
               f"and relu GRUs take the slower CUDA-graphed loop")


def _use_fused(x: Tensor) -> bool:
    """The C++ recurrences serve CPU tensors of float32/float64 when they could be built."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    from rnnlab.nn import fused
    return fused.available()


class RecurrentLayer(nn.Module):
    """One recurrent layer, one direction: input (B, T, I) -> (B, H) or (B, T, H).

    ``cell``: ``gru`` (r, z, n; reset after, as Keras' GRU and ``nn.GRU``), ``lstm``
    (i, f, g, o; zero initial state) or ``rnn`` (Elman). Parameters are named and laid out
    as ``nn.GRU``/``nn.LSTM``/``nn.RNN``'s, so weights copy across. Keras-style
    ``dropout`` (one input mask per sequence) and ``recurrent_dropout`` (one state mask per
    sequence), scaled by 1/(1-p) and off in eval mode.

    Which code runs the time loop: ``path`` decides, by the table in this module's
    docstring. All paths give the same results (tests/test_fused.py, tests/test_recurrent.py;
    tests/test_cuda.py on a GPU).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, *, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, activation: str = "tanh",
                 return_sequences: bool = False,
                 native: bool = True):
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell {cell!r}: choose one of {', '.join(GATES)}")
        if activation not in ("tanh", "relu") or (cell == "lstm" and activation != "tanh"):
            raise ValueError(f"activation {activation!r}: choose tanh or relu (lstm: tanh)")
        for name, p in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self.cell = cell
        self.input_size, self.hidden_size = input_size, hidden_size
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        self.activation = activation
        self.return_sequences = return_sequences
        self.native = native          # False: never the C++ CPU recurrences (benchmarks, tests)
        gates = GATES[cell] * hidden_size
        self.weight_ih_l0 = nn.Parameter(torch.empty(gates, input_size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(gates, hidden_size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(gates))
        self.bias_hh_l0 = nn.Parameter(torch.empty(gates))
        bound = 1.0 / math.sqrt(hidden_size)   # nn.GRU's / nn.LSTM's initialization
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def sample_masks(self, batch: int, device: torch.device | None = None,
                     dtype: torch.dtype | None = None) -> tuple[Tensor | None, Tensor | None]:
        """One input mask (B, I) and one state mask (B, H), scaled by 1/(1-p)."""
        def mask(size: int, p: float) -> Tensor | None:
            if p == 0.0:
                return None
            keep = torch.full((batch, size), 1.0 - p, device=device, dtype=dtype)
            return torch.bernoulli(keep) / (1.0 - p)
        return mask(self.input_size, self.dropout), mask(self.hidden_size, self.recurrent_dropout)

    def _masks(self, x: Tensor, masks: tuple[Tensor | None, Tensor | None] | None
               ) -> tuple[Tensor | None, Tensor | None]:
        if not self.training:
            return None, None
        return masks if masks is not None else self.sample_masks(x.size(0), x.device, x.dtype)

    def forward(self, x: Tensor, masks: tuple[Tensor | None, Tensor | None] | None = None
                ) -> Tensor:
        mask_x, mask_h = self._masks(x, masks)
        relu = self.activation == "relu"
        path = self.path(x, mask_h is not None)
        if path == "cpp":
            # Feature-major (I, T, B): a view of a previous cpp layer's output, so stacked
            # layers hand states (and, backwards, their gradients) on without transposing
            # copies; the input mask applied in that layout, the batch padded to the lanes.
            from rnnlab.nn import fused
            batch = x.size(0)
            xf = x.permute(2, 1, 0)
            if mask_x is not None:
                xf = xf * mask_x.t()[:, None, :]                  # same mask at every step
            return self._recur_cpp(fused.pad_lanes(xf).contiguous(), mask_h, relu, batch)
        if path == "torch":
            return self._torch_loop(_masked_input(x, mask_x), relu)
        gi = self._projected(x, mask_x)                                       # (T, B, G*H)
        if path == "persistent":
            from rnnlab.nn import persistent
            out = persistent.recurrence(self.cell, gi, self.weight_hh_l0, self.bias_hh_l0,
                                        mask_h, relu, self.return_sequences)
            return out.transpose(0, 1) if self.return_sequences else out
        return self._recur(gi, mask_h, relu)

    def _no_mask_fix(self, choice: str) -> str:
        """The fixes for an LSTM or SimpleRNN with recurrent dropout too large for the
        persistent kernels (the only CUDA code that masks their state); ``choice``: the
        RNNLAB_CUDA_LOOP in force."""
        from rnnlab.nn.persistent import MAX_HIDDEN
        return (f"use at most {MAX_HIDDEN} units"
                + (" with RNNLAB_CUDA_LOOP unset" if choice == "cudnn" else "")
                + ", recurrent_dropout 0, a gru (a slower CUDA-graphed loop) or device: cpu")

    def _projected(self, x: Tensor, mask_x: Tensor | None) -> Tensor:
        """The input projections of every step of x (B, T, I), the input mask applied, in
        one product, time-major for the loop: (T, B, G*H)."""
        return project(_masked_input(x, mask_x).transpose(0, 1), self.weight_ih_l0,
                       self.bias_ih_l0)

    def path(self, x: Tensor, state_mask: bool) -> str:
        """Which code runs the time loop over ``x`` (the table in the module docstring):
        ``cpp``, ``persistent``, ``loop``, ``graph`` or ``torch``."""
        choice = cuda_loop()
        too_large = None                    # why the persistent kernels cannot take it
        if x.is_cuda or (choice == "persistent" and _interpreting()):
            from rnnlab.nn import persistent
            too_large = persistent.why_too_large(self.hidden_size)
            cudnn_cannot = state_mask or self.activation == "relu"
            if choice == "persistent" or (choice == "auto" and cudnn_cannot):
                if too_large and choice == "persistent":
                    raise RnnlabError(f"RNNLAB_CUDA_LOOP=persistent: a {self.cell} layer of "
                                      f"{too_large}; " + (
                                          self._no_mask_fix(choice) if state_mask and
                                          self.cell != "gru" else
                                          f"unset RNNLAB_CUDA_LOOP or use at most "
                                          f"{persistent.MAX_HIDDEN} units"))
                if too_large:               # below: a GRU's graphed loop, cuDNN, or an error
                    if self.cell == "gru":
                        _warn_once(f"a gru layer of {too_large}; it takes the slower "
                                   "CUDA-graphed loop")
                elif persistent.available() and x.dtype in (torch.float32, torch.float64):
                    return "persistent"
                elif choice == "persistent":
                    raise RnnlabError(f"RNNLAB_CUDA_LOOP=persistent: the Triton recurrences "
                                      f"cannot run ({persistent.unavailable_reason()}); "
                                      f"install triton or unset RNNLAB_CUDA_LOOP")
                else:
                    _warn_no_triton(persistent.unavailable_reason())
        if self.native and _use_fused(x):
            return "cpp"
        gru_only = self.cell == "gru" and (state_mask or self.activation == "relu")
        if x.device.type == "cpu" and self.cell == "gru" or gru_only:
            return "graph" if x.is_cuda else "loop"
        if state_mask and x.is_cuda and too_large:
            raise RnnlabError(f"a {self.cell} layer with recurrent_dropout on CUDA: {too_large}, "
                              f"and cuDNN has no recurrent dropout; {self._no_mask_fix(choice)}")
        if state_mask and x.is_cuda:
            raise RnnlabError(f"a {self.cell} layer with recurrent_dropout on CUDA needs the "
                              f"persistent Triton recurrences (rnnlab.nn.persistent): install "
                              f"triton and leave RNNLAB_CUDA_LOOP at auto or persistent")
        if state_mask:
            raise RnnlabError(f"a {self.cell} layer with recurrent_dropout needs the C++ "
                              f"recurrences of rnnlab.nn.fused on the CPU ({_fused_reason()})")
        return "torch"     # PyTorch's GRU has no relu: a relu GRU took a path above

    def forward_ids(self, ids: Tensor, table: Tensor) -> Tensor:
        """``self(embedding(ids))`` for ids (B, T) into an embedding ``table`` (V, I).

        The input projection of an embedded token is a row of ``table @ W_ih^T + b_ih``, so
        where the C++ recurrences run and the vocabulary has no more rows than the batch
        has tokens, that (V, G*H) product is computed once and its rows gathered in time
        order: a product over V rows instead of B*T, and no (B, T, I) embedding tensor
        (IMDB's LSTM step: 64,000 rows against 10,000). Gradients reach the table through
        the product, summed per token id first. Outputs and gradients equal the embedding
        route's up to rounding (tests/test_models.py).
        Anywhere else, or with an input dropout mask to apply, it is the embedding route.
        """
        batch, steps = ids.shape
        if (self.training and self.dropout > 0) or table.size(0) > batch * steps \
                or self.path(table, False) != "cpp":
            return self(torch.nn.functional.embedding(ids, table))
        mask_h = self.sample_masks(batch, table.device, table.dtype)[1] if self.training \
            else None
        projected = project(table, self.weight_ih_l0, self.bias_ih_l0)          # (V, G*H)
        from rnnlab.nn import fused
        order = fused.pad_lanes(ids.t()).reshape(-1)                    # time-major, padded
        return self._recur_cpp(None, mask_h, self.activation == "relu", batch,
                               table=(projected, order, steps))

    def _recur_cpp(self, x: Tensor | None, mask_h: Tensor | None, relu: bool, batch: int,
                   table: tuple[Tensor, Tensor, int] | None = None) -> Tensor:
        """The C++ time loop over the layer's input x (I, T, Bp) (the input side's gradients
        in C++ too), or over a projected embedding table's rows (``table``: the table
        (V, G*H), the token order, the steps) -> (B, T, H) or (B, H) views."""
        from rnnlab.nn import fused
        mask = None
        if mask_h is not None:
            padded = x.size(2) if x is not None else fused.padded(batch)
            mask = torch.nn.functional.pad(mask_h.to(self.weight_hh_l0.dtype).t(),
                                           (0, padded - batch)).contiguous()
        if x is not None:
            out = fused.layer(self.cell, x, self.weight_ih_l0, self.bias_ih_l0,
                              self.weight_hh_l0, self.bias_hh_l0, mask, relu,
                              self.return_sequences)
        else:
            assert table is not None, "give x or table"
            out = fused.table_recurrence(self.cell, *table, self.weight_hh_l0,
                                         self.bias_hh_l0, mask, relu, self.return_sequences)
        # Cut the padding in the kernels' layout: the cut's backward builds a zero-padded
        # gradient in that layout, so the backward kernel reads it without a transposing copy.
        if out.size(-1) != batch:
            out = out[..., :batch]
        if self.return_sequences:
            return out.permute(2, 1, 0)                                      # (B, T, H)
        return out.t()                                                       # (B, H)

    def _recur(self, gi: Tensor, mask_h: Tensor | None, relu: bool) -> Tensor:
        """The Python GRU loop over input projections ``gi`` (T, B, G*H)."""
        if mask_h is not None:
            mask_h = mask_h.to(gi.dtype).contiguous()
        # the GRU loop ("loop", "graph"): path() saw to that
        out = _GRURecurrence.apply(gi, self.weight_hh_l0, self.bias_hh_l0, mask_h, relu,
                                   self.return_sequences)
        return out.transpose(0, 1) if self.return_sequences else out         # (B, T, H) | (B, H)

    def _torch_loop(self, x: Tensor, relu: bool) -> Tensor:
        """PyTorch's own single-layer loop (cuDNN on CUDA), with this layer's weights."""
        weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
        h0 = x.new_zeros(1, x.size(0), self.hidden_size)
        args = (weights, True, 1, 0.0, self.training, False, True)
        if x.is_cuda:
            # cuDNN wants the four weight tensors in one buffer and copies them into one at
            # every call, warning each time: a few kB for these layers.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="RNN module weights are not part",
                                        category=UserWarning)
                return self._vf_rnn(x, h0, args, relu)
        return self._vf_rnn(x, h0, args, relu)

    def _vf_rnn(self, x: Tensor, h0: Tensor, args: tuple, relu: bool) -> Tensor:
        if self.cell == "lstm":
            out, h, _ = torch._VF.lstm(x, (h0, h0), *args)
        elif self.cell == "gru":
            if relu:
                raise RnnlabError("PyTorch's GRU is tanh only: a relu GRU runs our loop")
            out, h = torch._VF.gru(x, h0, *args)
        else:
            out, h = (torch._VF.rnn_relu if relu else torch._VF.rnn_tanh)(x, h0, *args)
        return out if self.return_sequences else h[0]

    def extra_repr(self) -> str:
        return (f"{self.cell}, {self.input_size}, {self.hidden_size}, dropout={self.dropout}, "
                f"recurrent_dropout={self.recurrent_dropout}, activation={self.activation}")


def _masked_input(x: Tensor, mask_x: Tensor | None) -> Tensor:
    """x (B, T, I) times the input mask (B, I), the same at every step."""
    return x if mask_x is None else x * mask_x[:, None, :]


def both_directions(forward: RecurrentLayer, backward: RecurrentLayer, x: Tensor
                    ) -> tuple[Tensor, Tensor] | None:
    """A bidirectional layer's two directions (``backward`` reading ``x`` reversed) in one
    persistent launch, where both take that path; else None. The masks are drawn in the
    order two separate calls draw them, so the results are the same as theirs."""
    state_mask = forward.training and forward.recurrent_dropout > 0
    if forward.path(x, state_mask) != "persistent" or backward.path(x, state_mask) \
            != "persistent":
        return None
    from rnnlab.nn import persistent
    gis, masks = [], []
    for layer, seq in ((forward, x), (backward, x.flip(1))):
        mask_x, mask_h = layer._masks(seq, None)
        gis.append(layer._projected(seq, mask_x))
        masks.append(mask_h)
    stacked = lambda name: torch.stack([getattr(forward, name), getattr(backward, name)])
    out = persistent.recurrences(
        forward.cell, torch.stack(gis), stacked("weight_hh_l0"), stacked("bias_hh_l0"),
        None if masks[0] is None else torch.stack([m for m in masks if m is not None]),
        forward.activation == "relu",
        forward.return_sequences)
    if forward.return_sequences:
        return out[0].transpose(0, 1), out[1].transpose(0, 1)          # (B, T, H) each
    return out[0], out[1]


def prepare_native(model: nn.Module, device: torch.device) -> None:
    """Builds or loads the C++ recurrences now if ``model`` will run them, so the one-off
    compile (about a minute per machine) is not timed as part of the first epoch."""
    if device.type == "cpu" and any(isinstance(m, RecurrentLayer) and m.native
                                    for m in model.modules()):
        from rnnlab.nn import fused
        fused.available()


def _fused_reason() -> str:
    from rnnlab.nn import fused
    return fused.unavailable_reason() or "not on the CPU"


class DropoutGRU(RecurrentLayer):
    """One GRU layer (one direction) with Keras-style dropout: ``RecurrentLayer("gru", ...)``."""

    def __init__(self, input_size: int, hidden_size: int, **kwargs):
        super().__init__("gru", input_size, hidden_size, **kwargs)
