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


def paired_difference(a: list[float], b: list[float], *,
                      higher_is_better: bool = True) -> dict[str, float]:
    """Paired comparison of two arms scored on the same draws: ``a - b``.

    Returns the mean difference with a 95 % t-interval over the draws, the
    share of draws where ``a`` is strictly better (the win rate: larger, or
    smaller for a loss with ``higher_is_better=False``), the share of ties,
    and the two-sided Wilcoxon signed-rank p-value (NaN with fewer than 2
    non-zero differences).
    """
    from scipy import stats

    d = np.asarray(a, dtype="float64") - np.asarray(b, dtype="float64")
    d = d[np.isfinite(d)]
    n = d.size
    out = {"n": float(n), "mean_diff": float(d.mean()) if n else float("nan"),
           "ci95_low": float("nan"), "ci95_high": float("nan"),
           "win_rate": float(np.mean(d > 0 if higher_is_better else d < 0)) if n
           else float("nan"),
           "tie_rate": float(np.mean(d == 0)) if n else float("nan"),
           "wilcoxon_p": float("nan")}
    if n >= 2:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
        out["ci95_low"], out["ci95_high"] = out["mean_diff"] - half, out["mean_diff"] + half
    if np.count_nonzero(d) >= 2:
        out["wilcoxon_p"] = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return out
