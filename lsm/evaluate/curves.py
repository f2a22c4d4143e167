"""Curves of a susceptibility forecast: ROC, success/prediction rate, reliability.

- :func:`roc_points`: the ROC curve of probabilities ``p`` against 0/1 labels.
- :func:`success_rate_curve`: pixels ranked by susceptibility, high to low; for
  each cut-off, the share of the area above it (x) against the share of the
  *training* landslides above it (y).  It shows how well the map fits the data
  it was made from.
- :func:`prediction_rate_curve`: the same curve for *held-out* landslides (a
  later inventory, a test fold, another zone).  It shows how well the map
  predicts landslides it has not seen; it is the honest one of the two.
- :func:`reliability`: mean predicted probability against the observed
  landslide frequency per probability bin (a calibration table).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p_all = rng.uniform(size=10_000)
>>> curve = success_rate_curve(p_all[p_all > 0.5][:50], p_all)
>>> round(curve.auc, 2) > 0.7
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd


class RocCurve(NamedTuple):
    """False and true positive rates at decreasing thresholds, and the area under them."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


class RateCurve(NamedTuple):
    """Cumulative share of area (x) against cumulative share of landslides (y)."""

    area: np.ndarray
    landslides: np.ndarray
    auc: float


def _finite(values: object) -> np.ndarray:
    arr = np.asarray(values, dtype="float64").ravel()
    return arr[np.isfinite(arr)]


def roc_points(y: object, p: object) -> RocCurve:
    """The ROC curve of probabilities ``p`` for 0/1 labels ``y``.

    Starts at (0, 0) and ends at (1, 1); collinear points are dropped.  Rows
    with a non-finite ``p`` are ignored.

    Parameters
    ----------
    y
        0/1 labels (1 = landslide).
    p
        Predicted P(landslide), same length as ``y``.

    Returns
    -------
    RocCurve
        ``(fpr, tpr, auc)``.

    Raises
    ------
    ValueError
        When ``y`` and ``p`` differ in length or ``y`` holds one class only.

    Example
    -------
    >>> roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).auc
    0.75
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y).ravel()
    p = np.asarray(p, dtype="float64").ravel()
    if y.shape != p.shape:
        raise ValueError(f"y has {y.size} labels but p has {p.size} probabilities")
    ok = np.isfinite(p)
    y, p = y[ok], p[ok]
    if np.unique(y).size < 2:
        raise ValueError(f"ROC needs landslides and non-landslides; y holds "
                         f"{np.unique(y).tolist()!r} only")
    fpr, tpr, _ = roc_curve(y, p)
    return RocCurve(fpr, tpr, float(roc_auc_score(y, p)))


def success_rate_curve(p_at_landslides: object, p_all_pixels: object, *,
                       max_points: int | None = 2000) -> RateCurve:
    """Cumulative landslide share against cumulative area share, pixels ranked high to low.

    For every cut-off ``t`` (each distinct probability), x is the share of all
    pixels with ``p >= t`` and y the share of landslides with ``p >= t``.  The
    curve runs from (0, 0) to (1, 1); a useless map lies on the diagonal
    (AUC 0.5), a perfect one rises at once (AUC near 1).  Ties climb
    diagonally, as in a ROC curve.

    Use the *training* landslides for a success rate curve and *held-out*
    landslides for a prediction rate curve (:func:`prediction_rate_curve`).

    Parameters
    ----------
    p_at_landslides
        Susceptibility at the landslide pixels (one value per landslide pixel
        or point).  Non-finite values are dropped.
    p_all_pixels
        Susceptibility of every valid pixel of the mapped area (any shape; NaN
        = no data, dropped).
    max_points
        Thin the returned curve to about this many points (evenly spaced in
        area share, end points kept) so that it stays cheap to plot; the AUC
        is always computed on the full curve.  ``None`` keeps every point.

    Returns
    -------
    RateCurve
        ``(area, landslides, auc)``.

    Example
    -------
    >>> c = success_rate_curve([0.9, 0.8], [0.1, 0.2, 0.8, 0.9])
    >>> c.area.tolist(), c.landslides.tolist(), c.auc
    ([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.5, 1.0, 1.0, 1.0], 0.75)
    """
    ls = _finite(p_at_landslides)
    allp = _finite(p_all_pixels)
    if ls.size == 0:
        raise ValueError("no landslide with a finite susceptibility value")
    if allp.size == 0:
        raise ValueError("no pixel with a finite susceptibility value")
    thresholds = np.unique(np.concatenate([allp, ls]))[::-1]  # high to low
    all_sorted = np.sort(allp)
    ls_sorted = np.sort(ls)
    # count of values >= t = n - (count of values < t)
    area = (allp.size - np.searchsorted(all_sorted, thresholds, side="left")) / allp.size
    hits = (ls.size - np.searchsorted(ls_sorted, thresholds, side="left")) / ls.size
    area = np.concatenate([[0.0], area])
    hits = np.concatenate([[0.0], hits])
    auc = float(np.trapezoid(hits, area))
    if max_points is not None and area.size > max_points:
        targets = np.linspace(0.0, 1.0, max_points)
        keep = np.unique(np.concatenate([[0, area.size - 1],
                                         np.searchsorted(area, targets, side="left")]))
        keep = keep[keep < area.size]
        area, hits = area[keep], hits[keep]
    return RateCurve(area, hits, auc)


def prediction_rate_curve(p_at_test_landslides: object, p_all_pixels: object, *,
                          max_points: int | None = 2000) -> RateCurve:
    """The success rate curve of *held-out* landslides: a prediction rate curve.

    Same computation as :func:`success_rate_curve`; the difference is the
    landslides passed in.  The success rate uses the landslides the model was
    trained on (goodness of fit); the prediction rate uses landslides it never
    saw (a test fold, a later inventory), so it measures predictive skill.

    Example
    -------
    >>> prediction_rate_curve([0.9], [0.1, 0.9]).auc
    0.75
    """
    return success_rate_curve(p_at_test_landslides, p_all_pixels, max_points=max_points)


def reliability(y: object, p: object, n_bins: int = 10) -> pd.DataFrame:
    """Calibration table: per probability bin, mean predicted vs observed landslide share.

    Bins split [0, 1] into ``n_bins`` equal widths (``p == 1`` falls in the
    last).  Empty bins are kept with ``count`` 0 and NaN means, so ``count``
    always sums to the number of finite ``p``.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``bin_lower``, ``bin_upper``, ``mean_predicted``,
        ``observed`` (share of ``y == 1``) and ``count``.

    Example
    -------
    >>> t = reliability([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.2], n_bins=2)
    >>> t["count"].tolist(), t["observed"].tolist()
    ([2, 2], [0.0, 1.0])
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r}: expected an int >= 1")
    n_bins = int(n_bins)
    y = np.asarray(y, dtype="float64").ravel()
    p = np.asarray(p, dtype="float64").ravel()
    if y.shape != p.shape:
        raise ValueError(f"y has {y.size} labels but p has {p.size} probabilities")
    ok = np.isfinite(p) & np.isfinite(y)
    y, p = y[ok], p[ok]
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(f"p holds values outside [0, 1] (min {p.min():g}, max {p.max():g})")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        observed = np.bincount(idx, weights=(y == 1).astype("float64"), minlength=n_bins) / count
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:],
                         "mean_predicted": mean_p, "observed": observed,
                         "count": count.astype("int64")})
