"""training.process: the switches a fit sets for its duration."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from rnnlab.training.process import keep_freed_buffers

def steps():    # a training step's pattern: large tensors of a few sizes, freed each time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a = torch.empty(3_000_000).fill_(1.0)
        b = torch.empty(4_000_000).fill_(1.0)
        del a
        c = torch.empty(3_500_000).fill_(1.0)
        del b, c
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(steps())
assert keep_freed_buffers()
steps()
print(steps())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_buffers_stops_the_page_faults_of_fresh_large_buffers():
    """With glibc's defaults every 12-16 MB tensor is a fresh mmap whose pages fault on
    first touch (a GRU step lost half its time to that); after ``keep_freed_buffers`` the
    freed blocks serve the next steps."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True)
    default, kept = (int(line) for line in done.stdout.split())
    assert default > 10_000, done.stdout          # 30 tensors of 3,000-4,000 pages each
    assert kept < 200, done.stdout
