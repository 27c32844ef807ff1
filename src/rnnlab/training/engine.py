"""The training engine shared by every variant: RMSprop, best epoch kept, resumable.

``fit`` knows nothing of MLflow or DVC: it reports each epoch to an ``on_epoch``
callback (the stage logs it) and checkpoints after every epoch, so a killed run restarts
from its last completed epoch and ends with the same metrics as an uninterrupted one:
each epoch's batches and dropout masks depend only on ``(seed, epoch)``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rnnlab.core.atomic import atomic_output
from rnnlab.core.errors import RnnlabError
from rnnlab.data.windows import capped_rows
from rnnlab.training.checkpoints import check_checkpoint_path
from rnnlab.training.process import denormals_flushed, keep_freed_buffers
from rnnlab.training.results import FitResult
from rnnlab.training.seeds import seed_everything
from rnnlab.training.threads import FixedThreads, ThreadTuner

__all__ = ["FitResult", "TrainConfig", "TrainingDiverged", "evaluate", "fit", "fit_together",
           "seed_everything", "seeds_together"]

Batch = tuple[Tensor, Tensor]
log = logging.getLogger(__name__)


class TrainingDiverged(RnnlabError):
    """The loss became NaN or infinite."""


class Task(Protocol):
    """What the engine needs of a dataset: batches, a loss, metrics, and what 'best' means."""

    monitor: str          # a key of metrics(), compared on validation
    monitor_mode: str     # "min" or "max"
    eval_batch_size: int  # examples per evaluation batch

    def train_batches(self, epoch: int, steps: int | None, seed: int) -> Iterator[Batch]: ...
    # The first ``max_batches`` batches of eval_batch_size (all: None), ``join`` at a time.
    def eval_batches(self, split: str, max_batches: int | None, join: int = 1
                     ) -> Iterator[Batch]: ...
    def eval_size(self, split: str) -> int: ...          # examples in the split
    def loss(self, output: Tensor, target: Tensor) -> Tensor: ...
    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]: ...


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    steps_per_epoch: int | None
    seed: int
    clip_norm: float | None = None
    max_eval_batches: int | None = None
    # Keras' RMSprop defaults, as the lecture used them.
    lr: float = 1e-3
    rho: float = 0.9
    eps: float = 1e-7
    # "keras2": p -= lr g / (sqrt(v) + eps), the book's Keras 2 (and torch.optim.RMSprop);
    # "keras3": p -= lr g / sqrt(v + eps), TF 2's tf.keras and Keras 3 (bench_fidelity).
    rmsprop: str = "keras2"


class RMSprop:
    """RMSprop, v = rho v + (1 - rho) g^2 per parameter, in either form the lecture's
    Kerases compute: ``keras2``, p -= lr g / (sqrt(v) + eps), the book's Keras 2 and
    ``torch.optim.RMSprop`` (its foreach form bit for bit, tests/test_train.py; the C++
    pass below within an ulp); ``keras3``, p -= lr g / sqrt(v + eps), TF 2's tf.keras and
    Keras 3 (tests/test_keras_parity.py).

    Not a ``torch.optim.Optimizer``: the first use of one imports ``torch._dynamo``, 141 MiB
    of resident memory in every training stage for nothing it does here (measured: 367 ->
    508 MiB after ``import torch, mlflow``), and the IMDB BiLSTM's stage had 29 MiB to
    spare under 1 GB. On a GPU the updates are foreach ops with plain scalars (one launch per
    op for all parameters, and nothing a CUDA graph cannot capture). ``state_dict`` and
    ``load_state_dict`` use torch.optim's layout (``square_avg`` per parameter index), so
    checkpoints written with ``torch.optim.RMSprop`` load.

    On CPU tensors (``fused``: None, when the C++ extension is there; True insists), the
    update is one C++ pass over each parameter (``rnnlab.nn.fused.rmsprop_update``): the
    same operations in the same order with IEEE sqrt, so the bits are those of the
    operations in numpy, the same on every instruction set and thread count. torch's CPU
    sqrt is off by one unit in the last place for about a fifth of inputs, so the foreach
    form (``fused=False``, and every GPU) equals ``torch.optim.RMSprop`` bit for bit and
    the C++ pass within an ulp a step. In ``dense``'s training step RMSprop took 27 us this
    way where the foreach ops took 125 (``bench/bench_parts.py``: five passes, an
    allocation and the approximate sqrt).
    """

    def __init__(self, params, lr: float, alpha: float, eps: float, form: str = "keras2",
                 fused: bool | None = None):
        if form not in ("keras2", "keras3"):
            raise ValueError(f"form {form!r}: choose keras2 or keras3")
        self.params = list(params)
        self.lr, self.alpha, self.eps, self.form = lr, alpha, eps, form
        self.fused = fused
        self.square_avg: list[Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        avgs: list[Tensor] = []
        for i in live:
            avg = self.square_avg[i]
            if avg is None:
                avg = self.square_avg[i] = torch.zeros_like(
                    self.params[i], memory_format=torch.preserve_format)
            avgs.append(avg)
        params = [self.params[i] for i in live]
        grads = [p.grad for p in params]
        if self._fused_here(params, grads, avgs):
            from rnnlab.nn import fused
            fused.rmsprop_update(params, grads, avgs, self.alpha, self.eps, self.lr,
                                 self.form == "keras3")
            return
        torch._foreach_mul_(avgs, self.alpha)
        torch._foreach_addcmul_(avgs, grads, grads, value=1 - self.alpha)
        if self.form == "keras2":
            denominators = torch._foreach_sqrt(avgs)
            torch._foreach_add_(denominators, self.eps)
        else:
            denominators = torch._foreach_add(avgs, self.eps)
            torch._foreach_sqrt_(denominators)
        torch._foreach_addcdiv_(params, grads, denominators, value=-self.lr)

    def _fused_here(self, params: list[Tensor], grads: list[Tensor],
                    avgs: list[Tensor]) -> bool:
        """Whether the C++ pass runs this step: contiguous dense CPU tensors of one float
        dtype (averages loaded from a checkpoint included), each parameter's storage once,
        the extension built (``fused=True``: an error if not)."""
        if self.fused is False:
            return False
        dtype = params[0].dtype
        fits = dtype in (torch.float32, torch.float64) and all(
            t.device.type == "cpu" and t.layout == torch.strided and t.is_contiguous()
            and t.dtype == dtype and t.shape == p.shape
            for p, g, v in zip(params, grads, avgs) for t in (p, g, v)) \
            and len({p.data_ptr() for p in params}) == len(params)
        if self.fused:
            if not fits:
                raise RnnlabError("RMSprop(fused=True) takes contiguous CPU parameters, "
                                  "gradients and averages of one float dtype, each "
                                  "parameter once")
            return True
        if not fits:
            return False
        from rnnlab.nn import fused
        return fused.available()

    def state_dict(self) -> dict:
        return {"state": {i: {"square_avg": v} for i, v in enumerate(self.square_avg)
                          if v is not None},
                "param_groups": [{"lr": self.lr, "alpha": self.alpha, "eps": self.eps,
                                  "form": self.form,
                                  "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state: dict) -> None:
        saved = state["state"]
        self.square_avg = [saved[i]["square_avg"].to(p.device).clone() if i in saved else None
                           for i, p in enumerate(self.params)]


def Keras3RMSprop(params, lr: float, alpha: float, eps: float) -> RMSprop:  # noqa: N802
    """``RMSprop(..., form="keras3")``: TF 2's tf.keras and Keras 3."""
    return RMSprop(params, lr=lr, alpha=alpha, eps=eps, form="keras3")


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch's dropout masks, independent of what ran before it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little")


