r"""Windowed views of the Jena matrix: the lecture's sampling, without materializing windows.

One sample is anchored at a *target row* ``r``. With ``lookback=L``, ``step=s``,
``delay=D`` (the lecture's defaults: L=1440 ten-minute rows = 10 days, s=6 = hourly,
D=144 = 24 h ahead)::

    rows:   r-L    r-L+s   r-L+2s   ...   r-s    r   ...   r+D
             |       |       |              |     :           |
    input:  x[0]    x[1]    x[2]    ...  x[T-1]   :           |      T = ceil(L / s)
             \______________________________/     :           |
                  all 14 features, (T, 14)        :      target = features[r+D, target]
                                                  r itself is not an input

    naive persistence predicts features[r-s, target]: the last input row (x[T-1]).

Within a split ``[lo, hi]`` (the ``*_rows`` params), ``r`` runs over
``lo + L <= r < hi``, so every input row lies in the split and a target may fall up to
``D`` rows past ``hi``, exactly as in the lecture's generator. For an open split
(``hi = null``) the lecture's ``hi = N - D - 1`` keeps every target inside the data.

A *reversed* dataset is the same index read with the time axis of each window
flipped (x[T-1] first); targets do not change.

What is stored is only each split's range of target rows. A batch is one vectorized
gather, ``features[rows[:, None] + offsets[None, :]]`` -> (B, T, 14), done by
``torch.index_select`` on the flattened row indices (measured 2.4x faster than NumPy's
fancy indexing here, see bench/bench_jena.py) and returned as torch tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlab.core.atomic import atomic_output
from rnnlab.core.config import show
from rnnlab.core.errors import RnnlabError

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")
SPEC_FILE = "windows.json"


@dataclass(frozen=True)
class WindowSpec:
    lookback: int
    step: int
    delay: int
    target_index: int
    n_rows: int
    # Half-open ranges [start, stop) of target rows r, per split.
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    # The ``jena.*_rows`` they came from, so a variant's own lookback/step can be resolved
    # from this spec alone (``variant_spec``).
    split_rows: tuple[tuple[int, int | None], ...] = ()

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets of one window's inputs relative to r: -L, -L+s, ..., (T,)."""
        return np.arange(-self.lookback, 0, self.step, dtype=np.int64)

    @property
    def timesteps(self) -> int:
        return math.ceil(self.lookback / self.step)

    def rows(self, split: str) -> np.ndarray:
        """Every target row of ``split``, in order, (n,) int64."""
        start, stop = getattr(self, split)
        return np.arange(start, stop, dtype=np.int64)

    def count(self, split: str) -> int:
        start, stop = getattr(self, split)
        return stop - start


def make_window_spec(*, n_rows: int, lookback: int, step: int, delay: int, target_index: int,
                     splits: dict[str, tuple[int, int | None]],
                     lookback_key: str = "jena.lookback", step_key: str = "jena.step"
                     ) -> WindowSpec:
    """Target-row ranges per split under the window convention; errors name the field
    (``lookback_key``, ``step_key``: where a variant's own values come from)."""
    if step < 1:
        raise RnnlabError(f"{step_key} must be >= 1, got {step}")
    if lookback < step:
        raise RnnlabError(f"{lookback_key} ({lookback}) must be >= {step_key} ({step})")
    if delay < 0:
        raise RnnlabError(f"jena.delay must be >= 0, got {delay}")
    ranges = {}
    for split in SPLITS:
        lo, hi = splits[split]
        if hi is None:
            hi = n_rows - delay - 1  # the lecture's max_index for an open split
        start, stop = lo + lookback, hi
        if lo < 0 or start >= stop:
            raise RnnlabError(
                f"jena.{split}_rows {show(list(splits[split]))} holds no window with lookback "
                f"{lookback} and delay {delay} in {n_rows:,} rows; widen the split or "
                f"shorten {lookback_key}")
        if stop - 1 + delay > n_rows - 1:
            raise RnnlabError(
                f"jena.{split}_rows {show(list(splits[split]))}: targets up to row {stop - 1 + delay} "
                f"fall past the last row ({n_rows - 1}); lower the split's end or jena.delay")
        ranges[split] = (start, stop)
    return WindowSpec(lookback=lookback, step=step, delay=delay, target_index=target_index,
                      n_rows=n_rows,
                      split_rows=tuple((splits[s][0], splits[s][1]) for s in SPLITS),
                      **ranges)


def variant_spec(spec: WindowSpec, lookback: int | None = None, step: int | None = None,
                 *, name: str | None = None) -> WindowSpec:
    """The windows of a variant with its own ``lookback``/``step`` (``models.<v>.lookback``):
    the one place such overrides are resolved; the rest (delay, splits) is the stage's.
    ``name``: the variant, so that an error names the key its value came from."""
    if (lookback or spec.lookback) == spec.lookback and (step or spec.step) == spec.step:
        return spec
    own = f"models.{name or '<variant>'}"
    return make_window_spec(n_rows=spec.n_rows, lookback=lookback or spec.lookback,
                            step=step or spec.step, delay=spec.delay,
                            target_index=spec.target_index,
                            splits=dict(zip(SPLITS, spec.split_rows)),
                            lookback_key=f"{own}.lookback" if lookback else "jena.lookback",
                            step_key=f"{own}.step" if step else "jena.step")


