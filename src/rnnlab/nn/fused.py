"""Fused CPU recurrences: GRU, LSTM and Elman RNN with the whole time loop in C++.

The kernels (src/rnnlab/nn/csrc/lane_kernels.h) put the batch across the SIMD lanes: one
vector holds one feature of 16 sequences (AVX-512; 8 with AVX2, 4 portable), so a time
step's products broadcast each weight once to a whole vector of sequences, the gate maths
and the state update run on the accumulators in registers, and nothing is summed across
lanes inside the loop. Their tensors are feature-major: a layer's input x (I, T, Bp),
input projections gi (G*H, T, Bp), states (H, T, Bp), the batch padded to Bp, a multiple
of 16 (``padded``). ``layer`` runs a whole layer from x (the input projection of every
step as one product before the loop; in the backward, the input side's gradients from the
loop's block-major dgi, in C++, in a fixed order); ``recurrence`` runs the loop over given
gi (IMDB's projected embedding table). ``RecurrentLayer`` (rnnlab.nn.recurrent) calls them.

``gru_recurrence``, ``lstm_recurrence`` and ``rnn_recurrence`` are the same loops with
time-major tensors: gi (T, B, G*H) (bias_ih included, e.g. ``F.linear(x.transpose(0, 1),
w_ih, b_ih)``), ``w_hh`` (G*H, H), ``b_hh`` (G*H,), and an optional recurrent-dropout mask
``mask_h`` (B, H) applied to the state before ``w_hh`` at every step (Keras'
recurrent_dropout); they return h_T (B, H) or all states (T, B, H), and gradients flow to
gi, w_hh and b_hh. ``gru_recurrence`` has exactly the semantics of
``rnnlab.nn.recurrent._GRURecurrence.apply``. When autograd needs no backward (``no_grad``,
or no input requires grad: evaluation), inference kernels run the same arithmetic without
keeping each step's states and gates (bit-identical outputs).

The instruction set is chosen at run time: the CPU's best of ``avx512``, ``avx2`` and
``portable``, or the one ``RNNLAB_CPU_ISA`` names (``set_isa`` in code; tests and benches
force the slower ones). Each block of sequences runs its whole time loop on one thread, so
results are bit-identical for any thread count (not across instruction sets: they agree
within 1e-5 of each tensor's scale, tests/test_fused.py).

The extension is compiled by ``torch.utils.cpp_extension.load`` at first use (or at
``./dev.sh install``) into ``$XDG_CACHE_HOME/rnnlab/torch_extensions/<key>`` (default
``~/.cache``), from a copy of the sources kept there (so every clone of the repository
shares one build), where the key hashes the sources, the compiler flags, torch's version
and location (its headers are named by path in the compile command) and the CPU's
instruction-set flags. On x86-64 the build targets the baseline and compiles the kernels
three times under their own targets, so a build serves any x86-64 CPU; elsewhere it uses
``-march=native``. An ``fcntl`` lock serializes builds across processes. If the build or
the import fails, ``available()`` is False, one warning says why, and callers keep their
current code path.
"""


from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from rnnlab.core.errors import RnnlabError

log = logging.getLogger(__name__)

_CSRC = Path(__file__).with_name("csrc")
_SOURCE = _CSRC / "recurrent.cpp"
_HEADERS = [_CSRC / "lane_kernels.h"]
# x86-64: a baseline build; recurrent.cpp compiles its kernels for AVX-512, AVX2 and the
# baseline itself and picks one at run time. Elsewhere (ARM...): the build machine's own.
# (-fno-math-errno: sqrt inlines to the vector instruction, as in torch's own build.)
_CFLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-Wno-psabi"] + \
    ([] if platform.machine() in ("x86_64", "AMD64") else ["-march=native"])
_LDFLAGS = ["-fopenmp"]   # torch ships libgomp.so.1 with that soname: one OpenMP runtime

