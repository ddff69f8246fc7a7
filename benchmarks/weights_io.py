"""Weight I/O benchmark: lazy single-tensor reads, DataModule overhead, and memory on a big zoo.

Run: ``python benchmarks/weights_io.py [--workdir DIR] [--zoo-gb 2.0]``. Prints three figures:

1. Reading one ~1 MB tensor from a >= 200 MB checkpoint, as a fraction of reading the whole
   file (cold page cache, evicted with ``posix_fadvise(DONTNEED)``, and warm).
2. One epoch over a zoo (one layer per model) through ModelZooDataModule versus a bare
   ``safe_open(...).get_tensor(...)`` loop over the same tensors, in models per second (medians
   of ``--rounds`` rounds that alternate the two).
3. Peak RSS while iterating a zoo of ``--zoo-gb`` GB (measured in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nwa.weights.io import open_weights  # noqa: E402
from nwa.zoo.manifest import ZooMeta, ZooWriter  # noqa: E402


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn, repeats: int = 5, cold_path: Path | None = None) -> float:
    best = float("inf")
    for _ in range(repeats):
        if cold_path is not None:
            evict(cold_path)
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_single_tensor(work: Path) -> dict[str, float]:
    path = work / "big.safetensors"
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"block{i}.weight": torch.randn(1024, 1024, generator=gen) for i in range(52)
    }  # 4 MB each
    tensors["probe.weight"] = torch.randn(512, 512, generator=gen)  # 1 MB
    save_file(tensors, str(path))
    size_mb = path.stat().st_size / 2**20

    # get() reads the tensor into memory it owns (one positioned read of its bytes), so a read
    # needs nothing more. (A lazy view of a memory map would need a clone() to read anything.)
    def one() -> None:
        with open_weights(path) as src:
            src.get("probe.weight")

    def whole() -> None:
        with open_weights(path) as src:
            for n in src.names():
                src.get(n)

    out = {"file_mb": size_mb}
    for mode, cold in (("cold", path), ("warm", None)):
        if cold is None:
            whole()  # warm the cache
        t1, tw = timed(one, cold_path=cold), timed(whole, repeats=3, cold_path=cold)
        out[f"{mode}_one_s"], out[f"{mode}_whole_s"], out[f"{mode}_ratio"] = t1, tw, t1 / tw
    path.unlink()
    return out


def write_zoo(root: Path, n_models: int, mb_per_model: float) -> None:
    """A zoo whose members hold one ~1 MB probe layer and padding layers up to ``mb_per_model``."""
    writer = ZooWriter(
        root, ZooMeta(name="bench", classes=["a", "b"], trees={"t": {"root": "", "arch": "mlp"}})
    )
    gen = torch.Generator().manual_seed(0)
    pad = max(0, int((mb_per_model - 1) * 2**20 / 4 / 1024))
    for i in range(n_models):
        mid = f"m{i:05d}"
        state = {
            "probe.weight": torch.randn(512, 512, generator=gen),
            "pad.weight": torch.randn(pad, 1024, generator=gen),
        }
        writer.add(
            dict(
                id=mid,
                path=writer.save_weights(mid, state),
                tree="t",
                arch="mlp",
                split="train",
                classes=[i % 2],
            )
        )
    writer.finalize()


def bench_epoch(root: Path, repeats: int = 5) -> dict[str, float]:
    from nwa.data import ModelZooDataModule

    dm = ModelZooDataModule(
        str(root),
        layers="probe.weight",
        normalize=False,
        cache=False,
        batch_size=32,
        val_splits=["train"],
    )
    paths = [root / p for p in dm.rows["path"]]

    def bare() -> None:
        # get_tensor alone returns a lazy view of the memory map; clone() makes the read real.
        for p in paths:
            with safe_open(str(p), framework="pt") as f:
                f.get_tensor("probe.weight").clone()

    def lazy() -> None:
        for p in paths:
            with safe_open(str(p), framework="pt") as f:
                f.get_tensor("probe.weight")

    def module() -> None:
        for _ in dm.train_dataloader():
            pass

    bare()
    module()
    # The loops alternate, round after round, so other work on the machine slows both alike;
    # each figure is the median over the rounds.
    rounds = [(timed(bare, 1), timed(lazy, 1), timed(module, 1)) for _ in range(repeats)]
    t_bare, t_lazy, t_dm = (statistics.median(r[k] for r in rounds) for k in range(3))
    n = len(paths)
    return {
        "models": n,
        "rounds": repeats,
        "bare_models_per_s": n / t_bare,
        "lazy_models_per_s": n / t_lazy,
        "datamodule_models_per_s": n / t_dm,
        "ratio": statistics.median(dm / b for b, _, dm in rounds),
    }


def peak_rss(root: Path) -> dict[str, float]:
    # ru_maxrss is no good here: Linux carries the parent's peak RSS into a child across exec,
    # so it would report this (large) benchmark process. VmHWM is the child's own peak, and
    # clear_refs resets it to the current RSS just before the epoch.
    code = (
        "import json\n"
        "from nwa.data import ModelZooDataModule\n"
        "def mb(field):\n"
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ':')) / 1024\n"
        f"dm = ModelZooDataModule({str(root)!r}, layers='probe.weight', normalize=False, cache=False, batch_size=32, val_splits=['train'])\n"
        "with open('/proc/self/clear_refs', 'w') as f:\n"
        "    f.write('5')\n"
        "base = mb('VmRSS')\n"
        "n = sum(b['y'].shape[0] for b in dm.train_dataloader())\n"
        "print(json.dumps({'n': n, 'before_mb': base, 'peak_mb': mb('VmHWM')}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--zoo-gb", type=float, default=2.0)
    parser.add_argument("--epoch-models", type=int, default=500)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds of the epoch comparison [2]"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        r = bench_single_tensor(work)
        print(
            f"[1] one 1 MB tensor from a {r['file_mb']:.0f} MB file: cold {r['cold_one_s'] * 1e3:.1f} ms vs whole {r['cold_whole_s'] * 1e3:.0f} ms "
            f"({100 * r['cold_ratio']:.2f} %); warm {r['warm_one_s'] * 1e3:.2f} ms vs {r['warm_whole_s'] * 1e3:.0f} ms ({100 * r['warm_ratio']:.2f} %)"
        )
        write_zoo(work / "small", args.epoch_models, 1.0)
        e = bench_epoch(work / "small", args.rounds)
        print(
            f"[2] epoch over {e['models']} models, one 1 MB layer each (medians of {e['rounds']} alternating rounds): "
            f"DataModule {e['datamodule_models_per_s']:.0f} models/s; "
            f"bare safe_open + get_tensor loop {e['bare_models_per_s']:.0f} models/s (DataModule takes {e['ratio']:.2f}x its time); "
            f"lazy views never read {e['lazy_models_per_s']:.0f} models/s"
        )
        n_big = int(args.zoo_gb * 1024 / 10)
        write_zoo(work / "big", n_big, 10.0)
        size_gb = sum(p.stat().st_size for p in (work / "big" / "weights").iterdir()) / 2**30
        m = peak_rss(work / "big")
        print(
            f"[3] iterating a {size_gb:.2f} GB zoo ({m['n']} models, batch 32): peak RSS {m['peak_mb']:.0f} MB, "
            f"{m['peak_mb'] - m['before_mb']:.0f} MB above the {m['before_mb']:.0f} MB the process held before the epoch"
        )


if __name__ == "__main__":
    main()
