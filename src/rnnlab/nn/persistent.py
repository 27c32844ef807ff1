"""Persistent recurrences for CUDA, in Triton: one launch per layer for all time steps.

On a GPU a recurrent layer of 32 units does almost no arithmetic per time step (a GRU step
at batch 128 is 0.8 MFLOP); what costs is launching and waiting for a kernel per step.
Here one program owns ``BLOCK_B`` rows of the batch and every hidden unit: it loads the
recurrent weights once into registers, then runs the whole time loop itself, reading each
step's input projection and writing each step's state. Rows of a batch are independent, so
no program ever waits for another and no grid-wide barrier is needed.

Forward (``_gru_fwd``, ``_lstm_fwd``, ``_rnn_fwd``): the input projection of every step
comes in as one product made before the loop (``gi``, time-major (T, B, G*H), bias_ih
included); per step, the state (masked by the recurrent-dropout mask, one per sequence,
as Keras' recurrent_dropout) times each gate's (H, H) block of ``w_hh`` by ``tl.dot`` in
exact float32 (``input_precision="ieee"``: no TF32), then the gate maths and the state
update on the same registers. In training it also keeps what the backward needs: every
state (T, B, H) and the gates (GRU: r, z, n and W_hn h + b_hn; LSTM: i, f, g, o and c).

Backward (``_gru_bwd``, ...): the reverse sweep, one program per slice of rows again,
carrying dh (and the LSTM's dc) in registers; it writes the gradient of each step's gate
pre-activations. The weight gradients are then one product each after the sweep (dW_hh
= dgh^T (h_prev * mask) over all T*B rows; dW_ih and dx by the input projection's own
backward), so the loop itself never reduces across programs.

Cells and options, as ``rnnlab.nn.fused`` (the CPU reference these are tested against,
tests/test_persistent.py): GRU reset-after (tanh or relu), LSTM (i, f, g, o; zero initial
state), Elman RNN (tanh or relu); a recurrent mask or none; the last state or all states.
Reversed input and the backward direction of a bidirectional layer are the model's flip
of the sequence (rnnlab.nn.models.Recurrent).

Triton's interpreter (``TRITON_INTERPRET=1``, set before this module's kernels are first
built, i.e. before the first call) runs the same kernels on CPU tensors with NumPy, so the
CPU-only CI checks their arithmetic; on a GPU they compile for it.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

GATES = {"gru": 3, "lstm": 4, "rnn": 1}
SAVED = {"gru": 4, "lstm": 5, "rnn": 0}    # per-step gate tensors the backward reads, in H
BLOCK_B = 16                               # rows per program: tl.dot's smallest tile
# The most units a layer may have here: its recurrent weights (and the tiles tl.dot reads)
# must stay on chip for all steps. At 64 every kernel compiles for Hopper and Ampere with
# no spill to local memory (8 warps; at 4 ptxas reported 0.7-1.9 KB of spill stores and
# loads in the forward kernels for Hopper, up to 17 KB for Ampere); at 128 the LSTM
# kernels need 264-312 KiB of shared memory (an H100 block has 227 KiB), and a one-off
# compile at 16 warps still spilled in the forward kernels (compile_report;
# tests/test_persistent.py).
MAX_HIDDEN = 64
calls = {"gru": 0, "lstm": 0, "rnn": 0}    # launches by cell: a test checks a path really ran


def available() -> bool:
    """Triton is importable and can run here: on a CUDA tensor, or in its interpreter."""
    return unavailable_reason() is None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"Triton is not installed ({e})"
    if not (torch.cuda.is_available() or interpreting()):
        return "no CUDA device (and TRITON_INTERPRET is not set)"
    return None


@functools.cache
def _kernels() -> dict:
    """The jitted kernels, imported on first use (so TRITON_INTERPRET is read then)."""
    from rnnlab.nn.persistent_kernels import KERNELS
    return KERNELS


def _block_h(hidden: int) -> int:
    """The hidden size padded to a power of two of at least 16 (tl.dot's smallest tile)."""
    return max(16, 1 << (hidden - 1).bit_length())


def _launch_args(hidden: int) -> dict:
    bh = _block_h(hidden)
    # Four warps hold the 32-unit weight tiles in registers; 64 units take eight (with four
    # the forward kernels spill: see MAX_HIDDEN).
    return {"H": hidden, "BH": bh, "BB": BLOCK_B, "num_warps": 4 if bh <= 32 else 8}


def why_too_large(hidden: int) -> Optional[str]:
    """Why a layer of ``hidden`` units cannot take these kernels, or None."""
    if hidden > MAX_HIDDEN:
        return (f"{hidden} units: the persistent recurrences keep a layer's weights on chip "
                f"up to {MAX_HIDDEN} units")
    return None


def forward(cell: str, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
            relu: bool, save: bool, return_sequences: bool) -> tuple[Tensor, Optional[Tensor]]:
    """The forward sweep over gi (D, T, B, G*H) for D directions in one launch: states
    (D, T, B, H) (only h_T, (D, 1, B, H), when neither the sequence nor the backward needs
    them) and the saved gates (or None). w_hh (D, G*H, H), b_hh (D, G*H), mask (D, B, H)."""
    directions, steps, batch, _ = gi.shape
    hidden = w_hh.size(-1)
    keep_all = save or return_sequences
    hs = gi.new_empty(directions, steps if keep_all else 1, batch, hidden)
    saved = gi.new_empty(directions, steps, batch, SAVED[cell] * hidden) \
        if save and SAVED[cell] else hs
    grid = (-(-batch // BLOCK_B), directions)
    _kernels()[cell][0][grid](gi, w_hh, b_hh, mask if mask is not None else hs, hs, saved,
                              batch, steps, RELU=relu, HAS_MASK=mask is not None, SAVE=save,
                              SEQ=return_sequences, **_launch_args(hidden))
    calls[cell] += 1
    return hs, (saved if save and SAVED[cell] else None)


def backward(cell: str, grad: Tensor, w_hh: Tensor, mask: Optional[Tensor], hs: Tensor,
             saved: Optional[Tensor], relu: bool, return_sequences: bool
             ) -> tuple[Tensor, Tensor, Tensor]:
    """The reverse sweep of every direction in one launch; returns dgi (D, T, B, G*H),
    dW_hh (D, G*H, H) and db_hh (D, G*H), the weight gradients as one product each over
    all T*B rows after the sweep."""
    directions, steps, batch, hidden = hs.shape
    gates = GATES[cell]
    dg = hs.new_empty(directions, steps, batch, gates * hidden)
    dhn = hs.new_empty(directions, steps, batch, hidden) if cell == "gru" else dg
    grid = (-(-batch // BLOCK_B), directions)
    _kernels()[cell][1][grid](grad.contiguous(), w_hh, mask if mask is not None else hs, hs,
                              saved if saved is not None else hs, dg, dhn, batch, steps,
                              RELU=relu, HAS_MASK=mask is not None, SEQ=return_sequences,
                              **_launch_args(hidden))
    # dgh: the gradient at W_hh h + b_hh; for the GRU's n gate that is r * dn, not dn.
    dgh = torch.cat([dg[..., : 2 * hidden], dhn], -1) if cell == "gru" else dg
    h_in = torch.cat([hs.new_zeros(directions, 1, batch, hidden), hs[:, :-1]], 1)
    if mask is not None:
        h_in = h_in * mask[:, None]
    flat = dgh.reshape(directions, steps * batch, gates * hidden)
    return dg, flat.transpose(1, 2) @ h_in.reshape(directions, steps * batch, hidden), \
        flat.sum(1)


def compile_report(capability: int = 90, hidden: int = 32, steps: int = 240,
                   every_option: bool = False) -> list[dict]:
    """Compiles every kernel ahead of time for a CUDA ``capability`` (90: Hopper, 80:
    Ampere) without a GPU, as Triton would at the first call on one, and reads ptxas'
    resource report: one dict per kernel and mask option with ``registers``, ``spills``
    (bytes spilled to local memory: 0 means the weights and states stay on chip) and
    ``shared`` (bytes). The other options are training's (tanh, every state kept, the
    gates saved) unless ``every_option``: then every combination of relu, the last state
    or all, and saved gates or not (evaluation), one dict each with its ``options``
    (several times slower). Needs Triton's bundled ptxas; no CUDA device or driver. Runs
    in a child process without ``TRITON_INTERPRET`` (in the interpreter there is nothing
    to compile)."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from rnnlab.nn.persistent import _compile_here; "
            f"print(json.dumps(_compile_here({capability}, {hidden}, {steps}, "
            f"{every_option})))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compile_here(capability: int, hidden: int, steps: int,
                  every_option: bool = False) -> list[dict]:
    import itertools
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from rnnlab.nn.persistent_kernels import KERNELS
    arch = f"sm_{capability}a" if capability >= 90 else f"sm_{capability}"
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    args = _launch_args(hidden)
    report = []
    choices = (False, True) if every_option else None
    for cell, pair in KERNELS.items():
        for kernel in pair:
            options = itertools.product(
                (False, True), choices or (False,), choices or (True,),
                choices if choices and "SAVE" in kernel.arg_names else (True,))
            for masked, relu, seq, save in options:
                if relu and cell == "lstm":
                    continue                      # an LSTM is tanh only
                consts = {"T": steps, "H": hidden, "BH": args["BH"], "BB": args["BB"],
                          "RELU": relu, "HAS_MASK": masked, "SEQ": seq}
                if "SAVE" in kernel.arg_names:
                    consts["SAVE"] = save
                signature = {name: "*fp32" if name.endswith("_ptr") else
                             "i32" if name == "B" else "constexpr" for name in kernel.arg_names}
                compiled = triton.compile(
                    ASTSource(fn=kernel, signature=signature, constexprs=consts),
                    target=GPUTarget("cuda", capability, 32),
                    options={"num_warps": args["num_warps"]})
                with tempfile.TemporaryDirectory() as tmp:
                    ptx = Path(tmp) / "kernel.ptx"
                    ptx.write_text(compiled.asm["ptx"])
                    info = subprocess.run([str(ptxas), f"-arch={arch}", "-v", str(ptx),
                                           "-o", str(Path(tmp) / "kernel.cubin")],
                                          capture_output=True, text=True, check=True).stderr
                registers = re.search(r"Used (\d+) registers", info)
                spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", info)
                report.append({"kernel": kernel.__name__, "masked": masked,
                               **({"options": {"relu": relu, "seq": seq, "save": save}}
                                  if every_option else {}),
                               "registers": int(registers.group(1)) if registers else None,
                               "spills": sum(int(n) for n in spills),
                               "shared": int(compiled.metadata.shared)})
    return report


class Recurrence(torch.autograd.Function):
    """The persistent time loop over input projections gi (D, T, B, G*H) of D directions
    -> (D, T, B, H) with ``return_sequences``, else h_T (D, B, H); gradients to gi, w_hh
    (D, G*H, H) and b_hh (D, G*H)."""

    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
                cell: str, relu: bool, return_sequences: bool) -> Tensor:
        save = any(ctx.needs_input_grad[:3])
        gi, w_hh, b_hh = gi.contiguous(), w_hh.contiguous(), b_hh.contiguous()
        mask = mask.contiguous() if mask is not None else None
        hs, saved = forward(cell, gi, w_hh, b_hh, mask, relu, save, return_sequences)
        if save:
            ctx.save_for_backward(w_hh, mask, hs, saved)
        ctx.cell, ctx.relu, ctx.return_sequences = cell, relu, return_sequences
        return hs if return_sequences else hs[:, -1]

    @staticmethod
    def backward(ctx, grad: Tensor):
        w_hh, mask, hs, saved = ctx.saved_tensors
        dgi, dw, db = backward(ctx.cell, grad, w_hh, mask, hs, saved, ctx.relu,
                               ctx.return_sequences)
        return dgi, dw, db, None, None, None, None


def recurrence(cell: str, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
               relu: bool = False, return_sequences: bool = False) -> Tensor:
    """One direction: the same contract as ``rnnlab.nn.fused``'s time-major
    ``gru_recurrence``/``lstm_recurrence``/``rnn_recurrence`` (gi (T, B, G*H), w_hh
    (G*H, H), b_hh (G*H,), mask (B, H) -> (T, B, H) or (B, H))."""
    if cell not in GATES:
        raise ValueError(f"cell {cell!r}: choose one of {', '.join(GATES)}")
    return Recurrence.apply(gi[None], w_hh[None], b_hh[None],
                            None if mask is None else mask[None], cell, relu,
                            return_sequences)[0]


def recurrences(cell: str, gi: Tensor, w_hh: Tensor, b_hh: Tensor, mask: Optional[Tensor],
                relu: bool = False, return_sequences: bool = False) -> Tensor:
    """D directions (or any D independent layers of one shape) in one launch: gi
    (D, T, B, G*H), w_hh (D, G*H, H), b_hh (D, G*H), mask (D, B, H) -> (D, T, B, H) or
    (D, B, H). Each direction reads its own gi in its own time order: the caller flips."""
    if cell not in GATES:
        raise ValueError(f"cell {cell!r}: choose one of {', '.join(GATES)}")
    return Recurrence.apply(gi, w_hh, b_hh, mask, cell, relu, return_sequences)
