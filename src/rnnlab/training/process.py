"""Process-wide torch switches, set only inside a ``with`` block that puts them back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


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