_lock = threading.Lock()
_ext = None
_error: Optional[str] = None
# Calls into the C++ recurrences, by cell: a test checks that training really ran them.
calls = {"gru": 0, "lstm": 0, "rnn": 0, "multihot": 0, "conv": 0, "dense": 0, "rmsprop": 0}


def _cpu_flags() -> str:
    """The CPU's instruction-set flags (part of the cache key: -march=native off x86-64)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnlab" / "torch_extensions"


def build_key() -> str:
    """Hex digest naming the build directory and the module."""
    h = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), *(p.read_bytes() for p in _HEADERS), " ".join(_CFLAGS + _LDFLAGS).encode(),
                 torch.__version__.encode(), sys.version.encode(), _cpu_flags().encode(),
                 # the compile command names torch's headers by path: two environments
                 # sharing one build directory recompiled each other's build every time
                 str(Path(torch.__file__).resolve().parent).encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _build():
    import fcntl

    from torch.utils import cpp_extension

    key = build_key()
    build_dir = _cache_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch's own FileBaton (an O_EXCL "lock" file) blocks forever when a build was killed
    # while holding it; an flock dies with its process. Under our flock no other process of
    # ours is building here, so a leftover baton file is stale and can go.
    with open(build_dir / "build.flock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            # Compile a copy kept in the build directory: ninja's build file names its
            # sources by absolute path, so building from each clone's own src/ recompiled
            # (70 s) in every new clone, worktree or test copy that shared this cache.
            sources = build_dir / "src"
            sources.mkdir(exist_ok=True)
            for original in (_SOURCE, *_HEADERS):
                copy, text = sources / original.name, original.read_bytes()
                if not copy.exists() or copy.read_bytes() != text:
                    tmp = copy.with_suffix(".tmp")
                    tmp.write_bytes(text)
                    tmp.replace(copy)
            if not list(build_dir.glob("*.so")):
                log.info("rnnlab.nn.fused: compiling the C++ recurrences into %s (once per "
                         "machine, about a minute)", build_dir)
            # Always the same ninja (the environment's, from the `ninja` package, else the
            # system's): two ninja versions invalidate each other's logs, and every switch
            # recompiled (a minute, 1.7 GB) in the first stage of a `dvc repro`.
            path = os.environ.get("PATH", "")
            os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), path])
            try:
                return cpp_extension.load(
                    name=f"rnnlab_recurrent_{key}", sources=[str(sources / _SOURCE.name)],
                    extra_cflags=list(_CFLAGS), extra_ldflags=list(_LDFLAGS),  # load() appends to them
                    build_directory=str(build_dir), verbose=False)
            finally:
                os.environ["PATH"] = path
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def disabled() -> bool:
    """``RNNLAB_NO_FUSED`` set to anything but empty or 0: the C++ recurrences are off."""
    return os.environ.get("RNNLAB_NO_FUSED", "").strip() not in ("", "0")


def extension():
    """The compiled module, or None (after one warning) when it cannot be built; None,
    with one note, when ``RNNLAB_NO_FUSED`` turns it off."""
    global _ext, _error
    if _ext is not None or _error is not None:
        return _ext
    with _lock:
        if _ext is None and _error is None:
            if disabled():
                _error = "disabled by RNNLAB_NO_FUSED"
                warnings.warn(f"rnnlab: RNNLAB_NO_FUSED={os.environ['RNNLAB_NO_FUSED']} turns "
                              "the C++ recurrences off: training runs the slower Python "
                              "loops; unset it (or set it to 0) to use them",
                              RuntimeWarning, stacklevel=3)
            else:
                try:
                    _ext = _build()
                except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
                    reason = " ".join(str(exc).split()) or type(exc).__name__
                    if len(reason) > 400:   # a build log: its start is the command line
                        reason = reason[:150] + " ... " + reason[-250:]
                    _error = f"{type(exc).__name__}: {reason}"
                    if os.environ.get("RNNLAB_REQUIRE_CPP") == "1":
                        raise RuntimeError(f"rnnlab.nn.fused: the C++ recurrences did not "
                                           f"build and RNNLAB_REQUIRE_CPP=1 requires them: "
                                           f"{_error}") from None
                    warnings.warn(f"rnnlab: the C++ recurrences did not build, so training "
                                  f"runs the slower Python loops ({_error}); install a C++ "
                                  f"compiler (g++) and run ./dev.sh install again",
                                  RuntimeWarning, stacklevel=3)
    return _ext


def available() -> bool:
    """True when the C++ extension is compiled and loaded (builds it on first call)."""
    return extension() is not None


def unavailable_reason() -> Optional[str]:
    extension()
    return _error


def _require():
    ext = extension()
    if ext is None:
        raise RuntimeError(f"rnnlab.nn.fused is unavailable: {_error}")
    return ext


# ---------------------------------------------------------------- instruction sets
_isa: Optional[str] = None


def supported_isas() -> list[str]:
    """The instruction sets whose kernels this CPU runs, best first (``avx512``, ``avx2``,
    ``portable``)."""
    return list(_require().supported_isas())


def isa() -> str:
    """The instruction set the kernels run with: ``RNNLAB_CPU_ISA`` when set, else the
    CPU's best."""
    global _isa
    if _isa is None:
        wanted = os.environ.get("RNNLAB_CPU_ISA", "").strip()
        if wanted:
            set_isa(wanted)
        else:
            _isa = supported_isas()[0]
    return _isa  # type: ignore[return-value]


