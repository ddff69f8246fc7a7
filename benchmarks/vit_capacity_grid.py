"""ProbeX against Dense on the ViT trees with each method's size and weight decay chosen on
validation, not only at the recipes' defaults.

Run: ``python benchmarks/vit_capacity_grid.py [--zoo default_vision] [--out runs/vit_grid]
[--epochs N]``. Every setting of a small grid (ProbeX ranks and representation size, Dense
representation size; weight decay for both) is trained per ViT tree over 3 seeds as a run of the
bench (``nwa.suite``: the recipe, the bench's ViT layers, one ``result.json`` per run under
``--out/runs``, finished runs skipped on a rerun, two at a time). Epochs: ProbeX 80 and Dense 60,
the full bench's when the grid was made, or ``--epochs`` for both. Per method, the setting with the
lowest mean best validation loss is selected; the table prints validation loss and test
element-wise accuracy of every setting, the selected ones marked.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nwa.suite.plan import CLASSES, CONFIGS, FAMILIES, RunSpec  # noqa: E402

TREES = ("vision-vit_tiny-0", "vision-vit_tiny-1")
SEEDS = (0, 1, 2)
DECAYS = (1e-5, 1e-3, 1e-2)
EPOCHS = {"ProbeX": 80, "Dense": 60}
ENC = "--model.init_args.encoder.init_args."


def grid() -> list[tuple[str, str, str, list[str]]]:
    """(method, setting, recipe, overrides); the recipes' defaults are among them."""
    out = []
    sizes = ((64, 64, 128), (32, 32, 64), (16, 16, 32))
    for (r_u, r_v, dim), wd in itertools.product(sizes, DECAYS):
        overrides = [f"{ENC}rank_u", str(r_u), f"{ENC}rank_v", str(r_v), f"{ENC}dim", str(dim)]
        overrides += ["--model.init_args.weight_decay", str(wd)]
        setting = f"r_U={r_u} r_V={r_v} r_T={dim} wd={wd:g}"
        out.append(("ProbeX", setting, "probex_vision.yaml", overrides))
    for dim, wd in itertools.product((128, 32), DECAYS):
        overrides = [f"{ENC}dim", str(dim), "--model.init_args.weight_decay", str(wd)]
        out.append(("Dense", f"dim={dim} wd={wd:g}", "dense_vision.yaml", overrides))
    return out


def runs(zoo: str, epochs: int | None) -> list[RunSpec]:
    """One bench run per setting, ViT tree and seed; the setting rides in the method name."""
    vit = FAMILIES["vit"]
    specs = []
    for (method, setting, recipe, overrides), tree, seed in itertools.product(grid(), TREES, SEEDS):
        args = (
            *("--config", str(CONFIGS / recipe), "--data.init_args.zoo", zoo),
            *("--data.init_args.arch", vit.arch, "--data.init_args.layers", vit.layers[0]),
            *("--data.init_args.target", CLASSES, "--data.init_args.trees", f"[{tree}]"),
            *("--trainer.max_epochs", str(epochs or EPOCHS[method])),
            *("--seed_everything", str(seed), *overrides),
        )
        specs.append(RunSpec(CLASSES, f"{method} {setting}", tree, seed, args))
    return specs


def table(results: list[dict]) -> str:
    import pandas as pd

    rows = pd.DataFrame(
        {
            "method": r["method"].split(" ", 1)[0],
            "setting": r["method"].split(" ", 1)[1],
            "tree": r["subset"],
            "val_loss": r["best_val"],
            "acc": r["metrics"]["test/acc"],
        }
        for r in results
    )
    g = rows.groupby(["method", "setting", "tree"])
    wide = g.agg(val=("val_loss", "mean"), acc=("acc", "mean")).unstack("tree")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", default="default_vision", help="zoo name or folder")
    parser.add_argument("--out", type=Path, default=Path("runs/vit_grid"))
    parser.add_argument("--epochs", type=int, help="max_epochs of both methods")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    from tqdm import tqdm

    from nwa.suite.execute import load_result, needs_run, run_all
    from nwa.zoo.cache import zoo_path

    specs = runs(str(zoo_path(args.zoo)), args.epochs)  # the zoo is built once, here
    todo = [s for s in specs if needs_run(s, load_result(args.out / "runs" / s.key))]
    with tqdm(total=len(todo), desc="runs") as bar:
        run_all(todo, args.out, args.jobs, finished=lambda spec, res: bar.update())
    results = [load_result(args.out / "runs" / s.key) for s in specs]
    failed = [s.key for s, r in zip(specs, results, strict=True) if r is None or "error" in r]
    if failed:
        print(f"{len(failed)} runs failed, see their error.txt: {failed[:5]}", file=sys.stderr)
        return 1
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
