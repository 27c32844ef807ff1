"""Where a training step's time goes: forward (with the loss), backward and RMSprop.

Run by hand, on a quiet machine (about half a minute per variant):

    PYTHONPATH=src python bench/bench_parts.py [--variants dense gru] [--steps 2000]

Builds each variant as bench/speed_worker.py does (random inputs of the real shapes, batch
128, the engine's RMSprop), runs ``--warmup`` untimed steps, then times each part of
``--steps`` steps with ``time.perf_counter`` on each thread count of ``--threads`` and
prints the mean microseconds of each part. Point PYTHONPATH at another checkout's src/ to
time that one (bench_ab compares whole steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_worker import TorchSide  # noqa: E402


def parts(side: TorchSide, variant: str, steps: int, warmup: int, threads: int) -> np.ndarray:
    s = side.setup(variant)
    model, opt, loss_of, x, y = s["model"], s["opt"], s["loss"], s["x"], s["y"]
    torch.set_num_threads(threads)
    model.train()
    times = []
    for i in range(warmup + steps):
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model(x), y)
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        opt.step()
        stepped = time.perf_counter()
        loss.item()
        if i >= warmup:
            times.append((forward - began, backward - forward, stepped - backward,
                          time.perf_counter() - began))
    return np.mean(times, axis=0) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["dense"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    args = parser.parse_args()
    side = TorchSide()
    print("| variant | threads | forward + loss us | backward us | RMSprop us | step us |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        for threads in args.threads:
            f, b, o, t = parts(side, variant, args.steps, args.warmup, threads)
            print(f"| {variant} | {threads} | {f:.0f} | {b:.0f} | {o:.0f} | {t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