# On a GPU a batch of 128 keeps few of its multiprocessors busy: the persistent recurrence
# runs one program per 16 rows (8 of an H100's 132), cuDNN's per-step products are as thin.
# Evaluation there runs this many rows at once (whole evaluation batches joined): the same
# rows in the same order, the caps still counted in batches of train.eval_batch_size, and
# each row's output a function of that row alone (no layer mixes rows), so the figures are
# the same but for float32 rounding where cuDNN picks another algorithm for the larger
# batch. Training batches keep their size: it is the lecture's.
GPU_EVAL_ROWS = 2048


def eval_join(device: torch.device, eval_batch_size: int) -> int:
    """How many evaluation batches one forward pass takes on ``device``."""
    return max(1, GPU_EVAL_ROWS // eval_batch_size) if device.type == "cuda" else 1


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, split: str, device: torch.device,
             max_batches: int | None, *, progress: bool = False, desc: str = "",
             join: int | None = None) -> dict[str, float]:
    """The task's metrics over ``split`` (every example once, or ``max_batches`` batches):
    no gradients, in the task's evaluation batches, ``join`` of them per forward pass
    (default: ``eval_join``); only the (n,) outputs are kept."""
    model.eval()
    join = eval_join(device, task.eval_batch_size) if join is None else join
    if join < 1:
        raise ValueError(f"evaluate: join {join}: evaluation batches per forward pass, >= 1")
    n = capped_rows(task.eval_size(split), task.eval_batch_size, max_batches)
    passes = -(-n // (task.eval_batch_size * join))
    # Filled in place: small tensors kept between the batches' large freed buffers would
    # fragment the heap (a validation pass held 1.4 GB of RSS that way).
    # On a GPU the outputs stay there until the last batch: one copy back, not one a batch.
    outputs, targets = torch.empty(n, device=device), torch.empty(n, device=device)
    done = 0
    bar = tqdm(task.eval_batches(split, max_batches, join), total=passes, disable=not progress,
               desc=f"{desc} {split}".strip(), file=sys.stderr, leave=False, mininterval=1.0)
    for x, y in bar:
        outputs[done:done + len(y)] = model(x.to(device, non_blocking=True)).float()
        targets[done:done + len(y)] = y
        done += len(y)
    bar.close()
    return task.metrics(outputs[:done].cpu(), targets[:done].cpu())


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


# What a checkpoint holds: state dicts (tensors), the history (dicts of floats and ints),
# numbers and the fingerprint string; nothing that needs a class to be rebuilt.
CHECKPOINT_KEYS = frozenset({"fingerprint", "epoch", "model", "optimizer", "history",
                             "best_value", "best_epoch", "best_model"})


def _save_checkpoint(path: Path, state: dict, desc: str) -> None:
    """Write the checkpoint; a write that fails (a disk full, a folder put in its place
    mid-run) is one warning, not the end of the training: a checkpoint is a cache, and the
    run goes on to its results (a kill would resume from the last one written)."""
    try:
        with atomic_output(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as e:   # torch's zip writer raises RuntimeError on ENOSPC
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.warning("%s: could not write the checkpoint %s after epoch %d (%s); training "
                    "goes on without it", desc, path, state["epoch"], reason)


def _load_checkpoint(path: Path, device: torch.device, desc: str) -> dict | None:
    """The checkpoint's state, or None (one warning) when it cannot be used.

    ``weights_only=True``: the unpickler rebuilds only tensors, containers and plain
    values, so a pickle planted at the checkpoint path cannot run code. A checkpoint is a
    cache, so any file that does not load that way, or lacks a key, means 'start over':
    training runs from epoch 1 and its first checkpoint replaces the file.
    """
    try:
        with warnings.catch_warnings():
            # torch warns about a foreign pickle protocol before refusing it: one line is ours.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:   # noqa: BLE001 (unpickling, zip, EOF, OS errors alike)
        problem = f"it does not load as tensors and plain values ({type(e).__name__})"
    else:
        if isinstance(state, dict) and CHECKPOINT_KEYS <= state.keys():
            return state
        problem = "it is not an rnnlab checkpoint (missing keys)"
    log.warning("%s: ignoring %s: %s; training from epoch 1, this run's checkpoint replaces "
                "it", desc, path, problem)
    return None


def fit(model: nn.Module, task: Task, config: TrainConfig, device: torch.device, *,
        checkpoint: Path | None = None, fingerprint: str = "",
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True, desc: str = "train",
        threads: ThreadTuner | FixedThreads | None = None, epochs_after: int = 0) -> FitResult:
    """Train ``model`` for ``config.epochs`` and return the best epoch's val/test metrics.

    ``checkpoint``: written after every epoch; if it exists with the same
    ``fingerprint`` (a digest of everything that defines the run), training resumes
    after its last epoch. The caller deletes it once the outputs are written. It holds
    only state dicts and plain values and is read with ``weights_only=True``: a file that
    does not load that way is ignored with a warning, never executed. Its path is checked
    before the first epoch (a folder there, a file where its folder goes, a folder that
    cannot be written: one line, nothing trained); a write that fails later is a warning.
    ``threads``: told each step's wall time, it may change torch's thread count between
    steps (rnnlab.training.threads); each epoch records the mean count as ``threads``.
    ``progress``: tqdm bars on stderr for each epoch's training and validation passes (the
    stages turn them on only when stderr is a terminal). Whether or not, each epoch logs one
    line: the epochs done, this epoch's time, the mean time per epoch and an estimate of the
    time left in the stage, counting ``epochs_after`` more epochs of the same length after
    this fit (the stage's other seeds).
    """
    # Vanishing gradients reach denormal floats, which make CPU matmuls ~30x slower
    # (measured on the GRU's backward); flushing them to zero changes nothing visible. The
    # thread controller's count, like the flag, lasts only as long as this fit. Freed
    # buffers are kept for the next step instead of faulting in fresh pages each time
    # (for the rest of the process: glibc has no way back to its own defaults).
    keep_freed_buffers()
    with denormals_flushed(True):
        return _fit(model, task, config, device, checkpoint=checkpoint,
                    fingerprint=fingerprint, on_epoch=on_epoch, progress=progress, desc=desc,
                    threads=threads, epochs_after=epochs_after)



SEEDS_TOGETHER = ("auto", "1", "0")


def seeds_together(device: torch.device, n_seeds: int) -> bool:
    """``RNNLAB_SEEDS_TOGETHER``: whether a stage's seeds train side by side
    (``fit_together``) rather than one after another. ``auto`` (the default): on a CUDA
    device when there are several; ``1``: wherever there are several (on a CPU that gains
    nothing: the tests use it); ``0``: never. Either way each seed's numbers are its own:
    the same as when it trains alone."""
    value = os.environ.get("RNNLAB_SEEDS_TOGETHER", "auto").strip().lower() or "auto"
    if value not in SEEDS_TOGETHER:
        raise RnnlabError(f"RNNLAB_SEEDS_TOGETHER={value!r}: choose one of "
                          f"{', '.join(SEEDS_TOGETHER)} (auto: together on a CUDA device)")
    return n_seeds > 1 and (value == "1" or (value == "auto" and device.type == "cuda"))


class _OwnGenerators:
    """Torch's default generators' state (CPU, and CUDA on a CUDA device) kept for one of
    several trainings that take turns: entered, the generators continue where that training
    left them; left, their state is kept for its next turn."""

    def __init__(self, device: torch.device) -> None:
        self.device = device if device.type == "cuda" else None
        self.cpu: Tensor | None = None
        self.cuda: Tensor | None = None

    def __enter__(self) -> None:
        if self.cpu is not None:
            torch.set_rng_state(self.cpu)
            if self.device is not None and self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)

    def __exit__(self, *exc) -> None:
        self.cpu = torch.get_rng_state()
        if self.device is not None:
            self.cuda = torch.cuda.get_rng_state(self.device)


def fit_together(models: list[nn.Module], task: Task, configs: list[TrainConfig],
                 device: torch.device, *, checkpoints: list[Path | None],
                 fingerprints: list[str],
                 on_epochs: list[Callable[[int, dict[str, float]], None] | None],
                 descs: list[str], progress: bool = True,
                 threads: ThreadTuner | FixedThreads | None = None) -> list[FitResult]:
    """``fit`` for several models of one task at once (a stage's seeds): their training
    steps take turns, one of each in every round. Each model is trained exactly as ``fit``
    trains it alone (the same steps, batches, dropout masks and checkpoints; on a CPU the
    same bits, tested): each keeps its own state of torch's generators between its turns.

    On a CUDA device each model's work goes to a stream of its own, so the GPU runs their
    kernels side by side: a recurrent layer's persistent kernel occupies a few of the
    GPU's multiprocessors (one per 16 rows of the batch), and the host queues the next
    model's step while one runs. The whole step as one CUDA graph
    (``RNNLAB_CUDA_GRAPH_STEP``) is not used here: the graphs of one generator share the
    device memory their random offsets are read from, so two replayed side by side would
    race for it.
    """
    count = len(models)
    if not (len(configs) == len(checkpoints) == len(fingerprints) == len(on_epochs)
            == len(descs) == count) or count == 0:
        raise ValueError("fit_together: one config, checkpoint, fingerprint, on_epoch and "
                         "desc per model")
    keep_freed_buffers()
    with denormals_flushed(True):
        # One progress bar, the first model's, for all: its steps pace the others'.
        others = f" (and {count - 1} more side by side)" if count > 1 else ""
        runs = [_Training(model, task, config, device, checkpoint=checkpoint,
                          fingerprint=fingerprint, on_epoch=on_epoch,
                          progress=progress and k == 0, desc=desc, threads=threads,
                          epochs_after=0, graphed=False, bar_desc=desc + others)
                for k, (model, config, checkpoint, fingerprint, on_epoch, desc)
                in enumerate(zip(models, configs, checkpoints, fingerprints, on_epochs, descs))]
        generators = [_OwnGenerators(device) for _ in runs]
        if device.type == "cuda":
            streams = [torch.cuda.Stream(device) for _ in runs]
            for stream in streams:      # the weights and the task's data were put there
                stream.wait_stream(torch.cuda.current_stream(device))
            places: list[contextlib.AbstractContextManager] = \
                [torch.cuda.stream(stream) for stream in streams]
        else:
            places = [contextlib.nullcontext() for _ in runs]
        try:
            waiting = [k for k, run in enumerate(runs) if run.epoch < run.config.epochs]
            while waiting:
                for k in list(waiting):
                    run = runs[k]
                    with places[k], generators[k]:
                        if run.batches is None:
                            run.begin_epoch()
                        if not run.step():
                            run.end_epoch()
                            if run.epoch >= run.config.epochs:
                                waiting.remove(k)
            results = []
            for k, run in enumerate(runs):
                with places[k], generators[k]:
                    results.append(run.finish())
        finally:   # also when one seed failed: no stream's work outlives what it reads
            if device.type == "cuda":
                for stream in streams:
                    torch.cuda.current_stream(device).wait_stream(stream)
        return results


class _StepLosses:
    """An epoch's step losses on the device, written into blocks of 512 values.

    Not one tensor per step: those were small allocations that lived for the whole epoch
    between each step's large ones, and they split glibc's heap into pieces no step could
    reuse. A default ``gru_dropout`` stage peaked at 4.4 GB of RSS that way (one run of
    three epochs: 139 MB in use, 1.8 GB free inside the heap); now about 0.6 GB."""

    BLOCK = 512

    def __init__(self, device: torch.device) -> None:
        self.device, self.n = device, 0     # n: the steps added
        self.blocks: list[Tensor] = []

    def add(self, loss: Tensor) -> None:
        if self.n % self.BLOCK == 0:
            self.blocks.append(torch.empty(self.BLOCK, dtype=loss.dtype, device=self.device))
        self.blocks[-1][self.n % self.BLOCK] = loss
        self.n += 1

    def all(self) -> Tensor:
        return torch.cat(self.blocks)[:self.n]


class _TrainStep:
    """One training step: forward, loss, backward, clipping, the optimizer's update;
    returns the loss (a device tensor: nothing here waits for the device)."""

    def __init__(self, model: nn.Module, task: Task, optimizer: RMSprop,
                 clip_norm: float | None):
        self.model, self.task, self.optimizer, self.clip_norm = model, task, optimizer, clip_norm

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(self.model(x), y)
        loss.backward()
        if self.clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        return loss.detach()


def graph_step_enabled(device: torch.device) -> bool:
    """``RNNLAB_CUDA_GRAPH_STEP=1`` on a CUDA device: ``fit`` replays each training step
    as one CUDA graph (``_GraphedStep``). Off by default until a GPU has measured it."""
    return device.type == "cuda" and os.environ.get("RNNLAB_CUDA_GRAPH_STEP", "0") == "1"


class _GraphedStep:
    """The whole training step (``_TrainStep``) captured once as a CUDA graph and replayed
    with one launch: on a GPU a step of these small layers is a few dozen kernels of a few
    microseconds each, and launching them costs as much as running them.

    The first ``WARM`` steps run as they are, on a side stream (real steps, in order: the
    optimizer's state and cuBLAS' workspaces exist after them); the next is captured, then
    replayed; later batches of that shape are copied into the graph's inputs and replayed.
    A batch of another shape (an epoch's short last batch) runs as it is. Dropout masks are
    drawn inside the graph from CUDA's generator, whose state advances at every replay, so
    a seed still fixes the run (but not the same masks as without the graph). A capture
    that fails is one warning, and every later step runs as it is.
    """

    WARM = 3
    captured = 0          # graphs captured in this process: a test checks one really was

    def __init__(self, step: _TrainStep, device: torch.device):
        self.step, self.device = step, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: tuple | None = None
        self.warm, self.failed = 0, False
        self.side = torch.cuda.Stream(device)
        self.x = self.y = self.loss = torch.empty(0)     # the graph's inputs and output

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        shape = (x.shape, x.dtype, y.shape, y.dtype)
        if self.graph is not None and shape == self.shape:
            self.x.copy_(x, non_blocking=True)
            self.y.copy_(y, non_blocking=True)
            self.graph.replay()
            return self.loss.clone()
        if self.failed or self.graph is not None or (self.shape not in (None, shape)):
            return self.step(x, y)
        self.shape = shape
        if self.warm < self.WARM:
            self.warm += 1
            self.side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side):
                loss = self.step(x, y)
            torch.cuda.current_stream(self.device).wait_stream(self.side)
            return loss
        self.x, self.y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = self.step(self.x, self.y)
        except Exception as e:  # noqa: BLE001 - the step runs as it is from here on
            self.failed = True
            warnings.warn(f"capturing the training step as a CUDA graph failed "
                          f"({type(e).__name__}: {e}); training goes on without it",
                          RuntimeWarning, stacklevel=2)
            return self.step(x, y)
        self.graph = graph
        _GraphedStep.captured += 1
        graph.replay()
        return self.loss.clone()


