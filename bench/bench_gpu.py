"""The CUDA path on a lent GPU machine, as one prepared script that fits in 8 minutes of
device time (issue 25, item 4). Prepare on a CPU machine, once:

    bench/gpu_prepare.sh     # -> bench/.cache/gpu (git-ignored): Jena arrays + keras, ~41 MB

then run on the GPU machine (the device tool: ``carry: ["bench/.cache/gpu"]``,
``timeout_s: 540``):

    PYTHONPATH=src python3 bench/bench_gpu.py --budget-s 420 --out "$OUT/gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"

and copy the returned ``gpu.json`` to ``docs/gpu.json``. ``--out`` is rewritten atomically
after each test run, variant and part, so a run cut short still leaves what it measured.
Once ``--budget-s`` seconds have passed since the start no new part (a variant of a
part) starts, and ``skipped`` lists what did not run. The parts, in this order
(``--parts`` picks some):

1. ``tests``: ``pytest --noconftest tests/test_cuda.py tests/test_persistent.py`` (summary
   and seconds; a failure is recorded and the run goes on).
2. ``steps``: per torch variant of params.yaml, ms per training step at batch 128
   (forward, loss, backward, RMSprop) of our model under ``RNNLAB_CUDA_LOOP`` = cudnn,
   persistent and auto (set between rounds: it is read at every layer call), auto with
   the whole step replayed as one CUDA graph (``auto+graph``: engine._GraphedStep, what
   ``RNNLAB_CUDA_GRAPH_STEP=1`` makes ``fit`` use), and of the
   lecture's Keras 3 model on the JAX backend (XLA; bench/keras_lecture.py in a
   bench/speed_worker.py process, ``KERAS_BACKEND=jax``, ``XLA_PYTHON_CLIENT_PREALLOCATE=
   false``), in ``--rounds`` interleaved rounds whose order rotates; per side the median
   over rounds of a round's mean step. Ours: ``--round-steps`` steps on the variant's own
   batches already on the device, one host sync at each end of a round (as ``fit`` runs,
   which reads the losses once per epoch), after 3 warm-up steps per loop. Keras: timed
   inside its ``fit()`` from each batch's start to its end callback (as bench_speed.py),
   on random inputs of the same shapes. Per variant the best of ours over Keras, and which
   loop was fastest (the data for auto's policy).
3. ``epochs``: per variant (gru_dropout and gru_stacked first: their val MAE is the
   accuracy target's), one default epoch with ``RNNLAB_CUDA_LOOP=auto`` through the
   training engine's ``fit``, after an untimed warm-up on a throwaway model (Triton and
   cuDNN set-up); the training steps, the validation pass and the final validation + test
   evaluation are timed apart, and the variant's stage extrapolated from them:
   warm-up + seeds x (epochs x (steps x step + validation pass) + final evaluation).
   ``--steps`` and ``--eval-batches`` cap the timed parts of the variants not in
   ``--full`` (the caps are extrapolated linearly; each row says what
   was); the halves (Jena, IMDB) are the sums of their stages. Not counted: a stage's
   process start, imports, tracking and model files (bench_speed.py's
   ``--stage-seconds``). Evaluation on a GPU joins ``engine.eval_join`` batches per
   forward pass (``GPU_EVAL_ROWS`` rows) and is extrapolated by passes;
   ``val_pass_seconds`` times a validation pass (as capped) after the epochs with one
   batch per forward pass and joined (``val_pass_by_join``).
4. ``seeds``: per variant of ``--seed-variants`` (default: every one, the recurrent-dropout
   ones first), what ``--seeds`` seeds trained side by side cost against one (issue 25,
   item 5): the training passes of one epoch of ``--round-steps`` steps, one model through
   ``fit`` against ``--seeds`` models through ``engine.fit_together`` (each on its own
   CUDA stream), alternating over ``--rounds`` rounds; ``together_over_alone`` is the ratio
   of their medians. With the epochs part, ``seeds_halves`` extrapolates each half with
   ``--seeds`` seeds, one after another and side by side (``seeds_halves``' docstring).

Last, ``targets`` holds issue 25's targets against this run's figures under the default
CUDA path (each variant's step at most 0.5x Keras + JAX's, ``gru_dropout`` at most 2 ms,
the Jena half at most 180 s and IMDB's 30 s, the val MAE within 1e-3 of the CPU path's):
met, missed, or null where the run did not measure it; the log's last lines count them.

Jena inputs are the arrays in ``--jena`` (bench/gpu_prepare.sh: copied from data/prepared
or made from a generated full-size file; ``jena_data`` says which). IMDB inputs are random
word ids with the real shapes (20,000 / 5,000 / 25,000 reviews of 500 ids, vocabulary
10,002): a step costs the same whatever the ids, so IMDB accuracies are meaningless here.
``--compare FILE`` (default: ``cpu_reference.json`` beside ``--jena``, when there) puts the
val metrics of another run of this script on the same data beside this run's: the CPU
path's, made here with ``PYTHONPATH=src python bench/bench_gpu.py --device cpu --parts
epochs --variants gru_dropout gru_stacked --out bench/.cache/gpu/data/cpu_reference.json``
(two full epochs and evaluations on 2 cores: several minutes), or compared afterwards.

Dry run of the code paths on a CPU (the persistent loop in Triton's interpreter):

    TRITON_INTERPRET=1 PYTHONPATH=src python bench/bench_gpu.py --device cpu --parts steps \\
        epochs --variants gru_dropout imdb_lstm --batch-size 16 --rounds 2 --round-steps 2 \\
        --steps 3 --eval-batches 2 --full --keras-path none \\
        --keras-python /path/to/python-with-keras-and-jax --out /tmp/gpu.json

(``--keras-path none``: the carried packages are for the GPU image's Python 3.12.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_speed import Worker  # noqa: E402  (bench/ is this script's folder)

from rnnlab.data.imdb import FILES  # noqa: E402
from rnnlab.data.windows import capped_rows  # noqa: E402
from rnnlab.nn import recurrent  # noqa: E402
from rnnlab.nn.models import build_model  # noqa: E402
from rnnlab.nn.recurrent import prepare_native  # noqa: E402
from rnnlab.tools.params import ARCHITECTURES, load_params  # noqa: E402
from rnnlab.training import engine  # noqa: E402
from rnnlab.training.engine import TrainConfig, fit  # noqa: E402
from rnnlab.training.seeds import seed_everything  # noqa: E402
from rnnlab.training.tasks import ImdbTask, build_task  # noqa: E402

PREPARED = ROOT / "bench" / ".cache" / "gpu"          # bench/gpu_prepare.sh's default
IMDB_COUNTS = {"train": 20_000, "val": 5_000, "test": 25_000}
LOOPS = ("cudnn", "persistent", "auto")               # RNNLAB_CUDA_LOOP values timed
GRAPH = "auto+graph"     # auto, the whole step one CUDA graph (RNNLAB_CUDA_GRAPH_STEP=1)
KERAS = "keras_jax"
FULL = ("gru_dropout", "gru_stacked")                 # the accuracy target's variants
SEED_FIRST = ("gru_dropout", "gru_stacked", "conv_gru")   # the seeds part's first (85 %)
WARMUP_STEPS = 3
START = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - START


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(path: Path | None, report: dict) -> None:
    """Atomically: a run killed while writing leaves the previous complete file."""
    if path is None:
        return
    report["elapsed_s"] = round(elapsed(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


# ---------------------------------------------------------------------------------- tests

def run_tests(tests: list[str], timeout: float) -> dict:
    began = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider",
           "--durations=5", *tests]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
    env.pop("RNNLAB_CUDA_LOOP", None)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out[-4000:], flush=True)
        return {"command": " ".join(cmd[2:]), "returncode": None,
                "summary": f"timed out after {timeout:.0f} s",
                "seconds": round(time.perf_counter() - began, 1)}
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
    lines = proc.stdout.strip().splitlines()
    return {"command": " ".join(cmd[2:]), "returncode": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr.strip()[-300:],
            "seconds": round(time.perf_counter() - began, 1)}


# ---------------------------------------------------------------------------------- data

def random_imdb(root: Path, maxlen: int, vocab: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in IMDB_COUNTS.items():
        x = rng.integers(2, vocab, size=(n, maxlen), dtype=np.int32)
        np.save(root / FILES["x"].format(split=split), x)
        np.save(root / FILES["x_reversed"].format(split=split), x[:, ::-1].copy())
        np.save(root / FILES["y"].format(split=split), rng.integers(0, 2, n).astype(np.int8))
    return root


class Data:
    """The tasks of every variant, built on first use; the Jena arrays are read once per
    window spec and kept (IMDB's random ids are made once)."""

    def __init__(self, params, jena: Path, imdb: Path) -> None:
        self.params, self.jena, self.imdb = params, jena, imdb
        self.source: str | None = None        # canonical, or other (a generated file)
        self.md5: str | None = None

    def task(self, name: str):
        """(task, training steps of a default epoch)"""
        params, spec = self.params, self.params.variant(name)
        if spec.dataset == "jena":
            prep = build_task(spec, params.jena, params.train, self.jena / "jena",
                              self.jena / "jena_windows")
            self.source, self.md5 = prep.data_source, prep.data_md5
            return prep.task, prep.steps_per_epoch
        task = ImdbTask(self.imdb, batch_size=params.imdb.batch_size, reverse=spec.reverse,
                        eval_batch_size=params.train.eval_batch_size,
                        vocab_size=params.imdb.max_features + 2)
        steps = params.train.imdb_steps_per_epoch or math.ceil(
            task.eval_size("train") / params.imdb.batch_size)
        return task, steps


def clear_cuda(device: torch.device) -> None:
    """Each variant starts without the CUDA graphs (and memory) of the ones before it."""
    for graphed in getattr(recurrent._CudaGraphed, "instances", []):
        graphed.graphs.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build(params, name: str, task, device: torch.device):
    seed_everything(params.seed)
    model = build_model(params.variant(name), n_features=task.n_inputs,
                        timesteps=task.timesteps, init=params.train.init)
    prepare_native(model, device)
    return model.to(device)


# ---------------------------------------------------------------------------------- steps

class KerasJax:
    """The lecture's models in a bench/speed_worker.py process on the JAX backend; it is
    restarted after a failure (a variant it cannot build ends it)."""

    def __init__(self, python: str, keras_path: Path | None) -> None:
        self.python = python
        paths = [str(ROOT / "src"), *([str(keras_path.resolve())] if keras_path else []),
                 *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        # Worker sets the child's PYTHONPATH to str(src): a joined list is one there.
        self.pythonpath = Path(os.pathsep.join(dict.fromkeys(paths)))
        self.worker: Worker | None = None
        self.starts = 0

    def ask(self, variant: str, steps: int) -> list[float]:
        if self.worker is None:
            if self.starts >= 3:
                raise RuntimeError("the Keras worker failed to start 3 times")
            self.starts += 1
            os.environ.update(KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false",
                              TF_CPP_MIN_LOG_LEVEL="3")
            self.worker = Worker(self.python, "keras", "--xla", src=self.pythonpath)
        try:
            return self.worker.ask(variant, steps, 1)["train"]
        except (Exception, SystemExit):
            self.close()
            raise

    def close(self) -> None:
        if self.worker is not None:
            self.worker.proc.kill()
            self.worker.proc.wait()
            self.worker = None


def step_times(params, name: str, data: Data, device: torch.device, keras: KerasJax | None,
               rounds: int, steps: int) -> dict:
    """ms per training step of ours under each loop and of Keras + JAX, interleaved."""
    clear_cuda(device)
    task, _ = data.task(name)
    model = build(params, name, task, device).train()
    # fit's own RMSprop (what the GRAPH side captures, as RNNLAB_CUDA_GRAPH_STEP=1 does)
    opt = engine.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    warmup = max(WARMUP_STEPS, engine._GraphedStep.WARM + 1)
    batches = [(x.to(device), y.to(device))
               for x, y in task.train_batches(1, steps + warmup, params.seed)]
    plain = engine._TrainStep(model, task, opt, None)
    graphed = engine._GraphedStep(plain, device) if device.type == "cuda" else None

    def train(batch_list, side: str = "") -> None:
        step = graphed if side == GRAPH and graphed is not None else plain
        for x, y in batch_list:
            step(x, y)

    sides = [*LOOPS, *([GRAPH] if graphed is not None else []), *([KERAS] if keras else [])]
    times: dict[str, list[float]] = {s: [] for s in sides}
    errors: dict[str, str] = {}
    saved = os.environ.get("RNNLAB_CUDA_LOOP")
    try:
        for loop in [s for s in sides if s != KERAS]:   # warm-up: compiles, captures
            os.environ["RNNLAB_CUDA_LOOP"] = "auto" if loop == GRAPH else loop
            try:
                train(batches[:warmup], loop)
                sync(device)
            except Exception as e:  # noqa: BLE001 - record it, time the other sides
                errors[loop] = error_text(e)
        for r in range(rounds):
            k = r % len(sides)
            for side in sides[k:] + sides[:k]:
                if side in errors:
                    continue
                try:
                    if side == KERAS:
                        batch_s = keras.ask(name, steps)
                        times[side].append(statistics.mean(batch_s) * 1e3)
                        continue
                    os.environ["RNNLAB_CUDA_LOOP"] = "auto" if side == GRAPH else side
                    sync(device)
                    began = time.perf_counter()
                    train(batches[warmup:], side)
                    sync(device)
                    times[side].append((time.perf_counter() - began) / steps * 1e3)
                except (Exception, SystemExit) as e:  # noqa: BLE001
                    errors[side] = error_text(e)
    finally:
        if saved is None:
            os.environ.pop("RNNLAB_CUDA_LOOP", None)
        else:
            os.environ["RNNLAB_CUDA_LOOP"] = saved
    ms = {s: round(statistics.median(t), 3) for s, t in times.items() if t}
    row: dict = {"variant": name, "ms": ms, "rounds": rounds, "steps": steps}
    ours = {s: v for s, v in ms.items() if s in (*LOOPS, GRAPH)}
    if ours:
        best = min(ours, key=ours.get)
        row |= {"fastest_loop": best, "best_ours_ms": ours[best]}
        if KERAS in ms:
            row["ratio_best_ours_to_keras"] = round(ours[best] / ms[KERAS], 3)
    if errors:
        row["errors"] = errors
    print(f"[steps {elapsed():5.0f} s] {name:18s} ms/step: "
          + "  ".join(f"{s} {v:.2f}" for s, v in ms.items())
          + (f"  | fastest {row['fastest_loop']}" if ours else "")
          + (f", {row['ratio_best_ours_to_keras']:.2f}x Keras" if "ratio_best_ours_to_keras"
             in row else "") + (f"  errors: {errors}" if errors else ""), flush=True)
    return row


# --------------------------------------------------------------------------------- epochs

class TimedTask:
    """The task, with the wall time of each pass over its batches recorded: a training
    epoch's steps, a validation or test pass, from the pass's first batch to the end of its
    last one (after a device sync: the engine does not wait for each step)."""

    def __init__(self, task, device: torch.device) -> None:
        self._task, self._device = task, device
        self.passes: list[dict] = []

    def __getattr__(self, name: str):
        return getattr(self._task, name)

    def _timed(self, kind: str, batches):
        began, n, rows = time.perf_counter(), 0, 0
        for batch in batches:
            yield batch
            n, rows = n + 1, rows + len(batch[1])
        sync(self._device)
        self.passes.append({"pass": kind, "batches": n, "rows": rows,
                            "seconds": time.perf_counter() - began})

    def train_batches(self, epoch: int, steps, seed: int):
        return self._timed("train", self._task.train_batches(epoch, steps, seed))

    def eval_batches(self, split: str, max_batches, join: int = 1):
        return self._timed(split, self._task.eval_batches(split, max_batches, join))


def time_variant(params, name: str, data: Data, device: torch.device, epochs: int,
                 steps_cap: int | None, eval_cap: int | None) -> dict:
    clear_cuda(device)
    spec = params.variant(name)
    task, default_steps = data.task(name)
    eval_size = task.eval_batch_size
    full_rows = {s: capped_rows(task.eval_size(s), eval_size, params.train.max_eval_batches)
                 for s in ("val", "test")}
    full_eval = {s: math.ceil(n / eval_size) for s, n in full_rows.items()}   # batches
    join = engine.eval_join(device, eval_size)           # evaluation batches per pass
    full_passes = {s: math.ceil(n / (join * eval_size)) for s, n in full_rows.items()}
    caps = [c for c in (eval_cap, params.train.max_eval_batches) if c is not None]

    began = time.perf_counter()                  # warm-up on a throwaway model
    warm = build(params, name, task, device).train()
    opt = torch.optim.RMSprop(warm.parameters(), lr=1e-3)
    for x, y in task.train_batches(1, WARMUP_STEPS, params.seed + 1):
        opt.zero_grad(set_to_none=True)
        task.loss(warm(x.to(device)), y.to(device)).backward()
        opt.step()
    with torch.no_grad():                                       # a joined pass's shape
        warm.eval()(next(iter(task.eval_batches("val", join, join)))[0].to(device))
    sync(device)
    warmup = time.perf_counter() - began
    del warm, opt
    clear_cuda(device)

    timed = TimedTask(task, device)
    model = build(params, name, task, device)
    steps = default_steps if steps_cap is None else min(steps_cap, default_steps)
    config = TrainConfig(epochs=min(epochs, spec.epochs), steps_per_epoch=steps,
                         seed=params.seed, clip_norm=params.train.clip_norm,
                         max_eval_batches=min(caps) if caps else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = fit(model, timed, config, device, progress=False, desc=name)
    passes = timed.passes
    train = [p for p in passes if p["pass"] == "train"]
    val = [p for p in passes if p["pass"] == "val"]
    test = [p for p in passes if p["pass"] == "test"]

    def per(p: dict) -> float:
        return p["seconds"] / max(p["batches"], 1)

    # Evaluation by forward passes (a GPU's joins eval_join batches, engine.GPU_EVAL_ROWS):
    # a latency-bound pass costs about the same whatever its rows, so a capped run's
    # short pass counts as a full one.
    step_s, val_pass_s = per(train[-1]), per(val[len(train) - 1])
    epoch_est = default_steps * step_s + full_passes["val"] * val_pass_s
    final_est = full_passes["val"] * per(val[-1]) + full_passes["test"] * per(test[-1])
    seeds = len(params.seed_list)
    stage = warmup + seeds * (spec.epochs * epoch_est + final_est)
    row: dict = {
        "variant": name, "dataset": spec.dataset, "loop": os.environ.get("RNNLAB_CUDA_LOOP"),
        "warmup_seconds": round(warmup, 2),
        "epochs_timed": len(train), "default_epochs": spec.epochs, "seeds": seeds,
        "measured": [{k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()}
                     for p in passes],
        "default_steps": default_steps, "default_eval_batches": full_eval,
        "ms_per_step": round(step_s * 1e3, 3),
        "epoch_seconds_extrapolated": round(epoch_est, 2),
        "final_eval_seconds_extrapolated": round(final_est, 2),
        "stage_seconds_extrapolated": round(stage, 1),
        "capped": {"steps": train[-1]["batches"] < default_steps,
                   "val": val[-1]["rows"] < full_rows["val"],
                   "test": test[-1]["rows"] < full_rows["test"]},
        "eval_join": join, "default_eval_passes": full_passes,
        "train_loss": [round(r["train_loss"], 6) for r in result.history],
        "val": {k: round(v, 6) for k, v in result.val.items()},
    }
    if device.type == "cuda":
        row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    row["val_pass_seconds"] = val_pass_by_join(model, task, device, min(caps) if caps else None)
    print(f"[epochs {elapsed():5.0f} s] {name:18s} warm-up {warmup:.1f} s, "
          f"{row['ms_per_step']:.2f} ms/step, epoch ~{epoch_est:.1f} s, stage "
          f"~{stage:.0f} s, val {row['val']}", flush=True)
    del model
    return row


def val_pass_by_join(model, task, device: torch.device, cap: int | None,
                     rounds: int = 2) -> dict:
    """A validation pass (as capped) timed two ways after the epochs, alternating over
    ``rounds`` rounds, each after an untimed pass of its shape (the one-batch shape is new
    to a GPU run, whose evaluation joined): one evaluation batch per forward pass, and
    ``engine.eval_join`` of them (what ``fit`` does); the median of each."""
    join = engine.eval_join(device, task.eval_batch_size)
    ways = {"one_batch_at_a_time": 1, "joined": join}
    for j in ways.values():
        engine.evaluate(model, task, "val", device, j, join=j)
    times = timed_passes(model, task, device, cap, ways, rounds)
    return {label: round(t, 3) for label, t in times.items()} | {
        "join": join, "cap": cap, "rounds": rounds}


def timed_passes(model, task, device: torch.device, cap: int | None, ways: dict,
                 rounds: int) -> dict:
    """label -> the median seconds of a validation pass (``cap`` batches) with ``ways[label]``
    evaluation batches per forward pass, over ``rounds`` rounds alternating between them."""
    times: dict[str, list[float]] = {label: [] for label in ways}
    for _ in range(rounds):
        for label, j in ways.items():
            sync(device)
            began = time.perf_counter()
            engine.evaluate(model, task, "val", device, cap, join=j)
            sync(device)
            times[label].append(time.perf_counter() - began)
    return {label: statistics.median(t) for label, t in times.items()}


# ---------------------------------------------------------------------------------- seeds

def seed_times(params, name: str, data: Data, device: torch.device, count: int, rounds: int,
               steps: int) -> dict:
    """What ``count`` seeds trained side by side (engine.fit_together, as a stage with
    ``seeds: [...]`` runs them on a GPU) cost against one alone: per round, one epoch of
    ``steps`` steps of one model through ``fit``, then of ``count`` models through
    ``fit_together`` (the order alternating), each from the same seeds; the wall time of
    the training passes (first batch to the last one's end, after a device sync), median
    over rounds. One validation batch per epoch, not counted; the whole step as one CUDA
    graph off on both sides (fit_together never uses it)."""
    clear_cuda(device)
    task, _ = data.task(name)
    seeds = [params.seed + k for k in range(count)]
    config = lambda seed: TrainConfig(epochs=1, steps_per_epoch=steps, seed=seed,  # noqa: E731
                                      clip_norm=params.train.clip_norm, max_eval_batches=1)

    def one_side(k: int) -> float:
        timed = TimedTask(task, device)
        models = [build(params, name, task, device) for _ in range(k)]
        if k == 1:
            fit(models[0], timed, config(seeds[0]), device, progress=False, desc=name)
        else:
            engine.fit_together(models, timed, [config(s) for s in seeds[:k]], device,
                                checkpoints=[None] * k, fingerprints=[""] * k,
                                on_epochs=[None] * k, descs=[f"{name} {s}" for s in seeds],
                                progress=False)
        # The first model's pass: from the round's first batch to the device sync at its
        # end, when every model's last step is queued (the others' passes end later, after
        # validation batches of the models before them).
        return next(p["seconds"] for p in timed.passes if p["pass"] == "train")

    one_side(1)                      # warm-up: Triton, cuDNN and cuBLAS set up
    one_side(count)                  # and on the side streams
    alone, together = [], []
    for r in range(rounds):
        for k in ((1, count) if r % 2 == 0 else (count, 1)):
            (alone if k == 1 else together).append(one_side(k))
    row = {"variant": name, "seeds": count, "steps": steps, "rounds": rounds,
           "alone_ms_per_step": round(statistics.median(alone) / steps * 1e3, 3),
           "together_ms_per_step": round(statistics.median(together) / steps * 1e3, 3)}
    row["together_over_alone"] = round(row["together_ms_per_step"] / row["alone_ms_per_step"], 3)
    print(f"[seeds  {elapsed():5.0f} s] {name:18s} one seed {row['alone_ms_per_step']:.2f} "
          f"ms/step, {count} side by side {row['together_ms_per_step']:.2f} "
          f"({row['together_over_alone']:.2f}x one)", flush=True)
    return row


def seeds_halves(params, names: list[str], epochs: list[dict], seeds: list[dict],
                 count: int) -> dict:
    """Each half's training stages with ``count`` seeds, extrapolated from the epochs part
    (one seed's default epoch) and the seeds part (``together_over_alone``): one after
    another, warm-up + count x (epochs x (steps + validation) + final evaluation); side by
    side, warm-up + epochs x (steps x together_over_alone + count x validation) + count x
    final evaluation (the seeds' evaluations run one after another)."""
    epoch_rows = {r["variant"]: r for r in epochs if "error" not in r}
    ratios = {r["variant"]: r["together_over_alone"] for r in seeds if "error" not in r}
    out = {}
    for half in ("jena", "imdb"):
        want = [n for n in names if params.variant(n).dataset == half]
        done = [n for n in want if n in epoch_rows and n in ratios]
        after, together = 0.0, 0.0
        for name in done:
            r = epoch_rows[name]
            train = r["default_steps"] * r["ms_per_step"] / 1e3
            val = r["epoch_seconds_extrapolated"] - train
            epochs_n, final = r["default_epochs"], r["final_eval_seconds_extrapolated"]
            after += r["warmup_seconds"] + count * (epochs_n * (train + val) + final)
            together += r["warmup_seconds"] + epochs_n * (train * ratios[name] + count * val) \
                + count * final
        out[half] = {"seeds": count,     # None: no variant of the half had both parts
                     "one_after_another": round(after, 1) if done else None,
                     "side_by_side": round(together, 1) if done else None,
                     "missing": [n for n in want if n not in done]}
    return out


# ----------------------------------------------------------------------------------- main

def versions(keras_path: Path | None) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None}
    for name in ("triton", "jax", "jaxlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    dists = metadata.distributions(path=[str(keras_path)]) if keras_path else []
    out |= {d.metadata["Name"]: d.version for d in dists
            if d.metadata["Name"] in ("keras", "namex", "optree")}
    return out


def targets(report: dict, halves: dict[str, list[str]]) -> list[dict]:
    """Issue 25's targets against what this run measured, under the default CUDA path
    (``RNNLAB_CUDA_LOOP=auto``, no whole-step graph): ``met`` true or false, or null where
    this run did not measure it (a part skipped, a variant missing, no Keras, no CPU
    reference to compare with). ``halves``: every torch variant of each half, all of
    which a half's figure needs."""
    rows: list[dict] = []

    def add(target: str, measured, at_most: float, note: str | None = None) -> None:
        rows.append({"target": target, "measured": measured, "at_most": at_most,
                     "met": None if measured is None else measured <= at_most}
                    | ({"note": note} if note else {}))

    steps = {r["variant"]: r for r in report.get("steps", []) if "ms" in r}
    for name in [n for h in halves.values() for n in h]:
        r = steps.get(name, {"ms": {}})
        ms = r["ms"]
        ratio = round(ms["auto"] / ms[KERAS], 3) if "auto" in ms and KERAS in ms else None
        add(f"{name}: training step, ours (auto) over the lecture's Keras 3 + JAX", ratio,
            0.5, f"best of ours: {r.get('fastest_loop')} {r.get('ratio_best_ours_to_keras')}"
            if r.get("ratio_best_ours_to_keras") is not None else None)
    add("gru_dropout: ms per training step (auto)",
        steps.get("gru_dropout", {}).get("ms", {}).get("auto"), 2.0)
    for half, limit in (("jena", 180.0), ("imdb", 30.0)):
        h = report.get("halves", {}).get(half)
        missing = [n for n in halves[half] if not h or n not in h["stages"]]
        add(f"the {half} half's training stages, s extrapolated from measured epochs",
            None if missing else h["training_stages_seconds_extrapolated"], limit,
            f"not measured: {', '.join(missing)}" if missing else None)
    for name in FULL:
        c = report.get("compare", {}).get(name)
        add(f"{name}: one default epoch's val MAE, difference from the CPU path",
            c["abs_diff"].get("mae") if c else None, 1e-3)
    return rows


def compare(report: dict, path: Path) -> dict:
    """This run's val metrics beside another run's on the same data (the CPU path's)."""
    other = {r["variant"]: r for r in json.loads(path.read_text()).get("epochs", [])
             if "val" in r}
    out = {"file": str(path)}
    for row in report["epochs"]:
        if row["variant"] in other and "val" in row and not any(row["capped"].values()):
            theirs = other[row["variant"]]["val"]
            out[row["variant"]] = {
                "val_here": row["val"], "val_there": theirs,
                "abs_diff": {k: round(abs(v - theirs[k]), 6)
                             for k, v in row["val"].items() if k in theirs}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jena", type=Path, default=PREPARED / "data",
                        help="a folder holding jena/ and jena_windows/ (data/prepared)")
    parser.add_argument("--keras-path", type=Path, default=PREPARED / "keras",
                        help="unpacked keras, namex, optree, put on the worker's PYTHONPATH")
    parser.add_argument("--keras-python", default=sys.executable,
                        help="the Python of the Keras worker (one with jax)")
    parser.add_argument("--parts", nargs="+", default=["tests", "steps", "epochs", "seeds"],
                        choices=["tests", "steps", "epochs", "seeds"])
    parser.add_argument("--tests", nargs="+",
                        default=["tests/test_cuda.py", "tests/test_persistent.py"])
    parser.add_argument("--tests-timeout-s", type=float, default=200.0,
                        help="tests: stop them (recorded as timed out) after this long")
    parser.add_argument("--variants", nargs="+", help="default: every torch variant")
    parser.add_argument("--rounds", type=int, default=3, help="steps: interleaved rounds")
    parser.add_argument("--round-steps", type=int, default=20,
                        help="steps: training steps per round and side")
    parser.add_argument("--no-keras", action="store_true", help="steps: ours only")
    parser.add_argument("--epochs", type=int, default=1, help="epochs: epochs timed")
    parser.add_argument("--steps", type=int,
                        help="epochs: cap on the training steps of a timed epoch")
    parser.add_argument("--eval-batches", type=int, default=200,
                        help="epochs: cap on validation/test batches per pass")
    parser.add_argument("--full", nargs="*", default=list(FULL),
                        help="epochs: variants timed uncapped and first (their val metrics "
                             "are compared); empty: none")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds: how many trained side by side")
    parser.add_argument("--seed-variants", nargs="+",
                        help="seeds: the variants timed (default: every torch variant, the "
                             "recurrent-dropout ones first)")
    parser.add_argument("--eval-batch-size", type=int,
                        help="instead of train.eval_batch_size (validation and test batches)")
    parser.add_argument("--batch-size", type=int,
                        help="dry runs only: instead of the training batch of 128 (Keras "
                             "stays at 128)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no new test run, variant or part after this many seconds")
    parser.add_argument("--compare", type=Path,
                        help="another run's JSON (default: cpu_reference.json beside --jena)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument("--out", type=Path, help="the JSON report (docs/gpu.json)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here (--device cpu for a dry run)")
    params = load_params(ROOT / "params.yaml")
    if args.eval_batch_size:
        params = dataclasses.replace(params, train=dataclasses.replace(
            params.train, eval_batch_size=args.eval_batch_size))
    if args.batch_size:
        params = dataclasses.replace(
            params, jena=dataclasses.replace(params.jena, batch_size=args.batch_size),
            imdb=dataclasses.replace(params.imdb, batch_size=args.batch_size))
    keras_path = args.keras_path if args.keras_path.is_dir() else None
    names = args.variants or [n for n, m in params.models.items() if ARCHITECTURES[m.arch].torch]
    full = [n for n in (args.full or []) if n in names]
    report: dict = {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "device": str(device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "budget_s": args.budget_s,
        "versions": versions(keras_path),
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                 "cudnn": torch.backends.cudnn.allow_tf32},
        "eval_batch_size": params.train.eval_batch_size, "batch_size": params.jena.batch_size,
        "method": {
            "steps": "ms per training step (batch 128: forward, loss, backward, RMSprop): "
                     "median over interleaved rounds of a round's mean step; ours one host "
                     "sync per round, Keras timed per batch inside fit() (speed_worker.py)",
            "epochs": "one default epoch per variant under RNNLAB_CUDA_LOOP=auto after an "
                      "untimed warm-up; stage = warm-up + seeds x (epochs x (steps x "
                      "measured step + validation passes x measured pass) + final val + "
                      "test; a pass on a GPU joins eval_join evaluation batches): every "
                      "stage is extrapolated from epochs_timed epochs, and "
                      "from capped parts where `capped` says so; process start, imports, "
                      "tracking and model files are not counted",
            "seeds": "per variant, the training passes of one epoch of --round-steps steps: "
                     "one seed through fit, --seeds seeds side by side through "
                     "fit_together (a stage's seeds on a GPU), alternating, median over "
                     "--rounds rounds",
        },
        "skipped": [],
    }
    print(json.dumps({k: report[k] for k in ("card", "versions", "tf32")}), flush=True)
    write_json(args.out, report)

    def over(part: str, what: str) -> bool:
        if elapsed() <= args.budget_s:
            return False
        report["skipped"].append({"part": part, "what": what,
                                  "reason": f"budget: {elapsed():.0f} s > {args.budget_s:.0f} s"})
        return True

    if "tests" in args.parts and not over("tests", " ".join(args.tests)):
        report["tests"] = run_tests(args.tests, timeout=args.tests_timeout_s)
        print(f"[tests {elapsed():5.0f} s] {report['tests']['summary']} "
              f"({report['tests']['seconds']} s)", flush=True)
        write_json(args.out, report)

    with tempfile.TemporaryDirectory() as tmp:
        imdb = Path(tmp) / "imdb"
        if any(params.variant(n).dataset == "imdb" for n in names) and \
                {"steps", "epochs", "seeds"} & set(args.parts):
            random_imdb(imdb, params.imdb.maxlen, params.imdb.max_features + 2)
        data = Data(params, args.jena, imdb)

        if "steps" in args.parts:
            keras = None if args.no_keras else KerasJax(args.keras_python, keras_path)
            report["steps"], report["fastest_loop"] = [], {}
            try:
                for name in names:
                    if over("steps", name):
                        continue
                    try:
                        report["steps"].append(step_times(params, name, data, device, keras,
                                                          args.rounds, args.round_steps))
                    except Exception as e:  # noqa: BLE001 - report it, go on with the others
                        print(f"{name} (steps): {error_text(e)}", flush=True)
                        report["steps"].append({"variant": name, "error": error_text(e)})
                    report["fastest_loop"] = {r["variant"]: r["fastest_loop"]
                                              for r in report["steps"] if "fastest_loop" in r}
                    write_json(args.out, report)
            finally:
                if keras is not None:
                    keras.close()
            print("[steps] fastest loop per variant: " + ", ".join(
                f"{v} {loop}" for v, loop in report["fastest_loop"].items()), flush=True)

        if "epochs" in args.parts:
            os.environ["RNNLAB_CUDA_LOOP"] = "auto"
            report["epochs"] = []
            for name in full + [n for n in names if n not in full]:
                if over("epochs", name):
                    continue
                uncapped = name in full
                try:
                    report["epochs"].append(time_variant(
                        params, name, data, device, args.epochs,
                        None if uncapped else args.steps,
                        None if uncapped else args.eval_batches))
                except Exception as e:  # noqa: BLE001
                    print(f"{name} (epochs): {error_text(e)}", flush=True)
                    report["epochs"].append({"variant": name, "error": error_text(e)})
                report["jena_data"] = {"source": data.source, "csv_md5": data.md5}
                write_json(args.out, report)
            halves = {}
            for half in ("jena", "imdb"):
                want = [n for n in names if params.variant(n).dataset == half]
                rows = [r for r in report["epochs"] if r["variant"] in want and "error" not in r]
                halves[half] = {
                    "training_stages_seconds_extrapolated": round(
                        sum(r["stage_seconds_extrapolated"] for r in rows), 1),
                    "stages": {r["variant"]: r["stage_seconds_extrapolated"] for r in rows},
                    "missing": [n for n in want if n not in {r["variant"] for r in rows}]}
            report["halves"] = halves
            report["accuracy"] = {r["variant"]: r["val"] for r in report["epochs"]
                                  if r["variant"] in full and "val" in r}
            reference = args.compare or args.jena / "cpu_reference.json"
            if reference.is_file() and reference.resolve() != (args.out or Path()).resolve():
                report["compare"] = compare(report, reference)
            print("[epochs] halves (s): " + json.dumps(
                {h: v["training_stages_seconds_extrapolated"] for h, v in halves.items()}),
                flush=True)
        if "seeds" in args.parts:
            os.environ["RNNLAB_CUDA_LOOP"] = "auto"
            os.environ["RNNLAB_CUDA_GRAPH_STEP"] = "0"
            report["seeds"] = []
            wanted = args.seed_variants or [n for n in SEED_FIRST if n in names] + [
                n for n in names if n not in SEED_FIRST]
            for name in [n for n in wanted if n in params.models]:
                if over("seeds", name):
                    continue
                try:
                    report["seeds"].append(seed_times(params, name, data, device, args.seeds,
                                                      args.rounds, args.round_steps))
                except Exception as e:  # noqa: BLE001
                    print(f"{name} (seeds): {error_text(e)}", flush=True)
                    report["seeds"].append({"variant": name, "error": error_text(e)})
                write_json(args.out, report)
            if report.get("epochs"):
                report["seeds_halves"] = seeds_halves(params, names, report["epochs"],
                                                      report["seeds"], args.seeds)
                print("[seeds] halves with " + str(args.seeds) + " seeds (s): " + json.dumps(
                    {h: {k: v[k] for k in ("one_after_another", "side_by_side")}
                     for h, v in report["seeds_halves"].items()}), flush=True)
    report["targets"] = targets(report, {
        half: [n for n, m in params.models.items()
               if ARCHITECTURES[m.arch].torch and m.dataset == half] for half in ("jena", "imdb")})
    met = [r["met"] for r in report["targets"]]
    print(f"[targets] met {met.count(True)} of {len(met)}, missed {met.count(False)}, "
          f"not measured {met.count(None)}", flush=True)
    for r in report["targets"]:
        if r["met"] is False:
            print(f"  missed: {r['target']}: {r['measured']} > {r['at_most']}", flush=True)
    write_json(args.out, report)
    print(f"bench_gpu: done in {elapsed():.0f} s"
          + (f"; skipped {len(report['skipped'])}" if report["skipped"] else ""), flush=True)


if __name__ == "__main__":
    main()
