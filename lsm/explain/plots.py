"""Figures of SHAP explanations: importance bars, beeswarm, importance shift after transfer.

Drawn with matplotlib's object API (no pyplot state) under the shared style
of :mod:`lsm.evaluate.figures` and written atomically (temp file in the
target folder, then :func:`os.replace`).  Each function returns the path.

Example
-------
>>> res = explain_model(model, X_train, X_test)                   # doctest: +SKIP
>>> plot_importance_bar(res, "importance.png", "rf, region A")     # doctest: +SKIP
>>> plot_beeswarm(res, "beeswarm.png", "rf, region A")             # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lsm.evaluate.figures import new_figure
from lsm.explain.shap_values import ShapResult, factor_importance

PathLike = str | os.PathLike[str]

_BAR = "#0a4f8c"
_SOURCE = "#8c8c8c"
_TUNED = "#0a4f8c"


def _units_label(units: str | None) -> str:
    return f" ({units})" if units else ""


def plot_importance_bar(result_or_series: ShapResult | pd.Series, path: PathLike,
                        title: str = "Factor importance", *, top: int = 20,
                        units: str | None = None) -> Path:
    """Horizontal bars of mean ``|SHAP|`` per factor, most important on top.

    Parameters
    ----------
    result_or_series
        A :class:`ShapResult` (reduced with :func:`factor_importance`) or an
        importance Series (index = factor or column names).
    path
        Target PNG.
    title
        Figure title.
    top
        Bars drawn at most; the rest are summed into one "other (n)" bar.
    units
        Units of the values for the axis label; taken from the result (or
        the Series' ``attrs["units"]``) when ``None``.

    Example
    -------
    >>> plot_importance_bar(factor_importance(res), "imp.png", "xgb")   # doctest: +SKIP
    """
    if isinstance(result_or_series, ShapResult):
        imp = factor_importance(result_or_series)
        units = units or result_or_series.units
    else:
        units = units or getattr(result_or_series, "attrs", {}).get("units")
        imp = pd.Series(result_or_series, dtype="float64")
    imp = imp.sort_values(ascending=False, kind="stable")
    if len(imp) > top:
        rest = imp.iloc[top - 1:]
        imp = pd.concat([imp.iloc[:top - 1],
                         pd.Series({f"other ({len(rest)})": float(rest.sum())})])
    n = len(imp)
    with new_figure(path, figsize=(7.0, max(3.0, 0.32 * n + 1.6))) as (fig, ax):
        ypos = np.arange(n)[::-1]
        ax.barh(ypos, imp.to_numpy(), color=_BAR, height=0.7)
        ax.set_yticks(ypos, [str(i) for i in imp.index])
        vmax = float(np.nanmax(imp.to_numpy())) if n else 1.0
        for y, v in zip(ypos, imp.to_numpy()):
            ax.text(v + 0.01 * vmax, y, f"{v:.3g}", va="center", ha="left", fontsize=9)
        ax.set_xlim(0, vmax * 1.15 if vmax > 0 else 1.0)
        ax.set_xlabel(f"mean |SHAP value|{_units_label(units)}")
        ax.grid(axis="y", visible=False)
        ax.set_title(title)
    return Path(path)


def _swarm_offsets(x: np.ndarray, n_bins: int = 60, width: float = 0.38) -> np.ndarray:
    """Vertical offsets that spread points of similar ``x`` apart (a beeswarm)."""
    if x.size == 0:
        return x
    lo, hi = float(np.min(x)), float(np.max(x))
    span = hi - lo if hi > lo else 1.0
    bins = np.minimum(((x - lo) / span * n_bins).astype(int), n_bins - 1)
    offsets = np.zeros(x.size)
    counts = np.bincount(bins, minlength=n_bins)
    peak = max(int(counts.max()), 1)
    for b in np.flatnonzero(counts > 1):
        members = np.flatnonzero(bins == b)
        k = np.arange(members.size)
        # 0, +1, -1, +2, -2, ... scaled so the busiest bin fills +-width
        rank = np.where(k % 2 == 1, (k + 1) // 2, -(k // 2))
        offsets[members] = rank * (2 * width / peak)
    return offsets


def plot_beeswarm(result: ShapResult, path: PathLike, title: str = "SHAP values", *,
                  max_display: int = 15, seed: int = 0) -> Path:
    """Beeswarm: one row per design column (most important on top), one dot per sample.

    Dots sit at their SHAP value and are coloured by the feature's value
    (blue = low, red = high; the 5th-95th percentile of each feature spans
    the colour scale, so one outlier does not wash out the rest).

    Parameters
    ----------
    result
        From :func:`~lsm.explain.shap_values.explain_model`.
    path
        Target PNG.
    title
        Figure title.
    max_display
        Columns shown (by mean ``|SHAP|``).
    seed
        Shuffles the drawing order so that no colour systematically hides another.

    Example
    -------
    >>> plot_beeswarm(res, "beeswarm.png", "MLP, region A")   # doctest: +SKIP
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    values = np.asarray(result.values, dtype="float64")
    data = np.asarray(result.data, dtype="float64")
    order = np.argsort(-np.abs(values).mean(axis=0), kind="stable")[:max_display]
    n = len(order)
    cmap = colormaps["coolwarm"]
    rng = np.random.default_rng(seed)
    with new_figure(path, figsize=(7.0, max(3.5, 0.36 * n + 1.6))) as (fig, ax):
        ax.axvline(0, color="0.4", lw=1)
        for row, j in enumerate(order):
            y = n - 1 - row
            x = values[:, j]
            v = data[:, j]
            fin = np.isfinite(v)
            if fin.any():
                lo, hi = np.nanpercentile(v[fin], [5, 95])
                if hi <= lo:
                    lo, hi = float(np.nanmin(v[fin])), float(np.nanmax(v[fin]))
                c = np.clip((v - lo) / (hi - lo), 0, 1) if hi > lo else np.full(v.size, 0.5)
            else:
                c = np.full(v.size, 0.5)
            draw = rng.permutation(x.size)
            colours = cmap(np.where(fin, c, 0.5))
            colours[~fin] = (0.6, 0.6, 0.6, 1.0)
            ax.scatter(x[draw], (y + _swarm_offsets(x))[draw], c=colours[draw], s=9,
                       linewidths=0, alpha=0.85, rasterized=True)
        ax.set_yticks(np.arange(n)[::-1], [result.feature_names[j] for j in order])
        ax.set_ylim(-0.7, n - 0.3)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"SHAP value{_units_label(result.units)}: "
                      "push towards (+) or away from (\u2212) a landslide")
        ax.set_title(title)
        cb = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax, aspect=30, pad=0.01,
                          ticks=[0, 1])
        cb.ax.set_yticklabels(["low", "high"])
        cb.set_label("feature value")
        cb.outline.set_visible(False)
    return Path(path)


