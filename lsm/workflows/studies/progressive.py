"""Study kind ``progressive``: a chain of fine-tunes (fit A, fine-tune B from it, C from
the B run) compared with the direct transfer A -> C at the same shots and test set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lsm.config.pipeline import ProgressiveStudy
from lsm.workflows.studies.base import (
    METRIC_TITLES,
    StudyKind,
    Table,
    count_of,
    display_name,
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
class Progressive(StudyKind):
    """Chained vs direct transfer (see :class:`lsm.config.pipeline.ProgressiveStudy`)."""

    config = ProgressiveStudy

    def plan(self, plan: Plan, study: Any, norm: str) -> None:
        names = [plan.display(r) for r in study.chain]
        fit = plan.fit(study.chain[0], study, norm)
        if study.cv:
            plan.use(study, fit, fit, source=names[0], target=names[0], chain=names[0],
                     route="source_cv", norm=norm)
        prev = fit
        for i in range(1, len(names)):
            prev = plan.finetune(study.chain[i], prev, names[: i + 1], study, norm,
                                 study.shots)
            plan.use(study, prev, fit, source=names[0], target=names[i],
                     chain=">".join(names[: i + 1]), route="chain", norm=norm,
                     shots=study.shots)
        direct = plan.finetune(study.chain[-1], fit, [names[0], names[-1]], study, norm,
                               study.shots)
        plan.use(study, direct, fit, source=names[0], target=names[-1],
                 chain=f"{names[0]}>{names[-1]}", route="direct", norm=norm, shots=study.shots)

    def tables(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, *, metric: str,
               suffix: str) -> list[Table]:
        final = summary[summary["target"] == display_name(cfg, study.chain[-1])]
        if final.empty:
            return []
        chains = {r: c for r, c in zip(final["route"], final["chain"])}
        labels = {r: f"{r}: {chains[r].replace('>', ' → ')}"
                  for r in ("direct", "chain") if r in chains}
        h, b = pivot(final, "route", labels, metric)
        if {"direct", "chain"} <= set(labels):
            h = [*h, "chain − direct"]
            for row in b:
                vals = {}
                for r in ("direct", "chain"):
                    hit = final[(final["family"] == row[0]) & (final["arm"] == row[1])
                                & (final["route"] == r)]
                    vals[r] = hit[f"{metric}_mean"].iloc[0] if len(hit) else np.nan
                d = vals["chain"] - vals["direct"]
                row.append(f"{d:+.3f}" if np.isfinite(d) else "n/a")
        return [Table(str(study.id), f"{METRIC_TITLES[metric]} on {final['target'].iloc[0]}: "
                      f"chained vs direct transfer (K={study.shots}){suffix}", h, b)]

    def figures(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, folder: Path, *,
                metric: str, label: str, tag: str, norm: str, norms_many: bool) -> list[Path]:
        tgt = display_name(cfg, study.chain[-1])
        final = summary[summary["target"] == tgt]
        p = folder / slug(f"{study.id}_{'-'.join(study.chain)}{tag}_{metric}.png")
        return [plot_progressive(
            final, p, metric=metric,
            title=f"{label} on {tgt}: chained vs direct transfer (K={study.shots})"
                  f"\nbars: mean, whiskers: ± std over {count_of(study.repeats, 'repeat')}")]


def plot_progressive(df: pd.DataFrame, path: Path, *, metric: str = "auc",
                     title: str | None = None) -> Path:
    """Bars per arm, direct vs chained transfer side by side, one panel per family.

    ``df`` has columns ``family``, ``arm``, ``route`` (``direct``/``chain``),
    ``chain``, ``mean``, ``std`` for the final target.
    """
    from lsm.evaluate.figures import ARMS, METRIC_LABELS, family_label, new_figure

    families = ordered_families(df["family"])
    nrows, ncols = family_axes(len(families))
    label = METRIC_LABELS.get(metric, metric)
    arms = [a for a in ARMS if a in set(df["arm"])]
    short = {"source_only": "source\nonly", "target_only": "target\nonly",
             "stage1": "stage 1\n(head)", "stage2": "stage 2\n(fine-tuned)"}
    routes = [r for r in ("direct", "chain") if r in set(df["route"])]
    colours = {"direct": "#e69f00", "chain": "#0a4f8c"}
    chains = {r: c for r, c in zip(df["route"], df["chain"])}
    finite = df["mean"].to_numpy(dtype="float64")
    finite = finite[np.isfinite(finite)]
    hi = float((df["mean"] + df["std"].fillna(0)).max()) if finite.size else 1.0
    lo = float((df["mean"] - df["std"].fillna(0)).min()) if finite.size else 0.0
    with new_figure(path, figsize=(7.5, max(3.6, 2.8 * nrows + 1.3)), nrows=nrows,
                    ncols=ncols, squeeze=False, sharey=True) as (fig, axes):
        width = 0.8 / max(len(routes), 1)
        x = np.arange(len(arms))
        for k, ax in enumerate(axes.flat):
            if k >= len(families):
                ax.set_visible(False)
                continue
            sub = df[df["family"] == families[k]]
            for j, r in enumerate(routes):
                s = sub[sub["route"] == r].set_index("arm").reindex(arms)
                ax.bar(x - 0.4 + width * (j + 0.5), s["mean"].fillna(0).to_numpy(), width * 0.92,
                       yerr=s["std"].fillna(0).to_numpy(), capsize=2.5, color=colours[r],
                       error_kw={"lw": 1, "ecolor": "0.2"},
                       label=f"{r}: {chains[r].replace('>', ' → ')}")
            metric_refs(ax, metric)
            ax.set_xticks(x, [short.get(a, a) for a in arms])
            ax.grid(axis="x", visible=False)
            ax.set_title(family_label(families[k]))
        for ax in axes[:, 0]:
            ax.set_ylabel(label.split(",")[0])
        if metric in ("auc", "accuracy"):
            axes[0][0].set_ylim(min(0.5, max(0.0, math.floor((lo - 0.05) * 10) / 10)), 1.0)
        else:
            axes[0][0].set_ylim(0, max(hi, math.log(2)) * 1.15)
        handles, labels = axes[0][0].get_legend_handles_labels()
        # bars first, reference lines last
        pairs = sorted(zip(handles, labels), key=lambda hl: hasattr(hl[0], "get_xydata"))
        fig.legend([h for h, _ in pairs], [lab for _, lab in pairs], loc="outside lower center",
                   ncol=2, frameon=False)
        fig.suptitle(title or f"{label.split(',')[0]}: chained vs direct transfer")
    return Path(path)
