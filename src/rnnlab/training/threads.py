"""How many CPU threads training uses: ``train.threads: auto`` (the default) or a number.

Two threads buy 30-40 % on a quiet 2-core machine, but when another process holds a
core the same two threads run about twice as slowly as one: every parallel op ends in a
barrier that waits for the thread sharing the busy core (measured in docs/benchmarks.md).
No count fixed at start-up is right for both, so ``auto`` measures: every ``period``
steps it times a few steps at a neighbouring count, between steps at the current one, and
keeps whichever ran faster.
Results do not depend on the count (the fused kernels and the ops around them are
bit-identical for any count; tests/test_threads.py checks a whole training run), so the
choice changes only the speed.

``OMP_NUM_THREADS`` (what ``dvc queue`` workers are given) fixes the count and turns the
tuning off, as does an integer ``train.threads``.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnnlab.core.errors import RnnlabError
from rnnlab.training.params import MAX_THREADS

log = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:   # cgroup v2: "max 100000" (no quota) or "<quota> <period>" in microseconds
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class ThreadPolicy:
    """``threads`` for torch, and whether ``auto`` may move between 1 and ``threads``."""
    threads: int
    tuned: bool
    source: str           # where the number came from, for the log and the tracking run

    def describe(self) -> str:
        return (f"{self.threads} CPU threads" + (", tuned while training (train.threads: auto)"
                                                 if self.tuned else f" ({self.source})"))


def resolve_threads(setting: int | str) -> ThreadPolicy:
    """``train.threads`` -> the policy; ``OMP_NUM_THREADS`` wins over ``auto``."""
    if setting != "auto":
        if not 1 <= int(setting) <= MAX_THREADS:      # TrainParams checks it first
            raise RnnlabError(f"train.threads: {setting} is not from 1 to {MAX_THREADS}")
        return ThreadPolicy(int(setting), False, "train.threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        # A digit string of any length: its value is not read unless it is short.
        if not env.isdigit() or len(env) > 6 or not 1 <= int(env) <= MAX_THREADS:
            shown = env if len(env) <= 20 else env[:20] + "..."
            raise RnnlabError(f"OMP_NUM_THREADS={shown!r} is not a number of threads from 1 "
                              f"to {MAX_THREADS}; unset it or set it to the number of threads "
                              "to use")
        return ThreadPolicy(int(env), False, "OMP_NUM_THREADS")
    cores = available_cores()
    return ThreadPolicy(cores, cores > 1, "available cores")


@dataclass
class ThreadTuner:
    """Moves torch's thread count to whichever of its neighbours trains faster.

    Call :meth:`step` after every training step with its wall time. A trial runs a
    neighbouring count for ``1 + trial`` steps, then the current count again for
    ``1 + trial`` steps (the first step after each switch warms the thread team up and is
    not counted), and moves to the neighbour if its mean step beat the mean of the
    ``trial`` steps before and the ``trial`` steps after it by ``margin``: timing the
    current count on both sides keeps a load that comes or goes mid-trial from deciding.
    Means, not medians: beside busy processes two threads run most steps about as fast as
    one and a few several times slower (a parallel region waits for the thread the busy
    process holds off its core), and the median missed those steps: `bench_threads
    --variant gru --load 2` gave two threads a median of 13.7 ms and a mean of 23.4,
    against 9.1 and 12.8 for one (2026-12-07), and the median-led tuner kept two. Eight
    steps a trial, every 200 steps: with four every 100 the means were still too noisy
    (`auto` kept two threads for 235 of 250 steps beside two busy processes); with eight
    every 200, 370 of 400 steps ran on one thread there (12.9 ms a step, one thread fixed
    12.4, two 25.5), and on a quiet machine 382 of 400 on two (4.3 ms, two fixed 4.0).
    Trials come every ``period`` steps (the first after ``first_trial``).
    """
    max_threads: int
    period: int = 200
    trial: int = 8
    margin: float = 0.08
    first_trial: int = 12           # the first trial comes early: a busy start is common
    current: int = 0
    used: list[int] = field(default_factory=list)     # thread count of each step
    _before: list[float] = field(default_factory=list)
    _tried: list[float] = field(default_factory=list)
    _after: list[float] = field(default_factory=list)
    _trying: int | None = None
    _phase: str = "run"             # run -> trial -> after -> run
    _since: int = 0
    _direction: int = -1

    def __post_init__(self) -> None:
        self.current = self.current or self.max_threads
        torch.set_num_threads(self.current)

    def step(self, seconds: float) -> None:
        self.used.append(torch.get_num_threads())
        if self._phase == "run":
            self._before = (self._before + [seconds])[-self.trial:]
            self._since += 1
            due = self.first_trial if len(self.used) <= self.first_trial else self.period
            if self._since >= due and self.max_threads > 1:
                self._start_trial()
        elif self._phase == "trial":
            self._tried.append(seconds)
            if len(self._tried) == 1 + self.trial:
                self._phase, self._after = "after", []
                torch.set_num_threads(self.current)
        else:
            self._after.append(seconds)
            if len(self._after) == 1 + self.trial:
                self._decide()

    def _start_trial(self) -> None:
        candidate = self.current + self._direction
        if not 1 <= candidate <= self.max_threads:
            self._direction = -self._direction
            candidate = self.current + self._direction
        self._trying, self._tried, self._phase = candidate, [], "trial"
        torch.set_num_threads(candidate)

    def _decide(self) -> None:
        assert self._trying is not None   # a trial ran before this
        tried = statistics.fmean(self._tried[1:])
        current = statistics.fmean(self._before + self._after[1:])
        if tried < (1 - self.margin) * current:
            log.debug("threads: %d -> %d (%.1f vs %.1f ms/step)", self.current, self._trying,
                      current * 1e3, tried * 1e3)
            self.current = self._trying      # keep going the same way next time
            torch.set_num_threads(self.current)
        else:
            self._direction = -self._direction
        self._phase, self._before, self._since = "run", [], 0

    def mean_threads(self, last: int) -> float:
        """The mean thread count of the last ``last`` steps."""
        window = self.used[-last:] if last else []
        return sum(window) / len(window) if window else float(self.current)


class FixedThreads:
    """The same interface for a fixed count."""

    def __init__(self, threads: int) -> None:
        self.current = threads
        torch.set_num_threads(threads)

    def step(self, seconds: float) -> None:
        pass

    def mean_threads(self, last: int) -> float:
        return float(self.current)


def thread_control(policy: ThreadPolicy) -> ThreadTuner | FixedThreads:
    return ThreadTuner(policy.threads) if policy.tuned else FixedThreads(policy.threads)

