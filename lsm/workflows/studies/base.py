"""The interface of a study kind, its registry, and the table helpers the kinds share.

A study kind is one class, a subclass of :class:`StudyKind` decorated with
:func:`register_study`, that declares

- ``config``: its options, a :class:`lsm.config.pipeline.StudyOptions` subclass
  with ``kind: Literal["<name>"]`` (registered for pipeline files too);
- :meth:`StudyKind.plan`: how one study expands into steps for one
  normalisation, by calling the plan's ``fit``, ``finetune``, ``region`` /
  ``add_region`` and ``use`` (:class:`lsm.workflows.pipeline.plan.Plan`);
  steps shared with other studies are planned once;
- :meth:`StudyKind.tables` / :meth:`StudyKind.result_tables`: how it summarises
  the results (tables of means over repeats per normalisation and metric;
  tables of the per-repeat rows, e.g. paired differences);
- :meth:`StudyKind.figures`: its PNG figures.

The pipeline runner, the results table, ``summary.md`` and ``lsm run``'s
console output loop over studies and call these methods, so they never
branch on the kind.

Example
-------
>>> from typing import Literal
>>> from lsm.config.pipeline import StudyOptions
>>> class OneShotConfig(StudyOptions):                           # doctest: +SKIP
...     kind: Literal["one_shot"]
...     source: str
...     target: str
...     region_fields = ("source", "target")
>>> @register_study                                             # doctest: +SKIP
... class OneShot(StudyKind):
...     config = OneShotConfig
...     def plan(self, plan, study, norm):
...         fit = plan.fit(study.source, study, norm)
...         ft = plan.finetune(study.target, fit, [study.source, study.target], study,
...                            norm, 1)
...         plan.use(study, ft, fit, source=study.source, target=study.target,
...                  chain=f"{study.source}>{study.target}", route="direct", norm=norm,
...                  shots=1)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd

from lsm.config.pipeline import StudyOptions, register_study_config
from lsm.errors import SpecError

if TYPE_CHECKING:
    from lsm.config.pipeline import PipelineConfig
    from lsm.workflows.pipeline.plan import Plan

#: Metrics with a table and a figure per study.
FIGURE_METRICS = ("auc", "log_loss")
METRIC_TITLES = {"auc": "AUC", "log_loss": "log-loss", "brier": "Brier", "accuracy": "accuracy"}
ARM_ORDER = ("source_only", "target_only", "stage1", "stage2", "delivered", "source_cv")


class Table(NamedTuple):
    """One table of a study in ``summary.md`` (and, if ``console``, printed by ``lsm run``)."""

    study: str
    title: str
    header: list[str]
    rows: list[list[str]]
    console: bool = True


class StudyKind:
    """One kind of study (see the module docstring); subclasses set ``config``."""

    #: The kind's options; ``config.kind_name()`` is the kind.
    config: ClassVar[type[StudyOptions]]

    @property
    def kind(self) -> str:
        return self.config.kind_name()

    def plan(self, plan: Plan, study: Any, norm: str) -> None:
        """Add the steps of ``study`` under normalisation ``norm`` and the rows it reports.

        Each ``plan.use(study, step, root_fit, **context)`` becomes rows of
        ``results.csv`` (one per family, arm and repeat of the step), the
        context filling ``source``, ``target``, ``chain``, ``route``
        (``direct``, ``chain``, or ``source_cv`` for a fit's cross-validation),
        ``norm``, ``shots`` and ``fraction``.
        """
        raise NotImplementedError(f"study kind {self.kind!r} does not plan its steps")

    def tables(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, *, metric: str,
               suffix: str) -> list[Table]:
        """Tables of ``summary`` (the study's rows for one normalisation, without
        ``source_cv``; ``<metric>_mean`` / ``_std`` columns) for one metric; ``suffix``
        ends each title (the normalisation when a study has several)."""
        return []

    def result_tables(self, cfg: PipelineConfig, study: Any, results: pd.DataFrame
                      ) -> list[Table]:
        """Tables of the per-repeat ``results`` (all studies' rows)."""
        return []

    def figures(self, cfg: PipelineConfig, study: Any, summary: pd.DataFrame, folder: Path, *,
                metric: str, label: str, tag: str, norm: str, norms_many: bool) -> list[Path]:
        """PNG figures of one metric from ``summary`` (one normalisation; the metric's
        columns renamed ``mean`` and ``std``), written into ``folder``; ``label`` names the
        metric, ``tag`` ends each file name.  Returns the paths written."""
        return []


#: The registry of study kinds: ``kind`` -> its :class:`StudyKind` (see :func:`register_study`).
STUDIES: dict[str, StudyKind] = {}


def register_study(cls: type[StudyKind]) -> type[StudyKind]:
    """Class decorator: add a study kind (and its config, for pipeline files)."""
    config = getattr(cls, "config", None)
    if not (isinstance(config, type) and issubclass(config, StudyOptions)):
        raise TypeError(f"{cls.__name__}: 'config' must be a StudyOptions subclass")
    register_study_config(config)
    STUDIES[config.kind_name()] = cls()
    return cls


def study_kind(kind: str) -> StudyKind:
    """The registered study kind ``kind`` (the built-in ones are registered on first use)."""
    import lsm.workflows.studies  # noqa: F401  (registers the built-in kinds)

    try:
        return STUDIES[kind]
    except KeyError:
        raise SpecError(f"study kind {kind!r} has a config but no steps: register a "
                        f"lsm.workflows.studies.StudyKind for it (registered: "
                        f"{', '.join(STUDIES)})") from None


# ---------------------------------------------------------------------------
# helpers of the kinds' plans, tables and figures


def slug(text: str) -> str:
    """``text`` as a file or folder name (at most 150 characters)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return out[:150]


def display_name(cfg: PipelineConfig, ref: str) -> str:
    """Short name of a region reference: the name itself, or a spec file's stem."""
    if ref in cfg.regions:
        return ref
    return Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref


def count_of(count: int, word: str) -> str:
    """``"1 repeat"``, ``"3 repeats"``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def family_order() -> tuple[str, ...]:
    """Row and panel order of families: the delivered model (``lsm``), then the registry's."""
    from lsm.models.base import family_names

    return ("lsm", *family_names())


def ordered_families(present: Any) -> list[str]:
    """The families in ``present`` in :func:`family_order`, unknown ones after, sorted."""
    present = set(present)
    order = family_order()
    return [f for f in order if f in present] + sorted(present - set(order))


def cell(mean: Any, std: Any) -> str:
    """``mean ± std`` with three decimals (``n/a`` without a finite mean)."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"


def row_order(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` sorted by family (:func:`family_order`) and arm."""
    fam = {f: i for i, f in enumerate(family_order())}
    arm = {a: i for i, a in enumerate(ARM_ORDER)}
    return df.assign(_f=df["family"].map(lambda f: fam.get(f, 99)),
                     _a=df["arm"].map(lambda a: arm.get(a, 99))).sort_values(["_f", "_a"])


def pivot(df: pd.DataFrame, col: str, labels: dict[Any, str], metric: str
          ) -> tuple[list[str], list[list[str]]]:
    """Rows family x arm, one column per value of ``col``: ``mean ± std`` cells."""
    header = ["family", "arm", *labels.values()]
    body: list[list[str]] = []
    if f"{metric}_mean" not in df.columns:
        return header, body
    keys = row_order(df[["family", "arm"]].drop_duplicates())
    for fam, arm in keys[["family", "arm"]].itertuples(index=False):
        row = [fam, arm]
        for v in labels:
            hit = df[(df["family"] == fam) & (df["arm"] == arm) & (df[col] == v)]
            row.append(cell(hit[f"{metric}_mean"].iloc[0], hit[f"{metric}_std"].iloc[0])
                       if len(hit) else "")
        body.append(row)
    return header, body


def family_axes(n: int) -> tuple[int, int]:
    """Rows and columns of a grid of ``n`` family panels."""
    ncols = 1 if n == 1 else 2
    return math.ceil(n / ncols), ncols


def metric_refs(ax: Any, metric: str) -> None:
    """Reference lines of a metric: chance for AUC, ln 2 for log-loss."""
    if metric == "auc":
        ax.axhline(0.5, ls="--", lw=1, color="0.5", label="chance (AUC 0.5)")
    elif metric.startswith("log_loss"):
        ax.axhline(math.log(2), ls=":", lw=1.2, color="0.4", label="p = 0.5 everywhere (ln 2)")
