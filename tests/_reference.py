"""The one reference the recurrences are tested against: a GRU's time loop in plain autograd
(every step recorded), with Keras' masks. Slow on purpose; no library code runs it."""

from __future__ import annotations

import torch
from torch import Tensor


def _gru_steps(gi: Tensor, h: Tensor, w_hh_t: Tensor, b_hh: Tensor, mask_h: Tensor,
               use_mask: bool, relu: bool, return_sequences: bool) -> Tensor:
    # gi: (B, T, 3H) input projections (bias included); h: (B, H); w_hh_t: (H, 3H).
    # unbind/chunk rather than indexing: their backward concatenates once, whereas the
    # backward of gi[:, t] would allocate a zero (B, T, 3H) gradient at every step.
    outputs: list[Tensor] = []
    for g in gi.unbind(1):                                      # (B, 3H) per step
        h_in = h * mask_h if use_mask else h
        gh = torch.addmm(b_hh, h_in, w_hh_t)                    # (B, 3H)
        g_r, g_z, g_n = g.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(g_r + h_r)
        z = torch.sigmoid(g_z + h_z)
        pre = g_n + r * h_n
        n = torch.relu(pre) if relu else torch.tanh(pre)
        h = n + z * (h - n)                                     # (1 - z) * n + z * h
        if return_sequences:
            outputs.append(h)
    if return_sequences:
        return torch.stack(outputs, 1)                          # (B, T, H)
    return h


def reference_gru(layer, x: Tensor, masks: tuple[Tensor | None, Tensor | None]) -> Tensor:
    """What ``layer`` (a GRU ``RecurrentLayer`` in training mode) computes on ``x`` (B, T, I)
    with ``masks``, through ``_gru_steps`` under autograd."""
    mask_x, mask_h = masks
    if mask_x is not None:
        x = x * mask_x[:, None, :]
    gi = torch.nn.functional.linear(x, layer.weight_ih_l0, layer.bias_ih_l0)   # (B, T, 3H)
    h0 = x.new_zeros(x.size(0), layer.hidden_size)
    use_mask = mask_h is not None
    return _gru_steps(gi, h0, layer.weight_hh_l0.t(), layer.bias_hh_l0,
                      mask_h if use_mask else h0, use_mask, layer.activation == "relu",
                      layer.return_sequences)
