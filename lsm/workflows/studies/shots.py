"""Study kind ``shots``: fit a source once per normalisation, fine-tune every target at
every shot count; skill against K per target, paired differences of the delivered model
against the baselines, and how often each strategy was delivered."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lsm.config.pipeline import ShotsStudy
from lsm.workflows.studies.base import (
    METRIC_TITLES,
    StudyKind,
    Table,
    count_of,
    pivot,
    register_study,
    slug,
)

if TYPE_CHECKING:
    from lsm.config.pipeline import PipelineConfig
    from lsm.workflows.pipeline.plan import Plan

#: Paired comparisons reported per shots study: (family a, arm a, family b, arm b).
PAIRED = (("lsm", "delivered", "lsm", "source_only"), ("lsm", "delivered", "lsm", "target_only"))


@register_study
class Shots(StudyKind):
    """Metric against K per target (see :class:`lsm.config.pipeline.ShotsStudy`)."""

    config = ShotsStudy

    def plan(self, plan: Plan, study: Any, norm: str) -> None:
        src = plan.display(study.source)
        fit = plan.fit(study.source, study, norm)
        if study.cv:
            plan.use(study, fit, fit, source=src, target=src, chain=src, route="source_cv",
                     norm=norm)
        for target in study.targets:
            tgt = plan.display(target)
            for k in study.shots:
                ft = plan.finetune(target, fit, [src, tgt], study, norm, k)
                plan.use(study, ft, fit, source=src, target=tgt, chain=f"{src}>{tgt}",
                         route="direct", norm=norm, shots=k)

    def tables(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, *, metric: str,
               suffix: str) -> list[Table]:
        out = []
        for tgt in dict.fromkeys(summary["target"]):
            t = summary[summary["target"] == tgt]
            ks = sorted(t["shots"].dropna().unique())
            h, b = pivot(t, "shots", {k: f"K={k}" for k in ks}, metric)
            out.append(Table(str(study.id), f"{METRIC_TITLES[metric]}: {t['source'].iloc[0]} → "
                             f"{tgt}{suffix}", h, b))
        return out

    def result_tables(self, cfg: PipelineConfig, study: Any, results: pd.DataFrame
                      ) -> list[Table]:
        return paired_tables(study, results) + chosen_tables(study, results)

    def figures(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, folder: Path, *,
                metric: str, label: str, tag: str, norm: str, norms_many: bool) -> list[Path]:
        from lsm.evaluate.figures import plot_shots_curve

        paths = []
        for tgt in dict.fromkeys(summary["target"]):
            t = summary[summary["target"] == tgt].copy()
            t["shots"] = t["shots"].astype("int64")
            src = t["source"].iloc[0]
            p = folder / slug(f"{study.id}_{src}-to-{tgt}{tag}_{metric}.png")
            paths.append(plot_shots_curve(
                t, p, metric=metric,
                title=f"{label} on {tgt} after transfer from {src}\n"
                      f"line: mean, band: ± std over {count_of(study.repeats, 'repeat')}"
                      f"{'; ' + norm + ' norm' if norms_many else ''}"))
        return paths


def paired_tables(study: Any, results: pd.DataFrame) -> list[Table]:
    """Paired differences (same shots, same test set) per target and K.

    Cells: mean difference over the repeats, its 95 % t-interval, and the share of
    repeats where the first arm is better (higher AUC, lower log-loss).
    """
    from lsm.evaluate.metrics import paired_difference

    out: list[Table] = []
    if results.empty or "arm" not in results or not (results["arm"] == "delivered").any():
        return out
    sdf = results[results["study"] == study.id]
    for (norm, tgt), t in sdf.groupby(["norm", "target"], sort=False, dropna=False):
        ks = sorted(t["shots"].dropna().unique())
        ll = ("log_loss_prior_corrected" if "log_loss_prior_corrected" in t
              and t["log_loss_prior_corrected"].notna().any() else "log_loss")
        body = []
        for fa, a, fb, b in PAIRED:
            for metric, better in (("auc", 1.0), (ll, -1.0)):
                row = [f"{a} − {b} ({fa})", METRIC_TITLES.get(metric, metric.replace(
                    "log_loss_prior_corrected", "log-loss (prior-corr.)"))]
                for k in ks:
                    tk = t[t["shots"] == k]
                    xa = tk[(tk["family"] == fa) & (tk["arm"] == a)].sort_values("repeat")
                    xb = tk[(tk["family"] == fb) & (tk["arm"] == b)].sort_values("repeat")
                    if xa.empty or len(xa) != len(xb):
                        row.append("")
                        continue
                    d = paired_difference(list(better * xa[metric]), list(better * xb[metric]))
                    row.append(f"{better * d['mean_diff']:+.3f} [{_lo_hi(d, better)}], "
                               f"{d['win_rate']:.0%}")
                body.append(row)
        src = t["source"].iloc[0]
        out.append(Table(str(study.id), f"Paired differences: {src} → {tgt}"
                         f"{', ' + str(norm) + ' norm' if len(study.norms) > 1 else ''}",
                         ["comparison", "metric", *[f"K={k}" for k in ks]], body))
    return out


def chosen_tables(study: Any, results: pd.DataFrame) -> list[Table]:
    """How often each strategy was delivered, per target and K (``summary.md`` only)."""
    out: list[Table] = []
    if results.empty or "chosen" not in results:
        return out
    sdf = results[(results["study"] == study.id) & results["chosen"].notna()]
    for tgt, t in sdf.groupby("target", sort=False):
        ks = sorted(t["shots"].dropna().unique())
        counts = t.groupby(["chosen", "shots"]).size().unstack(fill_value=0)
        body = [[str(name), *[str(int(counts.loc[name].get(k, 0))) for k in ks]]
                for name in counts.sum(axis=1).sort_values(ascending=False).index]
        out.append(Table(str(study.id), f"Delivered strategy (repeats): {t['source'].iloc[0]} "
                         f"→ {tgt}", ["strategy", *[f"K={k}" for k in ks]], body,
                         console=False))
    return out


def _lo_hi(d: dict[str, float], sign: float) -> str:
    lo, hi = sorted((sign * d["ci95_low"], sign * d["ci95_high"]))
    return f"{lo:+.3f}, {hi:+.3f}"