def _shares(s: pd.Series) -> pd.Series:
    s = pd.Series(s, dtype="float64").clip(lower=0).fillna(0.0)
    total = float(s.sum())
    return s / total if total > 0 else s


def plot_importance_shift(source_importance: pd.Series, finetuned_importance: pd.Series,
                          path: PathLike, title: str = "What the transfer changed", *,
                          labels: tuple[str, str] = ("source model", "fine-tuned model"),
                          top: int = 15) -> Path:
    """Paired bars of each factor's share of importance before and after fine-tuning.

    Both Series are normalised to shares (summing to 1) so that models with
    different output scales compare; the change in percentage points is
    written beside each pair (green: gained weight, red: lost).

    Parameters
    ----------
    source_importance, finetuned_importance
        Importance per factor (e.g. :func:`factor_importance` of each model);
        a factor missing from one side counts as 0 there.
    path
        Target PNG.
    title
        Figure title.
    labels
        Legend names of the two models.
    top
        Factors shown (largest of the two shares); the rest are left out.

    Example
    -------
    >>> plot_importance_shift(factor_importance(src), factor_importance(s2),
    ...                       "shift.png", "rf: region A -> B")   # doctest: +SKIP
    """
    a = _shares(source_importance)
    b = _shares(finetuned_importance)
    idx = list(dict.fromkeys([*a.index, *b.index]))
    a, b = a.reindex(idx, fill_value=0.0), b.reindex(idx, fill_value=0.0)
    order = pd.concat([a, b], axis=1).max(axis=1).sort_values(ascending=False,
                                                               kind="stable").index[:top]
    a, b = a[order], b[order]
    n = len(order)
    with new_figure(path, figsize=(7.0, max(3.5, 0.45 * n + 1.8))) as (fig, ax):
        ypos = np.arange(n)[::-1].astype(float)
        h = 0.38
        ax.barh(ypos + h / 2, a.to_numpy(), height=h, color=_SOURCE, label=labels[0])
        ax.barh(ypos - h / 2, b.to_numpy(), height=h, color=_TUNED, label=labels[1])
        ax.set_yticks(ypos, [str(i) for i in order])
        vmax = float(max(a.max(), b.max())) if n else 1.0
        for y, va, vb in zip(ypos, a.to_numpy(), b.to_numpy()):
            d = (vb - va) * 100
            colour = "#1a7f37" if d > 0.05 else "#b42318" if d < -0.05 else "0.3"
            ax.text(max(va, vb) + 0.015 * vmax, y, f"{d:+.1f} pp", va="center", ha="left",
                    fontsize=9, color=colour)
        from matplotlib.ticker import PercentFormatter

        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlim(0, vmax * 1.22 if vmax > 0 else 1.0)
        ax.set_xlabel("share of total mean |SHAP| (%); change in percentage points (pp)")
        ax.grid(axis="y", visible=False)
        ax.legend(loc="lower right", frameon=True)
        ax.set_title(title)
    return Path(path)