def set_isa(name: str) -> None:
    """Runs the kernels with another instruction set (tests and benchmarks compare them)."""
    global _isa
    try:
        _require().isa_code(name)
    except RuntimeError as exc:
        raise RnnlabError(f"RNNLAB_CPU_ISA={name!r}: {str(exc).splitlines()[0]}") from None
    _isa = name


def _isa_code() -> int:
    return int(_require().isa_code(isa()))


def last_isa() -> str:
    """The instruction set the last kernel call ran with ('' before any)."""
    code = int(_require().last_isa())
    return supported_isas()[::-1][code] if code >= 0 else ""


# ---------------------------------------------------------------- feature-major autograd
# gi (G*H, T, Bp), out (H, T, Bp) or (H, Bp), mask (H, Bp); Bp a multiple of BATCH_MULTIPLE.
BATCH_MULTIPLE = 16


def padded(batch: int) -> int:
    """The batch size the kernels run: ``batch`` rounded up to a multiple of 16."""
    return -(-batch // BATCH_MULTIPLE) * BATCH_MULTIPLE


def pad_lanes(t: Tensor) -> Tensor:
    """t with its last axis (the batch) zero-padded to ``padded``'s size (t itself when it
    is already a multiple of 16)."""
    pad = padded(t.size(-1)) - t.size(-1)
    return torch.nn.functional.pad(t, (0, pad)) if pad else t


def _last(out: Tensor, return_sequences: bool) -> Tensor:
    return out if return_sequences else out[:, -1].contiguous()


class LayerInput(NamedTuple):
    """A layer's input x (I, T, Bp) with its projection: the kernels project each step."""
    x: Tensor
    w_ih: Tensor
    b_ih: Optional[Tensor]


# gi, or (table, order, steps), or a LayerInput
Source = Union[Tensor, tuple[Tensor, Tensor, int], LayerInput]


def _source(gi: Source) -> tuple:
    """A forward's step inputs as the C++ forwards take them (src, order, steps, w_ih, b_ih):
    gi (G, T, Bp) alone; or a projected table (V, G), the token order and the steps (the
    table route: the kernels gather each step's rows themselves); or x (I, T, Bp), w_ih and
    b_ih (the kernels compute each step's projections, the bits of ``product``'s)."""
    if isinstance(gi, LayerInput):
        return gi.x, None, 0, gi.w_ih, gi.b_ih
    if isinstance(gi, Tensor):
        return gi, None, 0, None, None
    return (*gi, None, None)


def _train_forward(cell: str, gi: Source, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
                   relu: bool, seq: bool, code: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Every h (H, T, Bp) and what the backward needs (the block-major saved gates)."""
    ext, (src, *where) = _require(), _source(gi)
    if cell == "gru":
        out, gates = ext.gru_forward(src, w_hh, b_hh, mask, relu, True, seq, code, *where)
        return out, (gates,)
    if cell == "lstm":
        out, gates, cells = ext.lstm_forward(src, w_hh, b_hh, mask, True, seq, code, *where)
        return out, (gates, cells)
    (out,) = ext.rnn_forward(src, w_hh, b_hh, mask, relu, True, seq, code, *where)
    return out, ()


def _infer(cell: str, gi: Source, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
           relu: bool, seq: bool, code: int) -> Tensor:
    ext, (src, *where) = _require(), _source(gi)
    if cell == "gru":
        return ext.gru_forward(src, w_hh, b_hh, mask, relu, False, seq, code, *where)[0]
    if cell == "lstm":
        return ext.lstm_forward(src, w_hh, b_hh, mask, False, seq, code, *where)[0]
    return ext.rnn_forward(src, w_hh, b_hh, mask, relu, False, seq, code, *where)[0]


def _train_backward(ctx, grad: Tensor, w_hh: Tensor, mask: Optional[Tensor], out: Tensor,
                    store: tuple[Tensor, ...], x: Optional[Tensor] = None,
                    w_ih: Optional[Tensor] = None, need_dx: bool = False) -> list[Tensor]:
    """[dgi block-major (blocks, T, G*H, lanes), dw_hh, db_hh]; or, given the layer's input
    x and w_ih, the input side's gradients from the same loop: [dx (an empty tensor unless
    need_dx), dw_ih, db_ih, dw_hh, db_hh]."""
    ext, seq, code = _require(), ctx.return_sequences, ctx.isa
    side = (x, w_ih, need_dx)
    if ctx.cell == "gru":
        return ext.gru_backward(grad, w_hh, mask, out, *store, ctx.relu, seq, code, *side)
    if ctx.cell == "lstm":
        return ext.lstm_backward(grad, w_hh, mask, out, *store, seq, code, *side)
    return ext.rnn_backward(grad, w_hh, mask, out, ctx.relu, seq, code, *side)


def _features(dgi: Tensor) -> Tensor:
    """A block-major (blocks, T, G, lanes) gradient in the feature-major (G, T, Bp) layout."""
    blocks, steps, gates, lanes = dgi.shape
    return dgi.permute(2, 1, 0, 3).reshape(gates, steps, blocks * lanes)


def _note(ctx, cell: str, relu: bool, return_sequences: bool) -> None:
    ctx.isa, ctx.cell = _isa_code(), cell
    ctx.relu, ctx.return_sequences = bool(relu), bool(return_sequences)


def product(w: Tensor, x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """w (M, K) @ x (K, N) + bias (M): the same bits for any thread count (a GEMM library's
    product is not: MKL's split a (6 x 8) @ (8 x 320) product differently on one thread and
    two on an AVX2 machine, and the training engine's thread tuner changes the count)."""
    return _require().product(w, x, bias, _isa_code())


def rows_project(x: Tensor, w: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x (R, K) @ w (M, K)^T + bias (M) for a row-major x, row-major out: ``product``'s bits
    (``product(w, x.t(), bias).t()``) with no transposed copy of x or of the result (tiles
    of rows transposed in registers)."""
    return _require().rows_project(x, w, bias, _isa_code())


def rows_project_grad(g: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """The weight and bias gradients of ``rows_project``: g (R, M)^T @ x (R, K) and g's
    column sums, in x's dtype, the rows summed in fixed parts in a fixed order (the same bits
    for any thread count)."""
    dw, db = _require().rows_project_grad(g, x, _isa_code())
    return dw, db


class _Recurrence(torch.autograd.Function):
    """The time loop over given input projections gi (G*H, T, Bp)."""

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, mask, cell, relu, return_sequences):
        _note(ctx, cell, relu, return_sequences)
        out, store = _train_forward(cell, gi, w_hh, b_hh, mask, ctx.relu, ctx.return_sequences,
                                    ctx.isa)
        ctx.save_for_backward(w_hh, mask, out, *store)
        return _last(out, return_sequences)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        w_hh, mask, out, *store = ctx.saved_tensors
        dgi, dw, db = _train_backward(ctx, grad_out, w_hh, mask, out, tuple(store))
        return _features(dgi), dw, db, None, None, None, None


class _TableRecurrence(torch.autograd.Function):
    """The time loop over the rows of a projected embedding table P (V, G*H) in token
    order: step t of sequence b reads P[order[t * Bp + b]], gathered by the forward kernel
    itself as the step begins (tiles of rows transposed in registers), so no (G*H, T, Bp)
    tensor of gathered rows is written and read back. The backward adds each token's dgi
    into its row of dP in C++, straight from the loop's block-major dgi, in a fixed
    order."""

    @staticmethod
    def forward(ctx, table, order, steps, w_hh, b_hh, mask, cell, relu, return_sequences):
        _note(ctx, cell, relu, return_sequences)
        out, store = _train_forward(cell, (table, order, steps), w_hh, b_hh, mask, ctx.relu,
                                    ctx.return_sequences, ctx.isa)
        ctx.save_for_backward(order, w_hh, mask, out, *store)
        ctx.rows = table.size(0)
        return _last(out, return_sequences)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        order, w_hh, mask, out, *store = ctx.saved_tensors
        dgi, dw, db = _train_backward(ctx, grad_out, w_hh, mask, out, tuple(store))
        dtable = _require().table_grad(dgi, order, ctx.rows, ctx.isa)
        return dtable, None, None, dw, db, None, None, None, None


def table_recurrence(cell: str, table: Tensor, order: Tensor, steps: int, w_hh: Tensor,
                     b_hh: Tensor, mask: Optional[Tensor], relu: bool,
                     return_sequences: bool) -> Tensor:
    """``recurrence`` over a projected embedding table (V, G*H) read in token order
    (``order``: T * Bp ids, time-major)."""
    calls[cell] += 1
    if not _wants_grad(table, w_hh, b_hh):
        return _infer(cell, (table, order, steps), w_hh, b_hh, mask, bool(relu),
                      bool(return_sequences), _isa_code())
    return _TableRecurrence.apply(table, order, steps, w_hh, b_hh, mask, cell, relu,
                                  return_sequences)


class _Layer(torch.autograd.Function):
    """A whole layer from its input x (I, T, Bp): the time loop, each step's input projection
    computed as the step begins, and in the backward loop the input side's gradients too
    (dx step by step; dW_ih and db_ih as one product per 16 steps, summed in a fixed order
    for any thread count): no (G*H, T, Bp) tensor of projections or of their gradients
    between two passes."""

    @staticmethod
    def forward(ctx, x, w_ih, b_ih, w_hh, b_hh, mask, cell, relu, return_sequences):
        _note(ctx, cell, relu, return_sequences)
        out, store = _train_forward(cell, LayerInput(x, w_ih, b_ih), w_hh, b_hh, mask,
                                    ctx.relu, ctx.return_sequences, ctx.isa)
        ctx.save_for_backward(x, w_ih, w_hh, mask, out, *store)
        return _last(out, return_sequences)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w_ih, w_hh, mask, out, *store = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dw_ih, db_ih, dw_hh, db_hh = _train_backward(ctx, grad_out, w_hh, mask, out,
                                                         tuple(store), x, w_ih, need_dx)
        return (dx if need_dx else None, dw_ih, db_ih, dw_hh, db_hh, None, None, None, None)


def _wants_grad(*tensors: Tensor) -> bool:
    """Whether autograd will need this recurrence's backward (else: the inference kernels,
    which keep no per-step states or gates)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def recurrence(cell: str, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
               relu: bool, return_sequences: bool) -> Tensor:
    """The time loop of one layer in the kernels' own layout: gi (G*H, T, Bp) ->
    out (H, T, Bp) when ``return_sequences``, else the last h (H, Bp); mask (H, Bp)."""
    calls[cell] += 1
    if not _wants_grad(gi, w_hh, b_hh):
        return _infer(cell, gi, w_hh, b_hh, mask, bool(relu), bool(return_sequences),
                      _isa_code())
    return _Recurrence.apply(gi, w_hh, b_hh, mask, cell, relu, return_sequences)


