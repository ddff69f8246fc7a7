"""Why Kendall's tau of test-accuracy prediction on the property zoo stops near 0.8.

Run: ``python benchmarks/property_tau.py [--zoo default_properties]``. On the small CNNs of the
property section (finite weights, the zoo's own split) it prints:

- **the tau a perfect predictor gets**: the true accuracies against accuracies measured again on
  the same number of images (binomial draws), and two such measurements against each other. A
  predictor is scored against one measurement, so the first is its ceiling.
- **a learning curve**: the section's LightGBM (StatNN-GBT's boosting settings) on the StatNN
  statistics, fitted on a quarter, a half and all of the training models.
- **richer statistics**: the same trees on the StatNN statistics plus, per tensor, the mean
  absolute value, L2 norm, skewness, kurtosis and the 5/10/90/95 % quantiles, and per matrix
  (kernels as [out, rest]) its row-norm mean, std, min and max, its largest and smallest singular
  values, their sum and its stable rank.
- tau over the models above 0.2 test accuracy, where the near-chance runs (whose order is mostly
  measurement noise) are left out.

Weights are read once (about 100 s for 4,000 CNNs on one core); the fits take seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from sklearn.metrics import r2_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def richer_statistics(tensors: list[torch.Tensor]) -> np.ndarray:
    """Statistics beyond StatNN's seven per tensor (see the module docstring)."""
    out: list[float] = []
    for t in tensors:
        v = t.double().flatten()
        c, sd = v - v.mean(), v.std() + 1e-12
        q = torch.quantile(v, torch.tensor([0.05, 0.1, 0.9, 0.95], dtype=v.dtype))
        out += [v.abs().mean(), v.norm(), (c**3).mean() / sd**3, (c**4).mean() / sd**4, *q]
        if t.ndim >= 2:
            m = t.double().reshape(t.shape[0], -1)
            rows, s = m.norm(dim=1), torch.linalg.svdvals(m)
            out += [rows.mean(), rows.std(), rows.min(), rows.max()]
            out += [s[0], s[-1], s.sum(), (s**2).sum() / s[0] ** 2]
    return np.array([float(x) for x in out])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="default_properties", help="zoo name or folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import lightgbm as lgb
    from rich.progress import track

    from nwa.suite.properties import boosting, cnn_rows
    from nwa.zoo.adapters import open_zoo
    from nwa.zoo.cache import zoo_path

    zoo = open_zoo(zoo_path(args.zoo))
    rows, diverged = cnn_rows(zoo)
    extra = []
    for _, row in track(rows.iterrows(), total=len(rows), description="richer statistics"):
        with zoo.open_model(row) as src:
            names = [n for n in src.names() if n.endswith((".weight", ".bias"))]
            extra.append(richer_statistics([src.get(n) for n in names]))
    x, y = np.stack(rows["features"]), rows["test_acc"].to_numpy(float)
    fit, test = (rows["split"] == "train").to_numpy(), (rows["split"] == "test").to_numpy()
    yt, n_images = y[test], int(rows["labels"].iloc[0].get("eval_images", 0))
    print(
        f"zoo {zoo.root.name}: {fit.sum()} training and {test.sum()} test CNNs ({diverged} "
        f"diverged left out); {n_images} images per accuracy"
    )
    print(f"test accuracy below 0.15 (near chance): {np.mean(yt < 0.15):.3f} of the test models")

    rng = np.random.default_rng(args.seed)
    p_true = np.clip(yt, 0, 1)

    def remeasure() -> np.ndarray:
        return rng.binomial(n_images, p_true) / n_images

    once = np.mean([kendalltau(remeasure(), yt).statistic for _ in range(20)])
    twice = np.mean([kendalltau(remeasure(), remeasure()).statistic for _ in range(20)])
    print(
        f"tau of a perfect predictor against one measurement: {once:.3f}; "
        f"two measurements against each other: {twice:.3f}"
    )

    def score(features: np.ndarray, rows_fit: np.ndarray) -> tuple[float, float, float]:
        model = lgb.LGBMRegressor(**boosting(), random_state=args.seed, verbose=-1)
        pred = model.fit(features[rows_fit], y[rows_fit]).predict(features[test])
        above = yt > 0.2
        return (
            r2_score(yt, pred),
            kendalltau(pred, yt).statistic,
            kendalltau(pred[above], yt[above]).statistic,
        )

    print("\nfeatures            training models   R^2    tau   tau (acc > 0.2)")
    idx = np.flatnonzero(fit)
    for frac in (0.25, 0.5, 1.0):
        chosen = np.zeros_like(fit)
        chosen[rng.choice(idx, int(len(idx) * frac), replace=False)] = True
        r2, tau, tau_hi = score(x, chosen)
        print(f"StatNN              {chosen.sum():>15}  {r2:.3f}  {tau:.3f}  {tau_hi:.3f}")
    r2, tau, tau_hi = score(np.hstack([x, np.stack(extra)]), fit)
    print(f"StatNN + richer     {fit.sum():>15}  {r2:.3f}  {tau:.3f}  {tau_hi:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
