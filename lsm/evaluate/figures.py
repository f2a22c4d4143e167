"""Figures of model skill: ROC, success/prediction rate, reliability, transfer arms.

Every function draws one PNG with matplotlib's object API (no pyplot state,
safe in worker threads), fonts of 9 pt and up, labelled axes with units, and
writes it atomically (:func:`save_figure`: a temp file in the target folder,
then :func:`os.replace`), so a reader never sees half a PNG.  Each returns the
path written.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 300); p = np.clip(0.3 * y + rng.uniform(size=300) * 0.7, 0, 1)
>>> plot_roc({"rf": (y, p)}, "roc.png", title="Test fold")         # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lsm.evaluate.curves import reliability, roc_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

DPI = 120
FIGSIZE = (7.0, 5.0)
#: Font sizes (pt) applied while a figure is built; nothing smaller than 9 pt.
RC = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 9, "legend.title_fontsize": 9,
    "figure.titlesize": 12, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
}

#: Order, labels and colours of the transfer arms (colour-blind safe).
ARMS = ("source_only", "target_only", "stage1", "stage2", "delivered")
ARM_LABELS = {"source_only": "source only (zero-shot)", "target_only": "target only (shots)",
              "stage1": "stage 1 (head re-fit)", "stage2": "stage 2 (fine-tuned)",
              "delivered": "delivered (chosen on the shots)"}
ARM_COLORS = {"source_only": "#8c8c8c", "target_only": "#e69f00", "stage1": "#56b4e9",
              "stage2": "#0a4f8c", "delivered": "#009e73"}
#: The row of the model lsm delivers (not a family of the registry).
DELIVERED_LABEL = "lsm (delivered; baselines' family chosen on the shots)"


def family_label(name: str, *, short: bool = False) -> str:
    """A family's name in figures: its class's ``label`` (or ``short_label``).

    The delivered row (``lsm``) and names that are not registered families are
    returned as they are (the delivered row gets :data:`DELIVERED_LABEL` in long form).
    """
    if name == "lsm":
        return name if short else DELIVERED_LABEL
    from lsm.models.base import FAMILIES, get_family

    try:
        cls = get_family(name) if name not in FAMILIES else FAMILIES[name]
    except ValueError:
        return name
    return (cls.short_label if short else cls.label) or cls.label or name
METRIC_LABELS = {
    "auc": "AUC (ROC), higher is better",
    "log_loss": "log-loss (nats), lower is better",
    "log_loss_prior_corrected": "log-loss, prior-corrected (nats)",
    "brier": "Brier score, lower is better",
    "accuracy": "accuracy (threshold 0.5)",
}
_CYCLE = ("#0a4f8c", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#8c8c8c",
          "#f0e442")


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file in the same folder + rename).

    The format follows the suffix (``.png`` unless another is given).
    """
    from lsm.io.artifacts import atomic_path

    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    return path


