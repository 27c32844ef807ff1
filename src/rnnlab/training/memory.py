"""A pre-flight memory estimate of a training run, and a refusal in one line when it cannot fit.

Params that ask for more than the machine has (``units: [100000]``,
``jena.batch_size: 10000000``, ``imdb.maxlen: 1000000000``,
``train.steps_per_epoch: 1000000000``) otherwise end in an allocator's traceback, after
minutes and gigabytes, or in the OOM killer. Here the peak is estimated from plain numbers
before anything is loaded or built, and compared with what the machine has available::

    estimate = estimate_bytes(params=..., layers=..., batch=..., ...)   # an Estimate
    check_fits(estimate, "train@gru", None)       # or one RnnlabError line

``estimate_bytes`` documents each term and its shape; it is an estimate of the process's
growth while it trains (the import of torch and the interpreter not counted), measured
within a factor of 2 of the real peak on the CPU (tests/test_memory.py; GRU and LSTM
layers measured at 9.2-9.8 and 12.7 floats per unit, step and example, against the
3G + 1 = 10 and 13 used below). ``model_numbers`` gives ``params`` and ``layers`` from a
variant's sizes without building the model (a model of ``units: [100000]`` would take its
120 GB while being built).

What the training stage calls (``rnnlab.lecture.experiment.train_variant``, for a torch
model), before ``build_task`` loads any array and before any MLflow run opens:
``check_fits(estimate_training(variant, spec, data, train, prepared, windows),
f"train@{variant}")``; ``estimate_training`` reads only the small JSON files of the
prepared data (the window spec, IMDB's counts).
(``imdb.maxlen`` is the IMDB ``timesteps``; ``features=1``: a review is one id per step.)
On a GPU (``device.type == "cuda"``) the weights, activations and evaluation live in the
GPU's memory and the arrays and the epoch's order in the host's: check
``estimate.on_host()`` with ``check_fits`` as above, and ``estimate.on_device()`` with
``available=(torch.cuda.mem_get_info(device)[0], f"free on {device}")``. (Only the host is
checked by the stages. A GPU evaluates ``engine.eval_join`` batches of
``train.eval_batch_size`` per forward pass, so a device check would pass that many rows
as ``eval_batch``.)

``train.steps_per_epoch: 1000000000`` is a matter of time, not memory, except for one
term: ``rnnlab.data.windows.shuffled_batches`` draws an epoch's whole order up front
(``steps x batch`` int64 indices, 1 TB there), which the estimate counts (``order``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from rnnlab.core.errors import RnnlabError
from rnnlab.core.machine import available_bytes, gigabytes
from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import FEATURES, JenaParams
from rnnlab.data.windows import load_spec, variant_spec
from rnnlab.nn.schema import ModelSpec
from rnnlab.training.params import TrainParams

__all__ = ["Estimate", "ModelNumbers", "Part", "available_bytes", "check_fits",
           "estimate_bytes", "estimate_training", "imdb_array_bytes", "jena_array_bytes", "model_numbers"]

FLOAT = 4                      # float32: weights, activations, windows
INDEX = 8                      # int64: row indices, a batch's word ids
WORD_ID = 4                    # int32: IMDB's word ids as stored and held
GATES = {"gru": 3, "lstm": 4, "rnn": 1}


@dataclass(frozen=True)
class Part:
    """One term of an estimate: what it is (shapes and dtype), its bytes, the arguments of
    ``estimate_bytes`` that scale it with their values, and whether it lives in the host's
    memory when the model trains on a GPU."""
    what: str
    bytes: int
    scales_with: tuple[tuple[str, int], ...]     # (argument, its value), for the fix
    host: bool = False


@dataclass(frozen=True)
class Estimate:
    """The parts of a run's peak; ``bytes`` is their sum. ``keys`` names the params key of
    each argument (``batch`` -> ``jena.batch_size``) for the fix a refusal gives."""
    parts: tuple[Part, ...]
    keys: Mapping[str, str]

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    def __int__(self) -> int:
        return self.bytes

    def largest(self) -> Part:
        return max(self.parts, key=lambda p: p.bytes)

    def on_host(self) -> Estimate:
        return Estimate(tuple(p for p in self.parts if p.host), self.keys)

    def on_device(self) -> Estimate:
        return Estimate(tuple(p for p in self.parts if not p.host), self.keys)

    def fix(self) -> str:
        """``lower <key>, <key> or <key>``: the params keys of the largest part, the one with
        the largest value first (a batch of 10,000,000 before 32 units), or a general hint."""
        scaled = sorted(self.largest().scales_with, key=lambda av: -av[1])
        keys = list(dict.fromkeys(self.keys[a] for a, _ in scaled if a in self.keys))
        if not keys:
            return "lower the sizes named above"
        return "lower " + (keys[0] if len(keys) == 1
                           else ", ".join(keys[:-1]) + " or " + keys[-1])


def estimate_bytes(*, params: int, layers: Sequence[tuple[int, int, int]], batch: int,
                   timesteps: int, features: int, input_itemsize: int = FLOAT,
                   steps_per_epoch: int | None, train_examples: int, eval_batch: int,
                   eval_examples: int, array_bytes: int = 0, optimizer_slots: int = 1,
                   keys: Mapping[str, str] | None = None) -> Estimate:
    """The peak memory of training one model, from plain numbers, as an ``Estimate``.

    Arguments (``B`` the training batch, ``E`` the evaluation batch, ``T`` time steps):

    - ``params``: the model's parameter count (``model_numbers``).
    - ``layers``: one ``(width, gates, steps)`` per layer whose activations the backward
      pass keeps: ``width`` its units times its directions (2 when bidirectional),
      ``gates`` 3 for a GRU, 4 for an LSTM, 1 for a simple RNN and 0 for a layer applied
      once per step or example (dense, convolution, multi-hot), ``steps`` how many time
      steps it runs over (1 for a layer after the flatten).
    - ``batch``, ``timesteps``, ``features``, ``input_itemsize``: one training input is
      (T, features) of ``input_itemsize`` bytes (Jena: (240, 14) float32; IMDB:
      (maxlen, 1) int64 word ids).
    - ``steps_per_epoch`` (None: one pass) and ``train_examples``: the epoch's order; a
      pass (None) takes a short last batch, so B is at most the training examples then.
    - ``eval_batch``, ``eval_examples`` (the larger of val and test): E is at most that.
    - ``array_bytes``: the prepared arrays the task holds (``jena_array_bytes``,
      ``imdb_array_bytes``).
    - ``optimizer_slots``: the optimizer's state per parameter (RMSprop: 1, square_avg).
    - ``keys``: the params key of each argument, for the fix of a refusal.

    The terms (bytes; "host" ones stay in the host's memory when training on a GPU):

    - weights: ``params x 4 x (4 + optimizer_slots)``: the weights, their gradients, the
      optimizer's state, the best epoch's copy (kept for the end) and a checkpoint's
      (a resumed run's state as loaded, while it is copied in).
    - arrays (host): ``array_bytes``, held for the whole run.
    - order (host): the training order of one epoch, drawn up front by
      ``rnnlab.data.windows.shuffled_batches``: with ``steps_per_epoch`` set,
      ``ceil(steps x B / train_examples)`` permutations of the training examples, int64,
      concatenated (the list and its concatenation: twice that); one permutation for a
      pass, and ``rnnlab.data.windows.on_device``'s one-piece copy beside it (twice that
      too).
    - training batch: (B, T, features) of ``input_itemsize`` plus the (B, T) int64 index a
      window batch is gathered with (an IMDB batch is gathered by rows: over by its ids).
    - activations: per recurrent layer ``(gates + 2) x width x steps x B`` float32: its
      gates and states of every step kept for the backward, which allocates the gates'
      gradients (measured 4.3 for a GRU with the C++ lane kernels, the GRU(64) at batch
      512 of tests/test_memory.py, 2026-12-06: G + 2 = 5; 9.2-9.8 with the kernels
      before them, when 3G + 1 was the rule; the LSTM's G + 2 = 6 not remeasured); a dense
      layer, 4 (its output, the ReLU's, their gradients).
    - evaluation (instead of the training step, never beside it): (E, T, features) plus
      its index, per layer ``(max(gates, 1) + 1) x width x steps x E`` float32 (no
      gradients: measured 3.2 for a GRU, 4.2 for an LSTM), and the outputs and targets of
      the split, 2 x 4 bytes per example.

    Peak: weights + arrays + order + the larger of (training batch + activations) and the
    evaluation.
    """
    keys = dict(keys or {})
    if steps_per_epoch is None:
        b = min(batch, train_examples)
        order_rows, copies = train_examples, 2
    else:
        b = batch
        order_rows = -(-steps_per_epoch * batch // max(train_examples, 1)) * train_examples
        copies = 2
    e = min(eval_batch, eval_examples)
    dtype = {4: "float32", 8: "int64", 2: "float16", 1: "uint8"}.get(input_itemsize,
                                                                     f"{input_itemsize}-byte")
    width = sum(w * s * _train_copies(g) for w, g, s in layers)
    eval_width = sum(w * s * (max(g, 1) + 1) for w, g, s in layers)
    units = sum(w for w, _, _ in layers)
    weights = Part(f"the weights ({params:,} parameters x {4 + optimizer_slots} float32 copies)",
                   params * FLOAT * (4 + optimizer_slots), (("params", params),))
    arrays = Part("the prepared arrays", array_bytes, (("arrays", array_bytes),), host=True)
    order = Part(f"the epoch's order ({order_rows:,} int64 row indices"
                 + (f": steps_per_epoch {steps_per_epoch:,} x batch {batch:,}, drawn up front)"
                    if steps_per_epoch is not None else ")"),
                 order_rows * INDEX * copies,
                 (("steps_per_epoch", steps_per_epoch or 0), ("batch", batch)), host=True)
    step = (Part(f"the training batch ({b:,} x {timesteps:,} x {features:,} {dtype})",
                 b * timesteps * (features * input_itemsize + INDEX),
                 (("batch", batch), ("timesteps", timesteps))),
            Part(f"the activations (batch {b:,} x ({_layers(layers, train=True)}) float32)",
                 b * width * FLOAT, (("batch", batch), ("layers", units),
                                     ("timesteps", timesteps))))
    evaluation = (Part(f"the evaluation batch ({e:,} x {timesteps:,} x {features:,} {dtype})",
                       e * timesteps * (features * input_itemsize + INDEX)
                       + eval_examples * 2 * FLOAT,
                       (("eval_batch", eval_batch), ("timesteps", timesteps))),
                  Part(f"the evaluation's activations (batch {e:,} x "
                       f"({_layers(layers, train=False)}) float32)", e * eval_width * FLOAT,
                       (("eval_batch", eval_batch), ("layers", units),
                        ("timesteps", timesteps))))
    phase = step if sum(p.bytes for p in step) >= sum(p.bytes for p in evaluation) else evaluation
    return Estimate((weights, arrays, order, *phase), keys)


def _train_copies(gates: int) -> int:
    """Float32 (width x steps x B) copies a layer holds while training: a recurrent layer
    gates + 2, a dense one (gates 0) 4."""
    return gates + 2 if gates > 0 else 4


def _layers(layers: Sequence[tuple[int, int, int]], *, train: bool) -> str:
    """``32 units x 240 steps x 5`` per layer, joined by ``+``."""
    return " + ".join(f"{w:,} units x {s:,} steps x "
                      f"{_train_copies(g) if train else max(g, 1) + 1}"
                      for w, g, s in layers) or "none"


def jena_array_bytes(*, n_rows: int, features: int, windows: int) -> int:
    """What a JenaTask holds: the (n_rows, features) float32 matrix, the target column of
    each of its three splits (n_rows float32 each) and every split's target rows (int64)."""
    return n_rows * features * FLOAT + 3 * n_rows * FLOAT + windows * INDEX


def imdb_array_bytes(*, reviews: int, maxlen: int) -> int:
    """What an ImdbTask holds: every split's (n, maxlen) word ids as stored (int32) and its
    labels (float32); each batch's int64 copy is part of the training batch."""
    return reviews * (maxlen * WORD_ID + FLOAT)


class ModelNumbers(TypedDict):
    params: int
    layers: list[tuple[int, int, int]]


def model_numbers(spec: ModelSpec, n_inputs: int, timesteps: int) -> ModelNumbers:
    """``params`` and ``layers`` of ``estimate_bytes`` for a torch variant, from its sizes
    alone (as ``rnnlab.nn.models`` builds it; a test compares with the built models).

    ``n_inputs``: features per step (Jena: 14) or the vocabulary (IMDB).
    """
    directions = 2 if spec.bidirectional else 1
    layers: list[tuple[int, int, int]] = []
    params = 0

    def recurrent(size: int, cell: str, steps: int) -> int:
        nonlocal params
        gates = GATES[cell]
        for units in spec.units:
            params += directions * gates * units * (size + units + 2)
            layers.append((directions * units, gates, steps))
            size = directions * units
        return size

    def dense(size: int) -> int:
        nonlocal params
        for units in spec.units:
            params += (size + 1) * units
            layers.append((units, 0, 1))
            size = units
        return size

    if spec.arch == "dense":
        size = dense(n_inputs * timesteps)
    elif spec.arch in ("gru", "lstm"):
        size = recurrent(n_inputs, spec.arch, timesteps)
    elif spec.arch == "conv_gru":
        k, c = spec.conv_kernel, spec.conv_filters
        first = timesteps - k + 1
        steps = max(first // spec.pool_size - k + 1, 1)
        params += c * n_inputs * k + c + c * c * k + c
        layers += [(c, 0, first), (c, 0, steps)]
        size = recurrent(c, "gru", steps)
    elif spec.arch == "multihot_dense":
        layers.append((n_inputs, 0, 1))                 # the (B, vocab) multi-hot input
        size = dense(n_inputs)
    elif spec.arch == "embed_rnn":
        params += n_inputs * spec.embedding_dim
        size = recurrent(spec.embedding_dim, spec.cell, timesteps)
    else:
        raise RnnlabError(f"model_numbers: no estimate for arch {spec.arch!r} (not a torch "
                          "model)")
    return ModelNumbers(params=params + size + 1, layers=layers)    # + the output unit


def check_fits(estimate: Estimate | int, what: str, fix_hint: str | None = None, *,
               available: tuple[int, str] | None = None) -> None:
    """Nothing when ``estimate`` fits ``available`` (default: ``available_bytes()``);
    otherwise one ``RnnlabError`` line: ``what``, the estimate and its largest part, what
    the machine has, and ``fix_hint`` (default: lower the params keys of the largest part,
    ``Estimate.fix``)."""
    need = int(estimate)
    have, source = available if available is not None else available_bytes()
    if need <= have:
        return
    shown = ""
    if isinstance(estimate, Estimate):
        part = estimate.largest()
        shown = f", {gigabytes(part.bytes)} of it for {part.what},"
        fix_hint = fix_hint or estimate.fix()
    raise RnnlabError(f"{what} would need about {gigabytes(need)}{shown} but this machine "
                      f"has {gigabytes(have)} {source}; {fix_hint or 'lower the sizes'}")


def estimate_training(variant: str, spec: ModelSpec, data: JenaParams | ImdbParams,
                      train: TrainParams, prepared: Path, windows: Path) -> Estimate:
    """The estimate of ``train@<variant>`` from its params and the small JSON files of its
    prepared data (the window spec; IMDB's review counts), the params keys to lower named
    per term."""
    import json

    keys: dict[str, str]
    if spec.dataset == "jena":
        window = variant_spec(load_spec(windows), spec.lookback, spec.step, name=variant)
        n_inputs, timesteps, itemsize = len(FEATURES), window.timesteps, FLOAT
        train_examples = window.count("train")
        eval_examples = max(window.count("val"), window.count("test"))
        arrays = jena_array_bytes(n_rows=window.n_rows, features=n_inputs,
                                  windows=sum(window.count(s) for s in ("train", "val", "test")))
        steps = train.steps_per_epoch
        keys = {"batch": "jena.batch_size", "timesteps": "jena.lookback",
                "steps_per_epoch": "train.steps_per_epoch"}
    else:
        sequences = json.loads((Path(windows) / "windows.json").read_text())
        counts = json.loads((Path(prepared) / "stats.json").read_text())["counts"]
        n_inputs, timesteps, itemsize = sequences["vocab_size"], sequences["maxlen"], INDEX
        train_examples = counts["train"]
        eval_examples = max(counts["val"], counts["test"])
        arrays = imdb_array_bytes(reviews=sum(counts.values()), maxlen=timesteps)
        steps = train.imdb_steps_per_epoch
        keys = {"batch": "imdb.batch_size", "timesteps": "imdb.maxlen",
                "arrays": "imdb.maxlen", "steps_per_epoch": "train.imdb_steps_per_epoch"}
    keys |= {"params": f"models.{variant}.units", "layers": f"models.{variant}.units",
             "eval_batch": "train.eval_batch_size"}
    return estimate_bytes(**model_numbers(spec, n_inputs, timesteps), batch=data.batch_size,
                          timesteps=timesteps,
                          features=1 if spec.dataset == "imdb" else n_inputs,
                          input_itemsize=itemsize, steps_per_epoch=steps,
                          train_examples=train_examples, eval_batch=train.eval_batch_size,
                          eval_examples=eval_examples, array_bytes=arrays, keys=keys)
