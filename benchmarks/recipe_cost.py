"""Training cost and test metrics of recipes on a zoo: seconds per epoch per 1,000 models.

Run: ``python benchmarks/recipe_cost.py --zoo small --epochs 5 --config configs/nwpa_vision.yaml
[--config configs/statnn_mlp_vision.yaml ...] [--set data.init_args.target=classes ...]``.

Each recipe is trained in this process through ``nwa.fit`` (CSV logger, no progress bar) for
``--epochs`` epochs, then its best checkpoint is tested. Printed per recipe: training models, the
training loop's seconds per epoch (epochs after the first, which also reads and caches the zoo;
no start-up, validation or checkpointing, as ``nwa.suite.execute.EpochTimer`` counts them),
that time per 1,000 training models, the process's peak RSS so far, and the test metrics. With
``--repeat N`` the recipes run N times in turn (alternating, since the machine may be shared) and
each figure is the median over the repeats. ``--json FILE`` also writes every run's figures;
``--threads N`` sets torch's CPU threads (on a machine shared with other work, one thread per
process avoids waiting at every operation's thread barrier).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nwa.fit import run as fit  # noqa: E402


class EpochTimes(Callback):
    """Wall time of each training epoch alone (no start-up, validation or checkpointing)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def run_recipe(config: str, zoo: str, epochs: int, sets: list[str], work: Path) -> dict:
    """Train and test one recipe; return its cost and test metrics."""
    overrides = []
    for item in sets:
        key, _, value = item.partition("=")
        overrides += [f"--{key}", value]
    args = [
        *("--config", config, "--data.init_args.zoo", zoo),
        *("--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(work)),
        *("--trainer.logger", "lightning.pytorch.loggers.CSVLogger"),
        *("--trainer.logger.save_dir", str(work)),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
        "--trainer.callbacks+=__main__.EpochTimes",
        *overrides,
    ]
    cli, results = fit(args)
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, EpochTimes))
    n_train = len(cli.datamodule.dataset("train"))
    steady = timer.times[1:] or timer.times
    per_epoch = statistics.median(steady)
    return {
        "config": config,
        "sets": sets,
        "train_models": n_train,
        "epochs": len(timer.times),
        "first_epoch_s": round(timer.times[0], 3),
        "s_per_epoch": round(per_epoch, 3),
        "s_per_epoch_per_1000": round(per_epoch / n_train * 1000, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "test": {k: round(float(v), 4) for k, v in (results[0] if results else {}).items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", required=True, help="recipe (repeatable)")
    p.add_argument("--zoo", default="small", help="zoo name or directory")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeat", type=int, default=1, help="runs of every recipe, alternating")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE override, all recipes")
    p.add_argument("--json", type=Path, help="write every run's figures here")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="nwa-cost-") as tmp:
        for r in range(a.repeat):
            for i, config in enumerate(a.config):
                work = Path(tmp) / f"{r}-{i}"
                runs.append(run_recipe(config, a.zoo, a.epochs, a.set, work))
                print(json.dumps(runs[-1]), flush=True)
    print("\nrecipe | train models | s / epoch | s / epoch / 1,000 models | test metrics")
    for config in a.config:
        mine = [r for r in runs if r["config"] == config]
        med = {
            k: statistics.median(r[k] for r in mine)
            for k in ("s_per_epoch", "s_per_epoch_per_1000")
        }
        keys = sorted(mine[0]["test"])
        test = {k: round(statistics.median(r["test"][k] for r in mine), 4) for k in keys}
        shown = {k: v for k, v in test.items() if k.split("/")[-1] in ("acc", "r2", "f1", "mae")}
        print(
            f"{config} | {mine[0]['train_models']} | {med['s_per_epoch']:.3f} | "
            f"{med['s_per_epoch_per_1000']:.2f} | {shown}"
        )
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
