"""ProbeX against Dense on the ViT trees with each method's size and weight decay chosen on
validation, not only at the recipes' defaults.

Run: ``python benchmarks/vit_capacity_grid.py [--zoo default_vision] [--out runs/vit_grid]``.
Every setting of a small grid (ProbeX ranks and representation size, Dense representation size;
weight decay for both) is trained per ViT tree over 3 seeds with the bench's per-tree command
(``python -m nwa.fit`` with the recipe, the bench's ViT layers and epochs). Per method, the
setting with the lowest mean best validation loss is selected; the table prints validation loss
and test element-wise accuracy of every setting, the selected ones marked. Each finished run is
one JSON file under ``--out``, so a rerun skips it. Two runs at a time, one thread each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TREES = ("vision-vit_tiny-0", "vision-vit_tiny-1")
SEEDS = (0, 1, 2)
LAYERS = "blocks.*.mlp.fc*.weight"  # the bench's ViT family
DECAYS = (1e-5, 1e-3, 1e-2)
ENC = "--model.init_args.encoder.init_args."


def grid() -> list[tuple[str, str, str, int, list[str]]]:
    """(method, setting, recipe, epochs, overrides); the recipes' defaults are among them."""
    out = []
    for (r_u, r_v, dim), wd in itertools.product(
        ((64, 64, 128), (32, 32, 64), (16, 16, 32)), DECAYS
    ):
        overrides = [f"{ENC}rank_u", str(r_u), f"{ENC}rank_v", str(r_v), f"{ENC}dim", str(dim)]
        overrides += ["--model.init_args.weight_decay", str(wd)]
        out.append(
            (
                "ProbeX",
                f"r_U={r_u} r_V={r_v} r_T={dim} wd={wd:g}",
                "probex_vision.yaml",
                80,
                overrides,
            )
        )
    for dim, wd in itertools.product((128, 32), DECAYS):
        overrides = [f"{ENC}dim", str(dim), "--model.init_args.weight_decay", str(wd)]
        out.append(("Dense", f"dim={dim} wd={wd:g}", "dense_vision.yaml", 60, overrides))
    return out


def result_path(out: Path, method: str, setting: str, tree: str, seed: int) -> Path:
    return out / f"{method}-{setting.replace(' ', '_')}-{tree}-s{seed}.json"


def one(job: tuple) -> None:
    import torch

    torch.set_num_threads(1)
    from nwa.fit import run

    (method, setting, recipe, epochs, overrides), tree, seed, zoo, out = job
    path = result_path(out, method, setting, tree, seed)
    args = [
        "--config", str(CONFIGS / recipe),
        "--data.init_args.zoo", zoo,
        "--data.init_args.arch", "vit_*",
        "--data.init_args.layers", LAYERS,
        "--data.init_args.target", "classes",
        "--data.init_args.trees", f"[{tree}]",
        "--trainer.max_epochs", str(epochs),
        "--seed_everything", str(seed),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(out / "checkpoints" / path.stem),
        *overrides,
    ]  # fmt: skip
    cli, results = run(args)
    row = {"method": method, "setting": setting, "tree": tree, "seed": seed}
    row["val_loss"] = float(cli.trainer.checkpoint_callback.best_model_score)
    row.update({k: float(v) for k, v in results[0].items()})
    shutil.rmtree(out / "checkpoints" / path.stem, ignore_errors=True)  # only the numbers are kept
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.rename(path)


def table(out: Path) -> str:
    import pandas as pd

    rows = pd.DataFrame([json.loads(p.read_text()) for p in out.glob("*.json")])
    g = rows.groupby(["method", "setting", "tree"])
    per_tree = g.agg(val=("val_loss", "mean"), acc=("test/acc", "mean"), n=("seed", "size"))
    wide = per_tree.unstack("tree")
    wide[("mean val", "")] = wide["val"].mean(axis=1)
    lines = ["| method | setting | " + " | ".join(f"val loss {t} | test acc {t}" for t in TREES)]
    lines[0] += " | mean val loss | selected |"
    lines.append("|" + "---|" * (4 + 2 * len(TREES)))
    for method, block in wide.groupby(level="method"):
        best = block[("mean val", "")].idxmin()
        for key, r in block.sort_values(("mean val", "")).iterrows():
            cells = " | ".join(f"{r[('val', t)]:.4f} | {r[('acc', t)]:.3f}" for t in TREES)
            mark = "yes" if key == best else ""
            lines.append(f"| {method} | {key[1]} | {cells} | {r[('mean val', '')]:.4f} | {mark} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="default_vision", help="zoo name or folder")
    parser.add_argument("--out", type=Path, default=Path("runs/vit_grid"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    from nwa.zoo.cache import zoo_path

    zoo = str(zoo_path(args.zoo))  # built (or found) once, before the workers start
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (g, t, s, zoo, args.out)
        for g in grid()
        for t in TREES
        for s in SEEDS
        if not result_path(args.out, g[0], g[1], t, s).exists()  # finished in an earlier call
    ]
    from tqdm import tqdm

    with Pool(args.jobs, maxtasksperchild=8) as pool:
        for _ in tqdm(pool.imap_unordered(one, jobs), total=len(jobs), desc="runs"):
            pass
    print(table(args.out))


if __name__ == "__main__":
    main()