@contextmanager
def new_figure(path: PathLike, *, figsize: tuple[float, float] = FIGSIZE,
               **subplots: Any) -> Iterator[tuple[Figure, Any]]:
    """Build a figure under :data:`RC` and save it to ``path`` when the block ends.

    ``subplots`` go to :meth:`Figure.subplots`; yields ``(fig, axes)``.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(RC):
        fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
        axes = fig.subplots(**subplots)
        yield fig, axes
        save_figure(fig, path)


def _colour(i: int) -> str:
    return _CYCLE[i % len(_CYCLE)]


def _line(i: int) -> dict[str, str]:
    """Colour and line style of the ``i``-th curve: past the colour cycle the colours
    repeat dashed, so two curves never look the same (a fine-tune's ROC and reliability
    plots have 9 curves for 8 colours)."""
    return {"color": _colour(i), "ls": "-" if i < len(_CYCLE) else "--"}


def _percent_axes(ax: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


# ---------------------------------------------------------------------- curves
def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: PathLike,
             title: str = "ROC curve") -> Path:
    """ROC curves of several forecasts on one set of axes, AUC in the legend.

    Parameters
    ----------
    curves
        ``{label: (y, p)}``: 0/1 labels and predicted P(landslide).
    path
        Target PNG.
    title
        Figure title.

    Example
    -------
    >>> plot_roc({"rf": (y, p_rf), "lr": (y, p_lr)}, "roc.png")   # doctest: +SKIP
    """
    with new_figure(path) as (fig, ax):
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="chance (AUC 0.500)")
        for i, (label, (y, p)) in enumerate(curves.items()):
            c = roc_points(y, p)
            ax.plot(c.fpr, c.tpr, lw=2, **_line(i), label=f"{label} (AUC {c.auc:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (share of non-landslides flagged)")
        ax.set_ylabel("true positive rate (share of landslides flagged)")
        ax.set_title(title)
        ax.legend(loc="lower right", frameon=True)
    return Path(path)


def _rate_parts(curve: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, float]:
    area = np.asarray(curve[0], dtype="float64")
    hits = np.asarray(curve[1], dtype="float64")
    auc = float(curve[2]) if len(curve) > 2 else float(np.trapezoid(hits, area))
    return area, hits, auc


def plot_rate_curves(success: Sequence[Any] | None, prediction: Sequence[Any] | None,
                     path: PathLike, title: str = "Success and prediction rate") -> Path:
    """Success and/or prediction rate curve with their AUC and the no-skill diagonal.

    Parameters
    ----------
    success, prediction
        ``(area_share, landslide_share)`` or a
        :class:`~lsm.evaluate.curves.RateCurve` (its AUC is used); ``None``
        leaves that curve out.  At least one must be given.
    path
        Target PNG.
    title
        Figure title.

    Example
    -------
    >>> from lsm.evaluate.curves import success_rate_curve
    >>> plot_rate_curves(success_rate_curve(p_train_ls, p_map), None, "rate.png")  # doctest: +SKIP
    """
    if success is None and prediction is None:
        raise ValueError("plot_rate_curves: give a success or a prediction curve (both None)")
    with new_figure(path) as (fig, ax):
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="no skill (AUC 0.500)")
        for curve, name, colour in ((success, "success rate (training landslides)", "#0a4f8c"),
                                    (prediction, "prediction rate (held-out landslides)",
                                     "#d55e00")):
            if curve is None:
                continue
            area, hits, auc = _rate_parts(curve)
            ax.plot(area, hits, lw=2, color=colour, label=f"{name}, AUC {auc:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        _percent_axes(ax)
        ax.set_xlabel("cumulative share of area (%), most susceptible first")
        ax.set_ylabel("cumulative share of landslides (%)")
        ax.set_title(title)
        ax.legend(loc="lower right", frameon=True)
    return Path(path)


def plot_reliability(curves: Mapping[str, tuple[Any, Any]], path: PathLike,
                     title: str = "Reliability", *, n_bins: int = 10,
                     note: str | None = None) -> Path:
    """Reliability diagram (observed vs predicted per bin) over the counts per bin.

    Meant for one or two forecasts (the delivered model and the best baseline): each bin's
    point is labelled with its number of test points, so a reader sees which points rest
    on a handful; the lower panel shows the same counts as bars.  The legend sits below
    the axes, off the data.

    Parameters
    ----------
    curves
        ``{label: (y, p)}``.
    path
        Target PNG.
    title
        Figure title.
    n_bins
        Equal-width probability bins.
    note
        A second title line (e.g. the base rate the probabilities carry).

    Example
    -------
    >>> plot_reliability({"xgb": (y, p)}, "reliability.png")   # doctest: +SKIP
    """
    k = max(len(curves), 1)
    with new_figure(path, figsize=(7.0, 6.2), nrows=2, sharex=True,
                    gridspec_kw={"height_ratios": [3, 1.2]}) as (fig, (ax, axh)):
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="perfect calibration")
        edges = np.linspace(0, 1, n_bins + 1)
        width = (edges[1] - edges[0]) / (k + 0.5)
        n_total = 0
        for i, (label, (y, p)) in enumerate(curves.items()):
            t = reliability(y, p, n_bins=n_bins)
            used = t[t["count"] > 0]
            yy = np.asarray(y, dtype="float64").ravel()
            pp = np.asarray(p, dtype="float64").ravel()
            ok = np.isfinite(pp) & np.isfinite(yy)
            n_total = max(n_total, int(ok.sum()))
            brier = float(np.mean((pp[ok] - yy[ok]) ** 2)) if ok.any() else float("nan")
            style = _line(i)
            ax.plot(used["mean_predicted"], used["observed"], marker="o", ms=5, lw=1.8,
                    **style, label=f"{label} (Brier {brier:.3f})")
            for x_, y_, n_ in zip(used["mean_predicted"], used["observed"], used["count"]):
                # first curve's counts above-left of its markers, the second's below-right
                ax.annotate(f"{int(n_)}", (x_, y_), textcoords="offset points",
                            xytext=(-5, 6) if i % 2 == 0 else (5, -8),
                            ha="right" if i % 2 == 0 else "left",
                            va="bottom" if i % 2 == 0 else "top", fontsize=9,
                            color=style["color"])
            axh.bar(edges[:-1] + width * (i + 0.75), t["count"].to_numpy(), width=width,
                    color=style["color"], alpha=0.85, align="center")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.03, 1.06)
        ax.set_ylabel("observed landslide share")
        if note:
            import textwrap

            title += "\n" + textwrap.fill(note, 78)
        ax.set_title(title, fontsize=10)
        axh.set_yscale("log")
        axh.set_ylim(bottom=0.8)
        axh.set_ylabel("points per bin")
        axh.set_xlabel(f"predicted P(landslide), {n_bins} equal bins "
                       f"(numbers: points per bin, of {n_total})")
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=1, frameon=False)
    return Path(path)


# ---------------------------------------------------------------------- transfer
def _ordered_arms(models: Mapping[str, Any]) -> list[str]:
    seen = [a for a in ARMS if any(a in m for m in models.values())]
    extra = sorted({a for m in models.values() for a in m} - set(ARMS))
    return seen + extra


def _metric_limits(name: str, lo: float, hi: float) -> tuple[float, float]:
    if name in ("auc", "accuracy"):
        bottom = max(0.0, math.floor((lo - 0.05) * 10) / 10) if np.isfinite(lo) else 0.0
        return min(bottom, 0.5), 1.0
    return 0.0, (hi * 1.15 if np.isfinite(hi) and hi > 0 else 1.0)


def plot_arms(metrics: Mapping[str, Any], path: PathLike, title: str | None = None, *,
              metric_names: Sequence[str] = ("auc", "log_loss")) -> Path:
    """Grouped bars of the four transfer arms per model family, one panel per metric.

    Parameters
    ----------
    metrics
        The fine-tune result: ``metrics["models"][family][arm][metric] =
        {"mean": float, "std": float}`` (std over repeats, drawn as error
        bars).  ``shots``, ``repeats``, ``source_region`` and ``target``, when
        present, go into the default title.
    path
        Target PNG.
    title
        Figure title; built from ``metrics`` when ``None``.
    metric_names
        Metrics to draw, one panel each (default AUC and log-loss).

    Example
    -------
    >>> plot_arms(finetune_metrics, "arms.png")   # doctest: +SKIP
    """
    models = metrics["models"]
    families = list(models)
    arms = _ordered_arms(models)
    details = []
    if title is None:
        title = "Transfer arms"
        if metrics.get("source_region") and metrics.get("target"):
            title += f": {metrics['source_region']} \u2192 {metrics['target']}"
        if metrics.get("shots") is not None:
            details.append(f"{metrics['shots']} shots per class")
    one = metrics.get("repeats") == 1 and metrics.get("mode") != "production"
    over = f" over {metrics['repeats']} repeats" if metrics.get("repeats") is not None else ""
    details.append("bars: one repeat, no spread" if one else
                   f"bars: mean, whiskers: \u00b1 1 std{over}")
    title += "\n" + "; ".join(details) + "\nno bar: the arm does not exist for that row"
    n = len(metric_names)
    with new_figure(path, figsize=(max(7.0, 3.6 * n), 5.0), ncols=n,
                    squeeze=False) as (fig, axes):
        x = np.arange(len(families))
        width = 0.8 / max(len(arms), 1)
        refs: list[Any] = []
        for ax, name in zip(axes[0], metric_names):
            lo, hi = np.inf, -np.inf
            for j, arm in enumerate(arms):
                mean = np.array([models[f].get(arm, {}).get(name, {}).get("mean", np.nan)
                                 for f in families], dtype="float64")
                std = np.array([models[f].get(arm, {}).get(name, {}).get("std", np.nan)
                                for f in families], dtype="float64")
                std = np.where(np.isfinite(std) & ~one, std, 0.0)
                pos = x - 0.4 + width * (j + 0.5)
                fin = np.isfinite(mean)  # no zero-height bar (and whisker) for a gap
                ax.bar(pos[fin], mean[fin], width * 0.92, yerr=std[fin], capsize=2.5,
                       color=ARM_COLORS.get(arm, _colour(j)), edgecolor="white", lw=0.5,
                       error_kw={"lw": 1, "ecolor": "0.2"},
                       label=ARM_LABELS.get(arm, arm))
                for px, m, f in zip(pos, mean, families):
                    # "n/a" only where the arm exists but has no value; an arm a row does
                    # not have by design (stage 1 of the delivered row) gets no bar and
                    # no label (the labels of neighbouring bars overlapped)
                    if not np.isfinite(m) and arm in models[f]:
                        ax.text(px, 0.02, "n/a", rotation=90, ha="center", va="bottom",
                                fontsize=9, transform=ax.get_xaxis_transform())
                fin = np.isfinite(mean)
                if fin.any():
                    lo = min(lo, float(np.min(mean[fin] - std[fin])))
                    hi = max(hi, float(np.max(mean[fin] + std[fin])))
            if name == "auc":
                refs.append(ax.axhline(0.5, ls="--", lw=1.2, color="0.3",
                                       label="chance (AUC 0.5)"))
            elif name.startswith("log_loss"):
                refs.append(ax.axhline(math.log(2), ls=":", lw=1.5, color="0.3",
                                       label="log-loss of p = 0.5 (ln 2)"))
                hi = max(hi, math.log(2))
            ax.set_ylim(*_metric_limits(name, lo, hi))
            ax.set_xticks(x, [family_label(f, short=True) for f in families])
            ax.grid(axis="x", visible=False)
            ax.set_ylabel(METRIC_LABELS.get(name, name))
            ax.set_title(METRIC_LABELS.get(name, name).split(",")[0])
        handles, labels = axes[0][0].get_legend_handles_labels()
        handles = [h for h in handles if h not in refs] + refs
        labels = [h.get_label() for h in handles]
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(title)
    return Path(path)


def plot_shots_curve(df: pd.DataFrame, path: PathLike, metric: str = "auc",
                     title: str | None = None) -> Path:
    """Metric against the number of shots, one line (mean) and band (± std) per arm.

    Parameters
    ----------
    df
        Long table with columns ``family``, ``arm``, ``shots``, ``mean``, ``std``
        (one row per family, arm and shot count).
    path
        Target PNG.
    metric
        Name of the metric in ``df`` (for the axis label and title).
    title
        Figure title; ``"<metric> vs shots"`` when ``None``.

    Example
    -------
    >>> plot_shots_curve(table, "shots_auc.png", metric="auc")   # doctest: +SKIP
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    need = {"family", "arm", "shots", "mean", "std"}
    if missing := need - set(df.columns):
        raise ValueError(f"plot_shots_curve: df lacks columns {sorted(missing)}")
    families = list(dict.fromkeys(df["family"]))
    n = max(len(families), 1)
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    label = METRIC_LABELS.get(metric, metric)
    with new_figure(path, figsize=(7.0, max(3.2, 2.5 * nrows + 1.0)), nrows=nrows, ncols=ncols,
                    squeeze=False, sharex=True, sharey=True) as (fig, axes):
        shots_all = np.sort(df["shots"].unique())
        arms = [a for a in ARMS if a in set(df["arm"])] + \
            sorted(set(df["arm"]) - set(ARMS))
        for k, ax in enumerate(axes.flat):
            if k >= len(families):
                ax.set_visible(False)
                continue
            fam = families[k]
            sub = df[df["family"] == fam]
            for j, arm in enumerate(arms):
                s = sub[sub["arm"] == arm].sort_values("shots")
                if s.empty:
                    continue
                xs = s["shots"].to_numpy(dtype="float64")
                m = s["mean"].to_numpy(dtype="float64")
                sd = np.nan_to_num(s["std"].to_numpy(dtype="float64"))
                colour = ARM_COLORS.get(arm, _colour(j))
                ax.plot(xs, m, marker="o", ms=4, lw=1.8, color=colour,
                        label=ARM_LABELS.get(arm, arm))
                ax.fill_between(xs, m - sd, m + sd, color=colour, alpha=0.14, lw=0)
            ax.set_title(family_label(fam))
            if len(shots_all) > 1 and shots_all.min() > 0:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(shots_all))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels([f"{s:g}" for s in shots_all])
            if metric == "auc":
                ax.axhline(0.5, ls="--", lw=1, color="0.5")
        for ax in axes[-1]:
            ax.set_xlabel("shots per class")
        for ax in axes[:, 0]:
            ax.set_ylabel(label.split(",")[0])
        seen: dict[str, Any] = {}  # every arm of every panel (row lsm adds 'delivered')
        for ax in np.ravel(axes):
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=2,
                   frameon=False)
        fig.suptitle(title or f"{label.split(',')[0]} vs number of shots per class\n"
                     "(k landslides + k non-landslides; line: mean, band: \u00b1 std)")
    return Path(path)
