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
``available=(torch.cuda.mem_get_info(device)[0], f"free on {device}")``.

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
from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import FEATURES, JenaParams
from rnnlab.data.windows import load_spec, variant_spec
from rnnlab.nn.schema import ModelSpec
from rnnlab.training.params import TrainParams

__all__ = ["Estimate", "ModelNumbers", "Part", "available_bytes", "check_fits",
           "estimate_bytes", "estimate_training", "imdb_array_bytes", "jena_array_bytes", "model_numbers"]

FLOAT = 4                      # float32: weights, activations, windows
INDEX = 8                      # int64: row indices, word ids once loaded
GATES = {"gru": 3, "lstm": 4, "rnn": 1}
# A limit this large (cgroup v1 writes 2^63 rounded to a page for "none") is no limit.
NO_LIMIT = 1 << 60


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
      pass.
    - training batch: (B, T, features) of ``input_itemsize`` plus the (B, T) int64 index a
      window batch is gathered with (an IMDB batch is gathered by rows: over by its ids).
    - activations: per layer ``(3 max(gates, 1) + 1) x width x steps x B`` float32: a
      recurrent layer keeps its input projection (G x width per step), the gates and
      states of every step, and its backward pass allocates their gradients (measured
      9.2-9.8 for a GRU, 12.7 for an LSTM: 3G + 1 = 10 and 13); a dense layer, 4 (its
      output, the ReLU's, their gradients).
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
        order_rows, copies = train_examples, 1
    else:
        b = batch
        order_rows = -(-steps_per_epoch * batch // max(train_examples, 1)) * train_examples
        copies = 2
    e = min(eval_batch, eval_examples)
    dtype = {4: "float32", 8: "int64", 2: "float16", 1: "uint8"}.get(input_itemsize,
                                                                     f"{input_itemsize}-byte")
    width = sum(w * s * (3 * max(g, 1) + 1) for w, g, s in layers)
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


def _layers(layers: Sequence[tuple[int, int, int]], *, train: bool) -> str:
    """``32 units x 240 steps x 10`` per layer, joined by ``+``."""
    return " + ".join(f"{w:,} units x {s:,} steps x {3 * max(g, 1) + 1 if train else max(g, 1) + 1}"
                      for w, g, s in layers) or "none"


def jena_array_bytes(*, n_rows: int, features: int, windows: int) -> int:
    """What a JenaTask holds: the (n_rows, features) float32 matrix, the target column of
    each of its three splits (n_rows float32 each) and every split's target rows (int64)."""
    return n_rows * features * FLOAT + 3 * n_rows * FLOAT + windows * INDEX


def imdb_array_bytes(*, reviews: int, maxlen: int, largest_split: int) -> int:
    """What an ImdbTask holds: every split's (n, maxlen) word ids as int64 and its labels,
    plus the int32 file of the largest split while it is converted."""
    return reviews * (maxlen * INDEX + FLOAT) + largest_split * maxlen * 4


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _meminfo(proc: Path) -> dict[str, int]:
    """/proc/meminfo as bytes per field."""
    fields = {}
    for line in (_read(proc / "meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        number = rest.split()
        if number and number[0].isdigit():
            fields[name] = int(number[0]) * (1024 if rest.strip().endswith("kB") else 1)
    return fields


def _stat_value(text: str | None, name: str) -> int:
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_room(proc: Path) -> list[tuple[int, str]]:
    """(bytes left, the cgroup folder) for each memory limit over this process: cgroup v2
    (``memory.max`` of its cgroup and every parent) and v1 (``memory.limit_in_bytes``).
    Left = limit - usage + inactive file cache (the kernel reclaims that before it kills)."""
    found: list[tuple[int, str]] = []
    mounts = []                                  # (root inside the hierarchy, mount point, v2?)
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        if kind[0] == "cgroup2":
            mounts.append((fields[3], fields[4], True))
        elif kind[0] == "cgroup" and "memory" in kind[2].split(","):
            mounts.append((fields[3], fields[4], False))
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        v2 = parts[0] == "0" and parts[1] == ""
        if not v2 and "memory" not in parts[1].split(","):
            continue
        for root, point, is_v2 in mounts:
            if is_v2 != v2 or not (parts[2] + "/").startswith(root.rstrip("/") + "/"):
                continue
            rel = parts[2][len(root.rstrip("/")):].strip("/")
            folder = Path(point, rel) if rel else Path(point)
            while True:                          # v2: every parent's limit applies too
                if v2:
                    limit, usage = _read(folder / "memory.max"), _read(folder / "memory.current")
                    cache = _stat_value(_read(folder / "memory.stat"), "inactive_file")
                else:
                    limit = _read(folder / "memory.limit_in_bytes")
                    usage = _read(folder / "memory.usage_in_bytes")
                    stat = _read(folder / "memory.stat")
                    cache = _stat_value(stat, "total_inactive_file")
                    hierarchical = _stat_value(stat, "hierarchical_memory_limit")
                    if hierarchical and (not limit or not limit.strip().isdigit()
                                         or hierarchical < int(limit)):
                        limit = str(hierarchical)
                if limit and usage and limit.strip().isdigit() and usage.strip().isdigit() \
                        and int(limit) < NO_LIMIT:
                    found.append((max(int(limit) - int(usage) + cache, 0),
                                  f"the memory limit of cgroup {folder}"))
                if not v2 or folder == Path(point):
                    break
                folder = folder.parent
            break
    return found


def available_bytes(proc: Path = Path("/proc")) -> tuple[int, str]:
    """What this process may still allocate, and where the figure comes from: the least of
    ``MemAvailable`` (/proc/meminfo) and the room under each cgroup memory limit over it."""
    info = _meminfo(proc)
    room = [(info["MemAvailable"], "available (MemAvailable)")] if "MemAvailable" in info \
        else [(info["MemFree"], "free (MemFree)")] if "MemFree" in info else []
    room += [(left, f"available under {where}") for left, where in _cgroup_room(proc)]
    if not room:
        raise RnnlabError(f"cannot tell how much memory this machine has: no {proc}/meminfo")
    return min(room)


def gigabytes(n: int) -> str:
    """``41.2 GB`` (``MB`` below 0.1 GB, ``TB`` from 1000 GB)."""
    if n >= 1e12:
        return f"{n / 1e12:,.1f} TB"
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


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
        window = variant_spec(load_spec(windows), spec.lookback, spec.step)
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
        arrays = imdb_array_bytes(reviews=sum(counts.values()), maxlen=timesteps,
                                  largest_split=max(counts.values()))
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