def _diverged(desc: str, loss: float, epoch: int, step: int, checkpoint: Path | None) -> None:
    where = f" (last good checkpoint: {checkpoint})" if checkpoint and epoch > 1 else ""
    raise TrainingDiverged(
        f"{desc}: the loss became {loss} at epoch {epoch}, step {step}; the gradients "
        f"exploded. Set train.clip_norm (for example 1.0) or lower the learning rate{where}")


def _fit(model: nn.Module, task: Task, config: TrainConfig, device: torch.device, *,
         checkpoint: Path | None, fingerprint: str,
         on_epoch: Callable[[int, dict[str, float]], None] | None, progress: bool, desc: str,
         threads: ThreadTuner | FixedThreads | None, epochs_after: int) -> FitResult:
    run = _Training(model, task, config, device, checkpoint=checkpoint,
                    fingerprint=fingerprint, on_epoch=on_epoch, progress=progress, desc=desc,
                    threads=threads, epochs_after=epochs_after)
    while run.epoch < config.epochs:
        run.begin_epoch()
        while run.step():
            pass
        run.end_epoch()
    return run.finish()


class _Training:
    """One model's fit, a step at a time: ``fit`` drives one alone, ``fit_together``
    several side by side. Its arithmetic and its use of the random generators are the same
    either way (``fit_together`` gives each its own generators' state)."""

    def __init__(self, model: nn.Module, task: Task, config: TrainConfig,
                 device: torch.device, *, checkpoint: Path | None, fingerprint: str,
                 on_epoch: Callable[[int, dict[str, float]], None] | None, progress: bool,
                 desc: str, threads: ThreadTuner | FixedThreads | None, epochs_after: int,
                 graphed: bool | None = None, bar_desc: str | None = None) -> None:
        self.model, self.task, self.config, self.device = model, task, config, device
        self.checkpoint, self.fingerprint, self.on_epoch = checkpoint, fingerprint, on_epoch
        self.progress, self.desc, self.threads = progress, desc, threads
        self.epochs_after, self.bar_desc = epochs_after, bar_desc or desc
        model.to(device)
        if device.type == "cuda" and hasattr(task, "to_device"):
            task.to_device(device)     # the data once on the GPU: batches are gathered there
        self.optimizer = RMSprop(model.parameters(), lr=config.lr, alpha=config.rho,
                                 eps=config.eps, form=config.rmsprop)
        self.history: list[dict[str, float]] = []
        self.best_state: dict | None = None
        self.best_value: float | None = None
        self.best_epoch, start = 0, 1
        self.sign = 1.0 if task.monitor_mode == "min" else -1.0

        state = None
        if checkpoint is not None:
            check_checkpoint_path(checkpoint, desc)    # not after an epoch's work: before it
            if checkpoint.exists():
                state = _load_checkpoint(checkpoint, device, desc)
        if state is not None:
            if state["fingerprint"] == fingerprint:
                model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.history, self.best_value = state["history"], state["best_value"]
                self.best_epoch, self.best_state = state["best_epoch"], state["best_model"]
                start = state["epoch"] + 1
                log.info("%s: resuming after epoch %d from %s", desc, state["epoch"], checkpoint)
                for row in self.history:     # a new tracking run gets the restored epochs too
                    if on_epoch is not None:
                        on_epoch(int(row["epoch"]), row)
            else:
                log.info("%s: ignoring %s: it belongs to other params", desc, checkpoint)
        self.resumed_from = self.epoch = start - 1      # epoch: the last one finished
        train_step = _TrainStep(model, task, self.optimizer, config.clip_norm)
        if graphed is None:
            graphed = graph_step_enabled(device)
        self.run_step: Callable[[Tensor, Tensor], Tensor] = \
            _GraphedStep(train_step, device) if graphed else train_step
        self.batches: Iterator[Batch] | None = None     # the epoch under way's, or None

    def begin_epoch(self) -> None:
        self.epoch += 1
        torch.manual_seed(epoch_seed(self.config.seed, self.epoch))
        self.model.train()
        self.began = time.perf_counter()
        self.losses = _StepLosses(self.device)
        batches = self.task.train_batches(self.epoch, self.config.steps_per_epoch,
                                          self.config.seed)
        self.bar = tqdm(batches, total=self.config.steps_per_epoch,
                        desc=f"{self.bar_desc} {self.epoch}/{self.config.epochs}",
                        disable=not self.progress, file=sys.stderr, leave=False,
                        mininterval=1.0)
        self.batches = iter(self.bar)

    def step(self) -> bool:
        """One training step of the epoch under way; False when it has no batch left.

        The host does not wait for each step (on a GPU, a sync per step): the losses stay
        on the device and are read and checked at the end of the epoch (and every 20 steps
        for the bar); a non-finite one stops the run there, naming its step."""
        assert self.batches is not None, "begin_epoch first"
        try:
            x, y = next(self.batches)
        except StopIteration:
            return False
        step_began = time.perf_counter()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.losses.add(self.run_step(x, y))
        if self.threads is not None:
            self.threads.step(time.perf_counter() - step_began)
        if self.losses.n % 20 == 0 and self.progress:
            self.bar.set_postfix(loss=f"{float(self.losses.all().sum()) / self.losses.n:.4f}")
        return True

    def end_epoch(self) -> None:
        """The epoch's losses checked, validation, the best epoch kept, the checkpoint
        written, ``on_epoch`` told."""
        self.bar.close()
        self.batches = None
        config, epoch, losses, total = self.config, self.epoch, self.losses, 0.0
        if losses.n:
            read = losses.all().double().cpu()
            bad = (~torch.isfinite(read)).nonzero()
            if len(bad):
                _diverged(self.desc, read[bad[0, 0]].item(), epoch, int(bad[0, 0]) + 1,
                          self.checkpoint)
            total = float(read.sum())
        val = evaluate(self.model, self.task, "val", self.device, config.max_eval_batches,
                       progress=self.progress, desc=f"{self.bar_desc} {epoch}/{config.epochs}")
        row = {"epoch": epoch, "train_loss": total / max(losses.n, 1), "val_loss": val["loss"],
               **{f"val_{k}": v for k, v in val.items() if k != "loss"},
               "seconds": time.perf_counter() - self.began}
        if self.threads is not None:
            row["threads"] = self.threads.mean_threads(losses.n)
        self.history.append(row)
        value = val[self.task.monitor]
        if self.best_value is None or self.sign * value < self.sign * self.best_value:
            self.best_value, self.best_epoch = value, epoch
            self.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        mean = float(np.mean([r["seconds"] for r in self.history[self.resumed_from:]]))
        left = (config.epochs - epoch + self.epochs_after) * mean
        log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f | %.1f s, %.1f s/epoch, %s",
                 self.desc, epoch, config.epochs, row["train_loss"], row["val_loss"],
                 row["seconds"], mean,
                 f"about {_duration(left)} left in this stage" if left > 0 else "last epoch")
        if self.checkpoint is not None:
            _save_checkpoint(self.checkpoint, {
                "fingerprint": self.fingerprint, "epoch": epoch,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "history": self.history, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "best_model": self.best_state}, self.desc)
        if self.on_epoch is not None:
            self.on_epoch(epoch, row)

    def finish(self) -> FitResult:
        """The best epoch's weights back in the model, evaluated on val and test."""
        config, desc = self.config, self.bar_desc
        if self.best_state is None:
            raise RnnlabError(f"{self.desc}: no epoch to evaluate (epochs = {config.epochs})")
        self.model.load_state_dict(self.best_state)
        val = evaluate(self.model, self.task, "val", self.device, config.max_eval_batches,
                       progress=self.progress, desc=f"{desc} best epoch {self.best_epoch}")
        test = evaluate(self.model, self.task, "test", self.device, config.max_eval_batches,
                        progress=self.progress, desc=f"{desc} best epoch {self.best_epoch}")
        seconds = [row["seconds"] for row in self.history]
        return FitResult(best_epoch=self.best_epoch, history=self.history, val=val, test=test,
                         seconds_per_epoch=float(np.mean(seconds)) if seconds else math.nan,
                         resumed_from=self.resumed_from)
