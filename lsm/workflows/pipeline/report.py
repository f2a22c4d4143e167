"""Reports of a pipeline: tables per study (``summary.md`` and the console) and figures.

Every study kind makes its own tables and figures
(:class:`lsm.workflows.studies.StudyKind`); this module puts them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lsm.config.pipeline import PipelineConfig
from lsm.workflows.runs import now_iso
from lsm.workflows.studies.base import FIGURE_METRICS, Table, pivot, study_kind

if TYPE_CHECKING:
    from lsm.workflows.pipeline import PipelineResult


def study_tables(cfg: PipelineConfig, summary: pd.DataFrame) -> list[Table]:
    """Tables of the means over repeats, per study, normalisation and metric, then the
    source's cross-validation (studies with ``cv``)."""
    out: list[Table] = []
    if summary.empty:
        return out
    norms_many = summary["norm"].nunique() > 1
    for study in cfg.studies:
        kind = study_kind(study.kind)
        sdf = summary[(summary["study"] == study.id) & (summary["route"] != "source_cv")]
        cv = summary[(summary["study"] == study.id) & (summary["route"] == "source_cv")]
        for norm in study.norms:
            nd = sdf[sdf["norm"] == norm]
            suffix = f", {norm} norm" if norms_many else ""
            for metric in FIGURE_METRICS:
                out += kind.tables(cfg, study, nd, metric=metric, suffix=suffix)
        if not cv.empty:
            regions = list(dict.fromkeys(cv["target"]))
            h, b = pivot(cv, "target", {r: r for r in regions}, "auc")
            out.append(Table(str(study.id), "AUC of spatial cross-validation in the source",
                             h, b))
    return out


def result_tables(cfg: PipelineConfig, results: pd.DataFrame) -> list[Table]:
    """Tables of the per-repeat rows (paired differences, delivered strategies), per study."""
    out: list[Table] = []
    for study in cfg.studies:
        out += study_kind(study.kind).result_tables(cfg, study, results)
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(res: PipelineResult, meta: dict[str, Any]) -> str:
    """``summary.md``: what ran, one table per study and metric, figures, notes."""
    cfg = res.config
    git = meta.get("git", {})
    lines = [f"# Pipeline `{cfg.name}`", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    commit = git.get("commit")
    code = "not in a git repository"
    if commit:
        code = commit[:12] + (" (with uncommitted changes)" if git.get("dirty") else "")
    lines += [
        f"- pipeline file: `{meta.get('pipeline_file')}`",
        f"- code: {code}",
        f"- finished: {now_iso()}; {meta['machine']['cpu_count']} CPUs, "
        f"{meta['machine']['platform']}",
        f"- steps: {len(res.steps)} ({res.count('ran')} run, {res.count('reused')} reused, "
        f"{res.count('skipped')} skipped) in {res.seconds:.0f} s",
        f"- rows: {len(res.results):,} in `results.csv` / `results.parquet`; "
        "means and standard deviations over repeats in `summary.csv`",
        "",
        "Cells: mean ± standard deviation over the repeats (shot draws); every arm of a "
        "row is scored on the same held-out target test set. Arms: source_only = source "
        "model zero-shot, target_only = trained on the shots alone, stage1 = head re-fit on "
        "the shots, stage2 = fine-tuned. Row `lsm`: `delivered` = the model lsm delivers, "
        "its strategy and families chosen by cross-validation on the shots alone; "
        "`source_only` / `target_only` = the baselines a user would pick without the test "
        "set (the source family that ranks the shots best; the target-only family with the "
        "lowest cross-validated log-loss on the shots).",
        "",
        "Paired tables: mean difference over repeats [95 % t-interval], and the share of "
        "repeats where the first arm is better (higher AUC, lower log-loss).",
        "",
    ]
    if meta.get("overrides"):
        lines += [f"Overrides: {meta['overrides']}", ""]
    tables = study_tables(cfg, res.summary) + result_tables(cfg, res.results)
    for study in cfg.studies:
        lines += [f"## Study `{study.id}` ({study.kind})", ""]
        for t in tables:
            if t.study == study.id:
                lines += [f"### {t.title}", "", _md_table(t.header, t.rows), ""]
        for p in res.figures.get(str(study.id), []):
            lines += [f"![{p.stem}](figures/{p.name})", ""]
    if res.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in res.notes] + [""]
    return "\n".join(lines)


def print_pipeline_summary(res: PipelineResult, console: Any) -> None:
    """Rich tables of every study, then where the results are."""
    from rich.table import Table as RichTable

    for table in study_tables(res.config, res.summary) + result_tables(res.config, res.results):
        if not table.console:
            continue
        t = RichTable(*table.header, title=table.title)
        for r in table.rows:
            t.add_row(*r)
        console.print(t)
    for n in res.notes:
        console.print(f"note: {n}", soft_wrap=True)
    console.print(f"{len(res.steps)} steps: {res.count('ran')} run, {res.count('reused')} "
                  f"reused, {res.count('skipped')} skipped; {res.seconds:.0f} s")
    console.print(f"results -> {res.out}/ (results.csv, summary.md, figures/)")


def make_figures(cfg: PipelineConfig, summary: pd.DataFrame, folder: Path
                 ) -> dict[str, list[Path]]:
    """PNG figures of every study (AUC and log-loss): ``{study id: paths written}``."""
    from lsm.evaluate.figures import METRIC_LABELS

    out: dict[str, list[Path]] = {}
    if summary.empty:
        return out
    norms_many = summary["norm"].nunique() > 1
    for study in cfg.studies:
        kind = study_kind(study.kind)
        paths = out.setdefault(str(study.id), [])
        sdf = summary[(summary["study"] == study.id) & (summary["route"] != "source_cv")]
        for norm in study.norms:
            nd = sdf[sdf["norm"] == norm]
            if nd.empty:
                continue
            tag = f"_{norm}" if norms_many else ""
            for metric in FIGURE_METRICS:
                if f"{metric}_mean" not in nd.columns:
                    continue
                d = nd.rename(columns={f"{metric}_mean": "mean", f"{metric}_std": "std"})
                paths += kind.figures(cfg, study, d, folder, metric=metric,
                                      label=METRIC_LABELS.get(metric, metric).split(",")[0],
                                      tag=tag, norm=norm, norms_many=norms_many)
    return out
