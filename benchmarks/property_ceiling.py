"""How much of a zoo's property variance any predictor can explain: two upper references for the
property-regression R^2 of the metanetworks.

Run: ``python benchmarks/property_ceiling.py [--zoo default_vision] [--trees "vision-resnet*"]``.
Prints one row per property of the selected trees' test split:

- **noise ceiling**: ``1 - E[noise variance] / Var(y)``. An accuracy measured on ``n`` images is
  a binomial estimate with variance ``p (1 - p) / n``; no predictor can explain that part
  (``n`` is the recipe's ``eval_images``; the generalization gap adds the train-accuracy term).
- **oracle R^2**: ridge regression (``RidgeCV``) from what the manifest records about how each
  model was made - its class set (one-hot and every class pair) and its hyperparameters - fitted
  on the train and val members and scored on the test members, like the metanetworks. A
  metanetwork sees the weights instead; it can beat this oracle only where the weights carry
  more than the recipe (how that particular run went). Two partial oracles say which part of
  the recipe carries the property: the class set alone, and the hyperparameters alone.

Both read the manifest alone (no weights), in seconds. Kendall's tau of the oracle is printed too.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau
from sklearn.linear_model import RidgeCV

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROPERTIES = ("test_acc", "gen_gap", "robustness")


def eval_images(zoo: dict, tree: str) -> int:
    """The images per accuracy estimate of the recipe that made ``tree``."""
    for recipe in zoo.get("build", {}).get("config", {}).get("recipes", []):
        a = recipe.get("init_args", {})
        if tree.startswith(f"{a.get('name')}-"):
            return int(a.get("eval_images", 500))
    raise ValueError(f"zoo {zoo.get('name')!r} records no nwa recipe that made tree {tree!r}")


def noise_variance(df: pd.DataFrame, prop: str, n_eval: int) -> np.ndarray:
    """Binomial variance of each model's measured ``prop`` (``nan`` where it is not an accuracy)."""

    def binom(p: pd.Series, n: pd.Series | int) -> np.ndarray:
        return np.asarray(p * (1 - p) / n, dtype=float)

    if "eval_images" in df:  # recorded per model (the images actually measured on)
        n_eval = df["eval_images"]
    if prop in ("test_acc", "robustness"):
        return binom(df[prop], n_eval)
    if prop == "gen_gap":
        n_train = df["train_images"].clip(upper=n_eval)
        return binom(df["train_acc"], n_train) + binom(df["test_acc"], n_eval)
    return np.full(len(df), np.nan)


def recipe_features(df: pd.DataFrame, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The class-set features (one-hot and every class pair) and the standardized hyperparameters."""
    onehot = np.zeros((len(df), n_classes))
    for i, c in enumerate(df["classes"]):
        onehot[i, list(c)] = 1
    pairs = [onehot[:, a] * onehot[:, b] for a, b in itertools.combinations(range(n_classes), 2)]
    hp = pd.json_normalize([json.loads(h) for h in df["hparams"]]).drop(
        columns=["seed"], errors="ignore"
    )
    for key in ("lr", "l2", "init_std"):  # sampled log-uniformly
        if key in hp:
            hp[key] = np.log10(hp[key])
    hp = pd.get_dummies(hp).astype(float)  # optimizer, initializer, activation: one-hot
    hp = (hp - hp.mean()) / hp.std().replace(0, 1)
    return np.column_stack([onehot, *pairs]), hp.to_numpy()


def ridge_r2(
    x: np.ndarray, y: np.ndarray, fit: np.ndarray, test: np.ndarray
) -> tuple[float, float]:
    """Test R^2 and Kendall's tau of ridge regression fitted on the ``fit`` rows."""
    model = RidgeCV(alphas=np.logspace(-3, 4, 30)).fit(x[fit], y[fit])
    pred = model.predict(x[test])
    r2 = 1 - ((pred - y[test]) ** 2).mean() / y[test].var()
    return float(r2), float(kendalltau(pred, y[test]).statistic)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="default_vision", help="zoo name or folder")
    p.add_argument("--trees", default="vision-resnet*", help="tree glob (default: ResNet trees)")
    args = p.parse_args(argv)

    from nwa.zoo.cache import zoo_path

    root = zoo_path(args.zoo)
    zoo = json.loads((root / "zoo.json").read_text())
    df = pd.read_parquet(root / "models.parquet")
    df = df[df["tree"].map(lambda t: fnmatch.fnmatchcase(t, args.trees))].reset_index(drop=True)
    if df.empty:
        print(f"no trees of {root} match {args.trees!r}", file=sys.stderr)
        return 2
    recorded = [json.loads(lb).get("eval_images") for lb in df["labels"]]
    if all(r is not None for r in recorded):  # recorded per model: the images measured on
        df["eval_images"] = recorded
        n_eval = {int(min(recorded))}
    else:
        n_eval = {eval_images(zoo, t) for t in df["tree"].unique()}
    if len(n_eval) != 1:
        print(f"trees {args.trees!r} mix recipes with eval_images {n_eval}", file=sys.stderr)
        return 2
    n = n_eval.pop()
    df["train_images"] = [json.loads(h).get("train_images", n) for h in df["hparams"]]
    classes, hparams = recipe_features(df, len(zoo["classes"]))
    x = np.column_stack([classes, hparams])
    fit, test = (df["split"] != "test").to_numpy(), (df["split"] == "test").to_numpy()
    print(
        f"zoo {root.name}, trees {args.trees}: {fit.sum()} train+val models, {test.sum()} test, "
        f"{n} images per accuracy"
    )
    print(
        f"{'property':<12}{'std':>8}{'noise ceiling':>15}{'oracle R^2':>12}{'oracle tau':>12}"
        f"{'classes R^2':>13}{'hparams R^2':>13}"
    )
    for prop in PROPERTIES:
        y = df[prop].to_numpy(dtype=float)
        if np.isnan(y[test]).all():
            continue
        var = y[test].var()
        ceiling = 1 - np.nanmean(noise_variance(df, prop, n)[test]) / var
        r2, tau = ridge_r2(x, y, fit, test)
        only_classes, only_hparams = (ridge_r2(f, y, fit, test)[0] for f in (classes, hparams))
        print(
            f"{prop:<12}{y[test].std():>8.4f}{ceiling:>15.3f}{r2:>12.3f}{tau:>12.3f}"
            f"{only_classes:>13.3f}{only_hparams:>13.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
