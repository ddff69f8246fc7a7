"""Adam's step on one large layer, fused (one kernel) against the per-tensor form.

The Dense expert on default_vision's ResNet layer is a 589,824 x 128 linear map (75.5 M
weights); its training steps are optimizer-bound. Prints the median seconds a step of each,
alternating, and their ratio: ``python benchmarks/adam_step.py [--threads 1] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def step_seconds(fused: bool, steps: int, in_features: int, batch: int) -> float:
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, 128)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-5, fused=fused or None)
    x, y = torch.randn(batch, in_features), torch.randn(batch, 128)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])  # the first steps allocate Adam's state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--in-features", type=int, default=256 * 256 * 9)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for fused in (False, True):
            res[fused].append(step_seconds(fused, args.steps, args.in_features, args.batch))
    per, fus = statistics.median(res[False]), statistics.median(res[True])
    print(f"Linear({args.in_features}, 128), batch {args.batch}, {args.threads} thread(s)")
    print(f"per-tensor Adam: {per:.3f} s a step; fused: {fus:.3f} s; ratio {per / fus:.2f}x")


if __name__ == "__main__":
    main()
