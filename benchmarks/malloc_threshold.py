"""Training steps of a large linear metanetwork with glibc's default allocator policy against
:func:`nwa.cli.keep_freed_memory` (freed blocks up to 1 GiB kept for reuse).

Run: ``python benchmarks/malloc_threshold.py [--inputs 589824] [--dim 128] [--batch 47]
[--steps 6] [--repeat 3]``. The default shape is Dense on ``layer4.0.conv2.weight`` of
``default_vision``'s ResNets (256 x 256 x 3 x 3 inputs, 128 outputs; 75 M parameters) with
AdamW, one torch thread. Each setting runs in its own process, alternating, ``--repeat`` times;
printed per setting: the median seconds per step (wall, user, kernel).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
if {keep}:
    from nwa.cli import keep_freed_memory
    keep_freed_memory()
import torch
torch.set_num_threads(1)
lin = torch.nn.Linear({inputs}, {dim})
opt = torch.optim.AdamW(lin.parameters(), 1e-3)
x = torch.randn({batch}, {inputs})
def step():
    loss = lin(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
step(); step()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range({steps}):
    step()
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
n = {steps}
print(json.dumps({{"wall": (t1 - t0) / n, "user": (r1.ru_utime - r0.ru_utime) / n,
                  "kernel": (r1.ru_stime - r0.ru_stime) / n}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=589824)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=47)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    root = str(Path(__file__).resolve().parents[1])
    runs: dict[str, list[dict[str, float]]] = {"glibc default": [], "keep_freed_memory": []}
    for _ in range(a.repeat):
        for name, keep in (("glibc default", False), ("keep_freed_memory", True)):
            code = CHILD.format(
                root=root,
                keep=keep,
                **{k: getattr(a, k) for k in ("inputs", "dim", "batch", "steps")},
            )
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Linear {a.inputs} -> {a.dim}, batch {a.batch}, AdamW, 1 thread; median of {a.repeat}")
    print(f"{'setting':<20}{'wall s/step':>12}{'user':>8}{'kernel':>8}")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "user", "kernel")}
        print(f"{name:<20}{med['wall']:>12.3f}{med['user']:>8.3f}{med['kernel']:>8.3f}")
    base, kept = (statistics.median(r["wall"] for r in runs[n]) for n in runs)
    print(f"speed-up: {base / kept:.2f}x")


if __name__ == "__main__":
    main()
