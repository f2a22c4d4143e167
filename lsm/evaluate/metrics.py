"""Scores of a probability forecast against 0/1 labels."""

from __future__ import annotations

import numpy as np

METRICS = ("auc", "log_loss", "brier", "accuracy")
_EPS = 1e-6


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log-loss, Brier score and accuracy (threshold 0.5) of ``p`` for ``y``.

    AUC is NaN when ``y`` holds one class only.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype="float64")
    p = np.clip(np.asarray(p, dtype="float64"), _EPS, 1 - _EPS)
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")
    ll = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return {"auc": auc, "log_loss": ll, "brier": float(np.mean((p - y) ** 2)),
            "accuracy": float(np.mean((p >= 0.5) == (y == 1)))}


def summarize(values: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and std over repeats/folds of each metric: ``{name: {mean, std}}``."""
    out: dict[str, dict[str, float]] = {}
    for k in values[0] if values else []:
        arr = np.array([v[k] for v in values], dtype="float64")
        fin = arr[np.isfinite(arr)]
        out[k] = {"mean": float(fin.mean()) if fin.size else float("nan"),
                  "std": float(fin.std()) if fin.size else float("nan")}
    return out
