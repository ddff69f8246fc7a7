"""NWPA's message passing: the block-wise WeightAttention against its torch_geometric form.

Run: ``python benchmarks/nwpa_layers.py [--arch resnet_tiny --arch vit_tiny] [--batch 16]
[--repeat 3] [--threads 1]``.

A batch of whole-network graphs (timm models of the zoo tables, random weights) goes through a
3-layer NWPA (hidden 64) forward and backward. Variants, each in a fresh process (alternating,
``--repeat`` rounds), same parameters and the same function:

- ``blocks``: :meth:`WeightAttention.forward_blocks` (same-shaped weight blocks as batched
  matrix products; per-edge tensors ``[E, heads * M]``);
- ``edges``: :meth:`WeightAttention.forward_edges`, a ``torch_geometric`` ``MessagePassing`` over
  the edge list (per-edge ``[E, hidden]`` tensors);
- ``transformer``: ``torch_geometric``'s ``TransformerConv`` with edge features (another function:
  the library layer closest to WeightAttention), through :class:`PyGConv`.

Printed per variant: seconds per training step (median of the steps after the first), models per
second, and the peak resident memory the step adds over the process before it (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("blocks", "edges", "transformer")


def measure(arch: str, batch: int, variant: str, steps: int, threads: int) -> dict:
    """One variant in this process: seconds per step and the memory a step adds."""
    import torch
    from torch_geometric.data import Batch

    from nwa.metanets import NWPA
    from nwa.metanets.graph_layers import PyGConv
    from nwa.weights.graph import graph_shapes_of
    from nwa.weights.graph_archs import plan_graph
    from nwa.zoo.classifiers import build_model, state_tensors

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    state = state_tensors(build_model(arch, 10, 1, 28))
    plan = plan_graph({k: v.shape for k, v in state.items()}, arch)
    gen = torch.Generator().manual_seed(0)
    noisy = [{k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}]
    graphs = Batch.from_data_list([plan.build(noisy[0]) for _ in range(batch)])
    layer = None
    if variant == "transformer":
        layer = lambda h, e: PyGConv(h, e, "transformer")  # noqa: E731
    enc = NWPA(graph_shapes_of([plan]), hidden=64, layers=3, layer=layer)
    for m in enc.layers:
        if hasattr(m, "blockwise"):
            m.blockwise = variant == "blocks"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        enc(graphs).square().sum().backward()
        times.append(time.perf_counter() - t)
        enc.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    per_step = statistics.median(times[1:])
    return {
        "arch": arch,
        "variant": variant,
        "batch": batch,
        "edges_per_model": plan.num_edges,
        "s_per_step": round(per_step, 3),
        "models_per_s": round(batch / per_step, 2),
        "peak_mb_added": round(peak / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="zoo architecture (repeatable)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variant", action="append", choices=VARIANTS)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process
    a = p.parse_args()
    archs, variants = a.arch or ["resnet_tiny", "vit_tiny"], a.variant or list(VARIANTS)
    if a.one:
        print(json.dumps(measure(archs[0], a.batch, variants[0], a.steps, a.threads)))
        return
    rows = []
    for _ in range(a.repeat):
        for arch in archs:
            for variant in variants:
                cmd = [sys.executable, __file__, "--one", "--arch", arch, "--variant", variant]
                cmd += [
                    "--batch",
                    str(a.batch),
                    "--steps",
                    str(a.steps),
                    "--threads",
                    str(a.threads),
                ]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print(
        f"\narch | variant | edges / model | s / step (batch {a.batch}) | models / s | peak MB added"
    )
    print("---|---|---|---|---|---")
    for arch in archs:
        for variant in variants:
            mine = [r for r in rows if r["arch"] == arch and r["variant"] == variant]
            s = statistics.median(r["s_per_step"] for r in mine)
            mb = statistics.median(r["peak_mb_added"] for r in mine)
            print(
                f"{arch} | {variant} | {mine[0]['edges_per_model']:,} | {s:.3f} | "
                f"{a.batch / s:.1f} | {mb:,.0f}"
            )


if __name__ == "__main__":
    main()