def layer(cell: str, x: Tensor, w_ih: Tensor, b_ih: Tensor, w_hh: Tensor, b_hh: Tensor,
          mask: Optional[Tensor], relu: bool, return_sequences: bool) -> Tensor:
    """One layer from its input x (I, T, Bp): ``recurrence`` of ``w_ih @ x + b_ih``."""
    calls[cell] += 1
    if not _wants_grad(x, w_ih, b_ih, w_hh, b_hh):
        return _infer(cell, LayerInput(x, w_ih, b_ih), w_hh, b_hh, mask, bool(relu),
                      bool(return_sequences), _isa_code())
    return _Layer.apply(x, w_ih, b_ih, w_hh, b_hh, mask, cell, relu, return_sequences)


class _ConvReluPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], pool: int) -> Tensor:
        ctx.isa, ctx.pool, ctx.has_bias = _isa_code(), pool, bias is not None
        out, idx = _require().conv_forward(x, weight, bias, pool, ctx.isa)
        ctx.save_for_backward(x, weight, idx)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight, idx = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[0]
        dx, dw, db = _require().conv_backward(grad, idx, x, weight, ctx.pool, need_dx, ctx.isa)
        return dx if need_dx else None, dw, db if ctx.has_bias else None, None


def conv_relu_pool(x: Tensor, weight: Tensor, bias: Optional[Tensor], pool: int) -> Tensor:
    """``max_pool1d(relu(conv1d(x, weight, bias)), pool)`` (``pool`` 1: the ReLU alone) in
    the kernels' layout, x (F, T, Bp) -> (C, (T - K + 1) // pool, Bp), forward and
    backward, with the batch across the SIMD lanes as in the recurrences (conv_gru's front:
    its output is the GRU's input without a transposing copy). Each output and weight
    gradient is summed in one order: the same bits on any thread count, not oneDNN's."""
    calls["conv"] += 1
    if not _wants_grad(x, weight, *(() if bias is None else (bias,))):
        return _require().conv_forward(x, weight, bias, pool, _isa_code())[0]
    return _ConvReluPool.apply(x, weight, bias, pool)


