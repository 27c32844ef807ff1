"""Keep a training process's memory near what it uses.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB
on 64-bit), after which batch-sized buffers (a (1024, 240, 14) float32 batch is 13.8 MB)
come from the heap and are kept there after use. Measured on the full-size Jena windows:
one validation pass of the dense model took a process from 390 MB to 1,544 MB of RSS, and
a one-epoch training stage peaked at 1.8-2.7 GB. A fixed 1 MiB threshold hands every
large buffer back to the system when it is freed: 390 MB, the same speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3        # glibc's mallopt parameter numbers (malloc.h)
_done = False


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations above ``threshold`` bytes by mmap (returned on free);
    True when set, False where the C library is not glibc (nothing to do there)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    return _done