def save_spec(spec: WindowSpec, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = asdict(spec) | {"counts": {s: spec.count(s) for s in SPLITS},
                          "timesteps": spec.timesteps}
    with atomic_output(out_dir / SPEC_FILE) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return out_dir / SPEC_FILE


def load_spec(out_dir: Path) -> WindowSpec:
    doc = json.loads((Path(out_dir) / SPEC_FILE).read_text())
    doc.pop("counts"), doc.pop("timesteps")
    doc["split_rows"] = tuple(tuple(rows) for rows in doc.get("split_rows", ()))
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    return WindowSpec(**fields)


class JenaWindows:
    """Batches of one split: ``(x, y)`` tensors, x (B, T, 14) float32 and y (B,) float32.

    ``features`` may be memory-mapped; it is read into memory once (23.5 MB for the
    full Jena file) since every batch touches rows all over it.
    """

    def __init__(self, features: np.ndarray, spec: WindowSpec, split: str, *,
                 reverse: bool = False):
        import torch  # here, not at the top: the windows and naive stages never need it

        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if features.shape[0] != spec.n_rows:
            raise RnnlabError(f"the feature matrix has {features.shape[0]:,} rows but the "
                              f"window spec was built for {spec.n_rows:,}; rerun `dvc repro`")
        self.features = torch.from_numpy(np.require(features, np.float32, ["C", "W"]))  # (N, F)
        self.spec = spec
        self.split = split
        self.reverse = reverse
        self.rows = spec.rows(split)
        # Reversal is folded into the offsets, so a reversed batch costs nothing extra.
        offsets = spec.offsets[::-1].copy() if reverse else spec.offsets
        self._offsets = torch.from_numpy(offsets)                     # (T,)
        self._target = self.features[:, spec.target_index].contiguous()  # (N,)

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device, features: torch.Tensor | None = None) -> JenaWindows:
        """The matrix (23.5 MB for the full Jena file) on ``device`` (or ``features``, the
        same matrix already there: the splits share one copy): batches are then gathered
        there, and only their row numbers cross from the host."""
        self.features = features if features is not None else self.features.to(device)
        self._offsets = self._offsets.to(device)
        self._target = self._target.to(device)
        return self

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the windows anchored at target rows ``rows`` (B,) in one indexing op, on
        the matrix's device."""
        import torch

        return self._gather(torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(
            self.features.device, non_blocking=True))

    def _gather(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` of row numbers ``r`` (B,) already on the matrix's device."""
        idx = (r[:, None] + self._offsets[None, :]).reshape(-1)        # (B*T,)
        x = self.features.index_select(0, idx).view(len(r), len(self._offsets), -1)  # (B, T, F)
        y = self._target.index_select(0, r + self.spec.delay)          # (B,)
        return x, y

    def ordered(self, batch_size: int, max_batches: int | None = None, join: int = 1
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every window exactly once, in row order (validation and test), or the first
        ``max_batches`` batches' windows; ``join`` batches at a time (one batch of
        ``join * batch_size`` rows, the last one shorter). The row numbers go to the
        matrix's device in one copy."""
        rows = self.rows[:capped_rows(len(self.rows), batch_size, max_batches)]
        size = batch_size * join
        for r in on_device((rows[start:start + size] for start in range(0, len(rows), size)),
                           self.features.device):
            yield self._gather(r)

    def epoch_batches(self, epoch: int, steps: int | None, batch_size: int, seed: int
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches of one epoch, shuffled by ``(seed, epoch)`` alone (see
        ``shuffled_batches``): a resumed run draws exactly the same batches. The epoch's
        row numbers go to the matrix's device in one copy (on a GPU: no copy from the host
        at each step)."""
        for r in on_device(shuffled_batches(self.rows, epoch, steps, batch_size, seed),
                           self.features.device):
            yield self._gather(r)


def capped_rows(n: int, batch_size: int, max_batches: int | None) -> int:
    """How many of ``n`` examples the first ``max_batches`` batches of ``batch_size`` hold
    (all of them: None; none: a cap of 0 or less), the evaluation caps' one reading."""
    return n if max_batches is None else min(n, max(max_batches, 0) * batch_size)


def on_device(batches: Iterator[np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
    """Batches of row numbers as int64 tensors on ``device``, copied there in one piece."""
    import torch

    parts = list(batches)
    if not parts:
        return
    whole = torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False)).to(device)
    start = 0
    for part in parts:
        yield whole[start:start + len(part)]
        start += len(part)


def shuffled_batches(rows: np.ndarray, epoch: int, steps: int | None, batch_size: int,
                     seed: int) -> Iterator[np.ndarray]:
    """The rows of one training epoch, in batches, depending only on ``(seed, epoch)``.

    ``steps`` full batches (the lecture's ``steps_per_epoch``), drawn without repetition
    from a permutation of ``rows``, and from the next permutation when one pass is not
    enough; ``steps=None`` is one pass with a short last batch.
    """
    rng = np.random.default_rng([seed, epoch])
    if steps is None:
        order = rng.permutation(rows)
        steps = -(-len(order) // batch_size)
    else:
        need = steps * batch_size
        passes = -(-need // len(rows))
        order = np.concatenate([rng.permutation(rows) for _ in range(passes)])[:need]
    for i in range(steps):
        yield order[i * batch_size:(i + 1) * batch_size]
