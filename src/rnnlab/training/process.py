"""Process-wide torch switches, set only inside a ``with`` block that puts them back."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# glibc's mallopt parameters and defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_MMAP_THRESHOLD = 32 * 1024 * 1024       # glibc's largest on 64-bit
_KEPT_TRIM_THRESHOLD = 1024 * 1024 * 1024


def flushing_denormals() -> bool:
    """Whether torch flushes denormal floats to zero now (torch has no getter: a denormal
    times one comes back zero exactly when it does)."""
    return float(torch.tensor([1e-40], dtype=torch.float32).mul(1.0)) == 0.0


@contextmanager
def denormals_flushed(flush: bool) -> Iterator[None]:
    """Within the block, torch flushes denormals to zero (``flush``) or keeps them; the
    process's own setting and thread count come back on exit."""
    before, threads = flushing_denormals(), torch.get_num_threads()
    torch.set_flush_denormal(flush)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
        torch.set_num_threads(threads)


def _mallopt():
    """glibc's ``mallopt``, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def keep_freed_buffers() -> bool:
    """From now on, for the rest of the process, freed buffers up to 32 MB stay in the
    process for the next allocation instead of going back to the system. Returns whether
    it could (glibc); elsewhere it does nothing.

    A training step allocates its large tensors afresh (a Jena GRU step: about 45 MB of
    input projections, saved gates and their gradients), and glibc serves blocks over its
    mmap threshold with a fresh ``mmap`` whose every page faults on first touch. glibc
    raises that threshold by itself after such a block is freed, but not far enough for a
    step's mix of sizes: measured on this project's 2-core machine, a GRU(32) step at batch
    128 took 34.3 ms on one thread with glibc's defaults and 16.9 ms with this. It is
    process-wide and for good: once a program sets the thresholds, glibc never adjusts them
    again, so there is no default to go back to (setting them back to 128 KiB, tried first,
    made every later step fault its pages in: 2x slower than glibc's defaults). ``fit``
    calls it; a stage's process has nothing else to run afterwards.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt(_M_MMAP_THRESHOLD, _KEPT_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _KEPT_TRIM_THRESHOLD)
    return True
