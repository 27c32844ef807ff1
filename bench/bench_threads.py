"""train.threads under load: one thread, every core, and ``auto`` (rnnlab.training.threads) side by side.

Run by hand:  PYTHONPATH=src python bench/bench_threads.py [--variant gru] [--steps 250]
              [--load 0 1 2]

For each background load (that many ``while True: pass`` processes), the same training
loop (batch 128 of the variant's Jena shape, forward + backward + RMSprop) runs ``--steps``
steps with the thread count fixed at 1, fixed at every core, and tuned by ``auto``; it
prints the mean and median ms per step and, for ``auto``, how many steps ran on each count.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from rnnlab.core.config import from_mapping
from rnnlab.nn.models import ModelSpec, build_model
from rnnlab.training.process import keep_freed_buffers
from rnnlab.training.threads import FixedThreads, ThreadTuner, available_cores

ROOT = Path(__file__).resolve().parents[1]


def run(variant: str, control, steps: int) -> list[float]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    spec = from_mapping(ModelSpec, params["models"][variant], where=variant)
    torch.manual_seed(0)
    model = build_model(spec, 14, 240)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    x, y = torch.randn(128, 240, 14), torch.randn(128)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - began)
        control.step(times[-1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="gru")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--load", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    keep_freed_buffers()                  # as the training engine's fit does
    cores = available_cores()
    print(f"{args.variant}, {args.steps} training steps each, {cores} cores; ms per step "
          "(first 5 steps left out)")
    print("| busy processes | threads | mean | median | steps per thread count |")
    print("|---|---|---|---|---|")
    for load in args.load:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(load)]
        try:
            # Each control made just before its run: making one sets the thread count, so
            # building all three first ran every row at the last one's count.
            for label, make in (("1", lambda: FixedThreads(1)),
                                (str(cores), lambda: FixedThreads(cores)),
                                ("auto", lambda: ThreadTuner(cores))):
                control = make()
                times = run(args.variant, control, args.steps)[5:]
                used = Counter(getattr(control, "used", []))
                print(f"| {load} | {label} | {statistics.mean(times) * 1e3:.1f} | "
                      f"{statistics.median(times) * 1e3:.1f} | "
                      f"{', '.join(f'{n}: {c}' for n, c in sorted(used.items()))} |", flush=True)
        finally:
            for p in busy:
                p.kill()


if __name__ == "__main__":
    main()
