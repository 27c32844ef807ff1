"""ms per training step: current recurrences vs the fused C++ kernels vs a numba prototype.

Run by hand (seconds per configuration; interleaved rounds, medians):

    PYTHONPATH=src python bench/bench_fused.py [--rounds 9] [--threads 1 2] [--only gru]

A step is forward + backward + RMSprop on a one-layer model (recurrence + Dense(1) head,
MSE loss). GRU(32) at Jena's shape (128, 240, 14): DropoutGRU (TorchScript loops, the
current path), nn.GRU, the C++ fused recurrence, and a numba prototype of the same
algorithm (same blocking, same saved gates, dW summed per block); LSTM(32) and
SimpleRNN(32) at the IMDB shape (128, 500, 32): nn.LSTM / nn.RNN vs the C++ kernels.
The numba prototype needs ``pip install numba``; without it those rows are skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnnlab.nn import fused
from rnnlab.nn.recurrent import DropoutGRU

try:
    import numba
    from numba import njit, prange
except ImportError:  # the prototype is optional
    numba = None

N_BLOCKS = 32   # as in recurrent.cpp


# ------------------------------------------------------------------ numba prototype (GRU)
if numba is not None:
    @njit(parallel=True, cache=True, fastmath=False)
    def _nb_gru_forward(gi, wt, b_hh, mask, use_mask, relu, out, gates, n_blocks):
        steps, batch, g3 = gi.shape
        hidden = g3 // 3
        one = np.ones(1, gi.dtype)[0]      # typed constants: float32 stays float32
        zero = one - one
        for blk in prange(n_blocks):
            r0, r1 = batch * blk // n_blocks, batch * (blk + 1) // n_blocks
            gh = np.empty(g3, gi.dtype)
            hin = np.empty(hidden, gi.dtype)
            hp = np.zeros(hidden, gi.dtype)
            for t in range(steps):
                for b in range(r0, r1):
                    for k in range(hidden):
                        hp[k] = out[t - 1, b, k] if t > 0 else zero
                        hin[k] = hp[k] * mask[b, k] if use_mask else hp[k]
                    for j in range(g3):
                        gh[j] = b_hh[j]
                    for k in range(hidden):
                        a = hin[k]
                        for j in range(g3):
                            gh[j] += a * wt[k, j]
                    for j in range(2 * hidden):
                        gates[t, b, j] = one / (one + np.exp(-(gi[t, b, j] + gh[j])))
                    for j in range(hidden):
                        r = gates[t, b, j]
                        hn = gh[2 * hidden + j]
                        pre = gi[t, b, 2 * hidden + j] + r * hn
                        n = max(pre, zero) if relu else np.tanh(pre)
                        gates[t, b, 2 * hidden + j] = n
                        gates[t, b, 3 * hidden + j] = hn
                        out[t, b, j] = n + gates[t, b, hidden + j] * (hp[j] - n)

    @njit(parallel=True, cache=True, fastmath=False)
    def _nb_gru_backward(grad, w, mask, use_mask, out, gates, relu, return_sequences,
                         dgi, dw_part, db_part, n_blocks):
        steps, batch, hidden = out.shape
        g3 = 3 * hidden
        one = np.ones(1, out.dtype)[0]
        zero = one - one
        for blk in prange(n_blocks):
            r0, r1 = batch * blk // n_blocks, batch * (blk + 1) // n_blocks
            dh_all = np.zeros((r1 - r0, hidden), out.dtype)
            dgh = np.empty(g3, out.dtype)
            hin = np.empty(hidden, out.dtype)
            hp = np.zeros(hidden, out.dtype)
            dhin = np.empty(hidden, out.dtype)
            for t in range(steps - 1, -1, -1):
                for b in range(r0, r1):
                    dh = dh_all[b - r0]
                    if return_sequences:
                        for j in range(hidden):
                            dh[j] += grad[t, b, j]
                    elif t == steps - 1:
                        for j in range(hidden):
                            dh[j] = grad[0, b, j]
                    for j in range(hidden):
                        hp[j] = out[t - 1, b, j] if t > 0 else zero
                        r = gates[t, b, j]
                        z = gates[t, b, hidden + j]
                        n = gates[t, b, 2 * hidden + j]
                        hn = gates[t, b, 3 * hidden + j]
                        dn = dh[j] * (one - z)
                        if relu:
                            dpre = dn if n > zero else zero
                        else:
                            dpre = dn * (one - n * n)
                        dr = dpre * hn * r * (one - r)
                        dz = dh[j] * (hp[j] - n) * z * (one - z)
                        dgi[t, b, j] = dr
                        dgi[t, b, hidden + j] = dz
                        dgi[t, b, 2 * hidden + j] = dpre
                        dgh[j] = dr
                        dgh[hidden + j] = dz
                        dgh[2 * hidden + j] = dpre * r
                        hin[j] = hp[j] * mask[b, j] if use_mask else hp[j]
                    for k in range(hidden):
                        dhin[k] = zero
                    for j in range(g3):
                        a = dgh[j]
                        db_part[blk, j] += a
                        for k in range(hidden):
                            dw_part[blk, j, k] += a * hin[k]
                            dhin[k] += a * w[j, k]
                    for j in range(hidden):
                        m = mask[b, j] if use_mask else one
                        dh[j] = dh[j] * gates[t, b, hidden + j] + dhin[j] * m

    class _NumbaGRU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, gi, w_hh, b_hh, mask_h, relu, return_sequences):
            steps, batch, _ = gi.shape
            hidden = w_hh.shape[1]
            gi_ = gi.detach().contiguous()
            out = gi_.new_empty(steps, batch, hidden)
            gates = gi_.new_empty(steps, batch, 4 * hidden)
            use_mask = mask_h is not None
            mask = mask_h if use_mask else gi_.new_ones(1, 1)
            _nb_gru_forward(gi_.numpy(), w_hh.detach().t().contiguous().numpy(),
                            b_hh.detach().numpy(), mask.numpy(), use_mask, relu,
                            out.numpy(), gates.numpy(), min(batch, N_BLOCKS))
            ctx.save_for_backward(w_hh, mask_h, out, gates)
            ctx.relu, ctx.return_sequences = relu, return_sequences
            return out if return_sequences else out[-1].clone()

        @staticmethod
        def backward(ctx, grad_out):
            w_hh, mask_h, out, gates = ctx.saved_tensors
            steps, batch, hidden = out.shape
            n_blocks = min(batch, N_BLOCKS)
            grad = grad_out.contiguous()
            grad = grad if ctx.return_sequences else grad[None]
            dgi = out.new_empty(steps, batch, 3 * hidden)
            dw_part = out.new_zeros(n_blocks, 3 * hidden, hidden)
            db_part = out.new_zeros(n_blocks, 3 * hidden)
            use_mask = mask_h is not None
            mask = mask_h if use_mask else out.new_ones(1, 1)
            _nb_gru_backward(grad.numpy(), w_hh.detach().contiguous().numpy(), mask.numpy(),
                             use_mask, out.numpy(), gates.numpy(), ctx.relu,
                             ctx.return_sequences, dgi.numpy(), dw_part.numpy(),
                             db_part.numpy(), n_blocks)
            return dgi, dw_part.sum(0), db_part.sum(0), None, None, None


# ------------------------------------------------------------------ models
class RecurrenceLayer(nn.Module):
    """nn.GRU/LSTM/RNN parameters, recurrence by `impl`: (B, T, I) -> h_T (B, H)."""

    def __init__(self, cell: str, input_size: int, hidden: int, impl: str):
        super().__init__()
        self.cell, self.impl = cell, impl
        self.rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell](
            input_size, hidden, batch_first=True)

    def forward(self, x):
        r = self.rnn
        if self.impl == "torch":
            out, state = r(x)
            return (state[0] if isinstance(state, tuple) else state)[0]
        gi = F.linear(x.transpose(0, 1), r.weight_ih_l0, r.bias_ih_l0).contiguous()
        w, b = r.weight_hh_l0, r.bias_hh_l0
        if self.impl == "numba":
            return _NumbaGRU.apply(gi, w, b, None, False, False)
        if self.cell == "gru":
            return fused.gru_recurrence(gi, w, b, None, False, False)
        if self.cell == "lstm":
            return fused.lstm_recurrence(gi, w, b, None, False)
        return fused.rnn_recurrence(gi, w, b, None, False, False)


def make_model(cell: str, impl: str, input_size: int, hidden: int) -> nn.Module:
    torch.manual_seed(0)
    if impl == "dropoutgru":
        body = DropoutGRU(input_size, hidden, native=False)   # the TorchScript loops
    else:
        body = RecurrenceLayer(cell, input_size, hidden, impl)
    return nn.Sequential(body, nn.Linear(hidden, 1))


def make_step(model: nn.Module, x, y):
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def bench_config(title, cell, shape, impls, rounds, threads):
    batch, steps, feat = shape
    torch.manual_seed(1)
    x, y = torch.randn(batch, steps, feat), torch.randn(batch)
    print(f"\n{title}: {cell.upper()}(32) at {shape}, {threads} thread(s), "
          f"ms per step, median of {rounds} interleaved rounds "
          f"(load average {os.getloadavg()[0]:.2f} before)")
    torch.set_num_threads(threads)
    if numba is not None:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    steps_fn = {}
    for impl in impls:
        model = make_model(cell, impl, feat, 32)
        steps_fn[impl] = make_step(model, x, y)
        steps_fn[impl]()                                   # warm-up (compiles, allocates)
        steps_fn[impl]()
    times = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            t0 = time.perf_counter()
            steps_fn[impl]()
            times[impl].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times[impls[0]])
    for impl in impls:
        med = statistics.median(times[impl])
        print(f"  {impl:11s} {med:8.2f} ms   (min {min(times[impl]):7.2f}, "
              f"x{base / med:5.2f} vs {impls[0]})")


def check_numba_matches():
    """The prototype must compute what the C++ kernel computes before it is timed."""
    torch.manual_seed(2)
    gi = torch.randn(20, 9, 3 * 8, requires_grad=True)
    w = (torch.randn(3 * 8, 8) * 0.3).requires_grad_()
    b = torch.randn(3 * 8, requires_grad=True)
    mask = torch.bernoulli(torch.full((9, 8), 0.7)) / 0.7
    res = []
    for fn in (fused.gru_recurrence, _NumbaGRU.apply):
        out = fn(gi, w, b, mask, False, True)
        res.append([out, *torch.autograd.grad(out.sin().sum(), [gi, w, b])])
    for a, c in zip(*res):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only", choices=["gru", "lstm", "rnn"], nargs="+",
                    default=["gru", "lstm", "rnn"])
    args = ap.parse_args()
    if not fused.available():
        raise SystemExit(f"fused extension unavailable: {fused.unavailable_reason()}")
    print(f"torch {torch.__version__}, numba {numba.__version__ if numba else 'not installed'}")
    gru_impls = ["dropoutgru", "torch", "cpp"] + (["numba"] if numba is not None else [])
    if numba is not None:
        check_numba_matches()
    for threads in args.threads:
        if "gru" in args.only:
            bench_config("Jena", "gru", (128, 240, 14), gru_impls, args.rounds, threads)
        for cell in ("lstm", "rnn"):
            if cell in args.only:
                bench_config("IMDB", cell, (128, 500, 32), ["torch", "cpp"], args.rounds,
                             threads)


if __name__ == "__main__":
    main()
