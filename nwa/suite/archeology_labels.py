"""What the archeology section predicts and with which methods (shared by its runs and figures)."""

from __future__ import annotations

CLASS_LABELS = ("family", "optimizer")
VALUE_LABELS = ("data_size", "test_acc", "n_params")
LABELS = CLASS_LABELS + VALUE_LABELS
NETWORKS = {"NWPA": "nwpa_mixed.yaml", "WeightNet": "weightnet_mixed.yaml"}
BASELINES = ("StatNN-GBT", "PCA")
METHODS = (*NETWORKS, *BASELINES)
CLASS_METRICS = ("acc", "precision", "recall", "f1")
VALUE_METRICS = ("r2", "mse", "mae")
