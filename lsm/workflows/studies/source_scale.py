"""Study kind ``source_scale``: nested subsets of a source (spatial blocks in one seeded
order), each fitted and fine-tuned on one target; skill against source size."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lsm.config.pipeline import DerivedRegion, SourceScaleStudy
from lsm.workflows.studies.base import (
    METRIC_TITLES,
    StudyKind,
    Table,
    count_of,
    family_axes,
    metric_refs,
    ordered_families,
    pivot,
    register_study,
    slug,
)

if TYPE_CHECKING:
    from lsm.config.pipeline import PipelineConfig
    from lsm.workflows.pipeline.plan import Plan


@register_study
class SourceScale(StudyKind):
    """Metric against source size (see :class:`lsm.config.pipeline.SourceScaleStudy`)."""

    config = SourceScaleStudy

    def plan(self, plan: Plan, study: Any, norm: str) -> None:
        src, tgt = plan.display(study.source), plan.display(study.target)
        for frac in study.fractions:
            # each subset becomes a derived region of the plan (the config is not changed)
            sub = DerivedRegion(**{"from": study.source, "fraction": frac,
                                   "order": study.order, "block_size": study.block_size,
                                   "seed": plan.cfg.study_seed(study)})
            name = f"{src}-{100 * frac:g}pct"
            name = plan.add_region(name, sub, fallback=f"{study.id}-{name}")
            fit = plan.fit(name, study, norm)
            if study.cv:
                plan.use(study, fit, fit, source=src, target=name, chain=name,
                         route="source_cv", norm=norm, fraction=frac)
            ft = plan.finetune(study.target, fit, [name, tgt], study, norm, study.shots)
            plan.use(study, ft, fit, source=src, target=tgt, chain=f"{name}>{tgt}",
                     route="direct", norm=norm, shots=study.shots, fraction=frac)

    def tables(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, *, metric: str,
               suffix: str) -> list[Table]:
        fr = summary.drop_duplicates("fraction").sort_values("fraction")
        labels = {f: f"{f:.0%} (n={int(n):,})" if pd.notna(n) else f"{f:.0%}"
                  for f, n in zip(fr["fraction"], fr["n_source"])}
        h, b = pivot(summary, "fraction", labels, metric)
        tgt = summary["target"].iloc[0] if len(summary) else study.target
        return [Table(str(study.id), f"{METRIC_TITLES[metric]} on {tgt} by source size "
                      f"({study.source} subsets, K={study.shots}){suffix}", h, b)]

    def figures(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, folder: Path, *,
                metric: str, label: str, tag: str, norm: str, norms_many: bool) -> list[Path]:
        tgt = summary["target"].iloc[0]
        p = folder / slug(f"{study.id}_{study.source}-to-{tgt}{tag}_{metric}.png")
        return [plot_source_scale(
            summary, p, metric=metric,
            title=f"{label} on {tgt} by source size ({study.source} subsets, "
                  f"K={study.shots})\nline: mean, band: ± std over "
                  f"{count_of(study.repeats, 'repeat')}")]


def plot_source_scale(df: pd.DataFrame, path: Path, *, metric: str = "auc",
                      title: str | None = None) -> Path:
    """Metric against the number of source points, one panel per family, a line per arm.

    ``df`` has columns ``family``, ``arm``, ``fraction``, ``n_source``, ``mean``, ``std``.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    from lsm.evaluate.figures import (
        ARM_COLORS,
        ARM_LABELS,
        ARMS,
        METRIC_LABELS,
        family_label,
        new_figure,
    )

    families = ordered_families(df["family"])
    nrows, ncols = family_axes(len(families))
    label = METRIC_LABELS.get(metric, metric)
    xcol = "n_source" if df["n_source"].notna().all() else "fraction"
    pts = df.drop_duplicates(xcol).sort_values(xcol)
    xs_all = pts[xcol].to_numpy(dtype="float64")
    ticks = [f"{f:.0%}\n{int(n):,}" if xcol == "n_source" else f"{f:.0%}"
             for f, n in zip(pts["fraction"], pts["n_source"])]
    with new_figure(path, figsize=(7.5, max(3.4, 2.7 * nrows + 1.2)), nrows=nrows,
                    ncols=ncols, squeeze=False, sharex=True, sharey=True) as (fig, axes):
        arms = [a for a in ARMS if a in set(df["arm"])]
        for k, ax in enumerate(axes.flat):
            if k >= len(families):
                ax.set_visible(False)
                continue
            sub = df[df["family"] == families[k]]
            for arm in arms:
                s = sub[sub["arm"] == arm].sort_values(xcol)
                if s.empty:
                    continue
                x = s[xcol].to_numpy(dtype="float64")
                m = s["mean"].to_numpy(dtype="float64")
                sd = np.nan_to_num(s["std"].to_numpy(dtype="float64"))
                ax.plot(x, m, marker="o", ms=4, lw=1.8, color=ARM_COLORS[arm],
                        ls="-" if arm in ("stage1", "stage2") else "--",
                        label=ARM_LABELS[arm])
                ax.fill_between(x, m - sd, m + sd, color=ARM_COLORS[arm], alpha=0.14, lw=0)
            metric_refs(ax, metric)
            ax.set_title(family_label(families[k]))
            if len(xs_all) > 1 and xs_all.min() > 0:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(xs_all))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels(ticks)
        for ax in axes[-1]:
            ax.set_xlabel("source subset: share and number of points"
                          if xcol == "n_source" else "share of the source's points")
        for ax in axes[:, 0]:
            ax.set_ylabel(label.split(",")[0])
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(title or f"{label.split(',')[0]} vs source size")
    return Path(path)