class _MultiHotLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.isa, ctx.vocab = _isa_code(), weight.size(1)
        out, words, counts = _require().multihot_linear_forward(ids, weight, bias, ctx.isa)
        ctx.save_for_backward(words, counts)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        words, counts = ctx.saved_tensors
        dw, db = _require().multihot_linear_backward(grad, words, counts, ctx.vocab, ctx.isa)
        return None, dw, db if ctx.has_bias else None


def multihot_linear(ids: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``linear(multi_hot(ids), weight, bias)`` for word ids (B, L) (0: padding) and weight
    (U, V), forward and backward, without the (B, V) 0/1 matrix: each row sums the weight
    columns of its distinct words (imdb_dense's first layer: its step went from 1.2 to 0.6
    ms, bench_ab). The bits do not depend on the thread
    count; they differ from the dense product's in the last places (another sum order)."""
    calls["multihot"] += 1
    if not _wants_grad(weight, *(() if bias is None else (bias,))):
        return _require().multihot_linear_forward(ids, weight, bias, _isa_code())[0]
    return _MultiHotLinear.apply(ids, weight, bias)


class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.isa, ctx.has_bias = _isa_code(), bias is not None
        ctx.save_for_backward(x, weight)
        return _require().dense_forward(x, weight, bias, ctx.isa)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        dx = grad.mm(weight) if ctx.needs_input_grad[0] else None
        dw = db = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = _require().dense_backward(grad, x, ctx.isa)
        return dx, dw, db if ctx.has_bias else None


def dense(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``linear(x, weight, bias)`` for x (R, K) and weight (N, K) on CPU tensors, forward
    and the weight's and bias's gradients in C++ (x's, where it needs one, is torch's
    product): a tile of rows by whole vectors of outputs in registers, each output summed
    over k in order on one thread, so the bits do not depend on the thread count. For the
    lecture's dense model, (128 x 3,360) by (3,360 x 32), where MKL runs this CPU's AVX2
    code. ``rows_project`` and ``rows_project_grad`` compute the same functions with the
    rows across the lanes, for many rows of few inputs (the recurrences' projections); at
    this shape they took 249 and 757 us where these take 100 and 66 (``python -m
    timeit``, two threads)."""
    calls["dense"] += 1
    if not _wants_grad(x, weight, *(() if bias is None else (bias,))):
        return _require().dense_forward(x, weight, bias, _isa_code())
    return _Dense.apply(x, weight, bias)


# ---------------------------------------------------------------- time-major entry points
def _time_major(cell: str, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask_h: Optional[Tensor],
                relu: bool, return_sequences: bool) -> Tensor:
    batch = gi.size(1)
    g = pad_lanes(gi.permute(2, 0, 1)).contiguous()
    mask = None if mask_h is None else \
        torch.nn.functional.pad(mask_h.t(), (0, g.size(-1) - batch)).contiguous()
    out = recurrence(cell, g, w_hh, b_hh, mask, relu, return_sequences)[..., :batch]
    if return_sequences:
        return out.permute(1, 2, 0)                                   # (T, B, H)
    return out.t()                                                    # (B, H)


def gru_recurrence(gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask_h: Optional[Tensor],
                   relu: bool, return_sequences: bool) -> Tensor:
    """GRU (r, z, n; reset after). gi (T, B, 3H), w_hh (3H, H), b_hh (3H,), mask_h (B, H)
    -> h_T (B, H) or every h (T, B, H)."""
    return _time_major("gru", gi, w_hh, b_hh, mask_h, relu, return_sequences)


def lstm_recurrence(gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask_h: Optional[Tensor],
                    return_sequences: bool) -> Tensor:
    """LSTM (i, f, g, o), zero initial h and c. gi (T, B, 4H), w_hh (4H, H), b_hh (4H,)."""
    return _time_major("lstm", gi, w_hh, b_hh, mask_h, False, return_sequences)


def rnn_recurrence(gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask_h: Optional[Tensor],
                   relu: bool, return_sequences: bool) -> Tensor:
    """Elman RNN h' = act(gi + W_hh h + b_hh). gi (T, B, H), w_hh (H, H), b_hh (H,)."""
    return _time_major("rnn", gi, w_hh, b_hh, mask_h, relu, return_sequences)


def rmsprop_update(params: list[Tensor], grads: list[Tensor], avgs: list[Tensor], alpha: float,
                   eps: float, lr: float, keras3: bool) -> None:
    """RMSprop's update in place, one pass over each parameter (engine.RMSprop on CPU
    tensors): avgs = alpha avgs + (1 - alpha) g^2, params -= lr g / (sqrt(avgs) + eps)
    (``keras3``: / sqrt(avgs + eps)). Each operation is the IEEE one in float order, so the
    bits are numpy's for the same operations on every instruction set and thread count
    (torch's own sqrt on CPUs is an approximation off by one unit in the last place for
    about a fifth of inputs). Every tensor: contiguous, on the CPU, of its parameter's
    shape and dtype."""
    _require()
    calls["rmsprop"] += 1
    extension().rmsprop_update(params, grads, avgs, alpha, eps, lr, keras3, _isa_code())
