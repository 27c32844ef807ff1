"""The lecture's first topic, measured: vanishing and exploding gradients, and clipping.

Vanishing. For a cell (simple tanh RNN, GRU, LSTM) and a loss on the last state, the
gradient reaching the state ``h_t`` is ``dL/dh_t = dL/dh_T * prod_{k>t} dh_k/dh_{k-1}``.
We unroll the cell step by step, keep every ``h_t`` and read ``h_t.grad``: the norm
``||dL/dh_t||`` as a function of the distance ``T - 1 - t`` from the output shows how much
of the training signal reaches old inputs. Gated cells keep an additive path (the update
gate's ``z * h``, the LSTM's cell state) along which it survives.

Exploding. A simple relu RNN whose recurrent matrix is ``scale * I`` (scale > 1) multiplies
the gradient reaching a state ``d`` steps back by ``scale^d`` (on the units the relu lets
through): over 20 steps at scale 1.4, about 800 times. Trained with plain SGD, the first
step along that gradient throws the weights so far that the next loss is not finite;
clipping the global norm bounds every update and training goes on, the loss falling.
The identity (rather than a random orthogonal matrix of the same spectral radius) makes
the amplification a fixed number: a random one leaves it to chance, a few units at a time,
whether a given seed and data set explode, vanish or overflow at the first step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

CELLS = ("rnn", "gru", "lstm")


class CellRegressor(nn.Module):
    """One recurrent layer + Dense 1 on the last state, for rnn | gru | lstm."""

    def __init__(self, cell: str, n_features: int, hidden: int, nonlinearity: str = "tanh"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {CELLS}")
        self.cell = cell
        self.rnn: nn.RNNBase
        if cell == "rnn":
            self.rnn = nn.RNN(n_features, hidden, batch_first=True, nonlinearity=nonlinearity)
        elif cell == "gru":
            self.rnn = nn.GRU(n_features, hidden, batch_first=True)
        else:
            self.rnn = nn.LSTM(n_features, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:                    # (B, T, F) -> (B,)
        _, state = self.rnn(x)
        h_n = state[0] if isinstance(state, tuple) else state   # (1, B, H)
        return self.out(h_n[-1]).squeeze(-1)

    def unrolled(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The same computation one step at a time, returning every state h_t (B, H)."""
        rnn = self.rnn
        kind = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}[self.cell]
        extra = {"nonlinearity": rnn.nonlinearity} if self.cell == "rnn" else {}
        cell = kind(rnn.input_size, rnn.hidden_size, **extra).to(x.device, x.dtype)
        cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
        h = x.new_zeros(x.size(0), rnn.hidden_size)
        c = x.new_zeros(x.size(0), rnn.hidden_size)
        states = []
        for t in range(x.size(1)):
            if self.cell == "lstm":
                h, c = cell(x[:, t], (h, c))
            else:
                h = cell(x[:, t], h)
            h.retain_grad()
            states.append(h)
        return self.out(h).squeeze(-1), states


def _grad(t: Tensor) -> Tensor:
    """``t.grad``, which the backward pass just filled."""
    assert t.grad is not None
    return t.grad


def state_gradient_norms(model: CellRegressor, batches: list[tuple[Tensor, Tensor]]) -> np.ndarray:
    """Mean over samples and batches of ||dL/dh_t||, indexed by distance from the output.

    Returns (T,) with entry d = the norm at time step T - 1 - d (d = 0: the last state).
    Computed in float64 on a copy of the model: a simple RNN's gradient 100 steps back is
    far below float32's smallest number (~1e-45) and would read as exactly 0.
    """
    model = copy.deepcopy(model).double().eval()
    totals = None
    for x, y in batches:
        pred, states = model.unrolled(x.double())
        y = y.double()
        loss = torch.nn.functional.l1_loss(pred, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        norms = torch.stack([_grad(h).norm(dim=1).mean() for h in states]).detach()  # (T,)
        totals = norms if totals is None else totals + norms
    assert totals is not None   # batches is not empty
    return (totals / len(batches)).flip(0).double().numpy()


def decay_ratio(norms: np.ndarray, distance: int) -> float:
    """||dL/dh_{T-1-distance}|| / ||dL/dh_{T-1}||: how much of the signal reaches that far."""
    if distance >= len(norms):
        raise ValueError(f"distance {distance} is beyond the window ({len(norms)} steps)")
    return float(norms[distance] / norms[0])


def train_steps(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], steps: int, *,
                lr: float = 1e-3) -> list[float]:
    """A short training with the lecture's optimizer (RMSprop, Keras defaults) and MAE."""
    opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-7)
    model.train()
    losses = []
    for _, (x, y) in zip(range(steps), batches):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@dataclass
class ExplodeTrace:
    clip_norm: float | None
    losses: list[float]              # per step; the last is the first non-finite one if diverged
    grad_norms: list[float]          # global norm before clipping
    clipped_norms: list[float]       # global norm of the update actually applied
    diverged_at: int | None          # first step (1-based) with a non-finite loss or gradient


def scale_recurrent_weights(model: CellRegressor, scale: float) -> None:
    """W_hh <- scale * I: every unit feeds itself ``scale`` times its state (spectral radius
    ``scale``), so a gradient passing back d steps through live relu units grows scale^d."""
    with torch.no_grad():
        w = model.rnn.get_parameter("weight_hh_l0")                    # (H, H)
        w.copy_(scale * torch.eye(w.size(0), dtype=w.dtype))


def explode_run(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], steps: int, *,
                lr: float, clip_norm: float | None, timesteps: int | None = None
                ) -> ExplodeTrace:
    """Plain SGD (no adaptive step size to hide the explosion), with or without clipping,
    on the last ``timesteps`` steps of each window (all of it when None)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    trace = ExplodeTrace(clip_norm, [], [], [], None)
    for step, (x, y) in zip(range(1, steps + 1), batches):
        if timesteps is not None:
            x = x[:, -timesteps:]                                      # (B, timesteps, F)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(model(x), y)
        trace.losses.append(loss.item())
        if not torch.isfinite(loss):
            trace.diverged_at = step
            break
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.norm(torch.stack([_grad(p).norm() for p in params])).item()
        trace.grad_norms.append(norm)
        if not math.isfinite(norm):
            trace.diverged_at = step
            break
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(params, clip_norm)
        clipped = torch.norm(torch.stack([_grad(p).norm() for p in params])).item()
        trace.clipped_norms.append(clipped)
        opt.step()
    return trace
