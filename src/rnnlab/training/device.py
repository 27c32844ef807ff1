"""``device: auto | cpu | cuda | cuda:N | mps`` -> a torch.device, or an error naming what exists."""

from __future__ import annotations

import re

import torch

from rnnlab.core.errors import RnnlabError


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str) -> torch.device:
    """``auto`` takes the first of cuda:0, mps, cpu that this machine has."""
    available = available_devices()
    name = name.strip().lower()
    if name == "auto":
        for candidate in ("cuda:0", "mps", "cpu"):
            if candidate in available:
                return torch.device(candidate)
    if name == "cuda":
        name = "cuda:0"
    if not re.fullmatch(r"cpu|mps|cuda:\d+", name):
        raise RnnlabError(f"params.yaml: device {name!r} is not one of auto, cpu, cuda, "
                          f"cuda:N, mps; this machine has {', '.join(available)}")
    if name not in available:
        raise RnnlabError(f"params.yaml: device {name!r} is not available here; this machine "
                          f"has {', '.join(available)} (use device: auto to take the best one)")
    return torch.device(name)
