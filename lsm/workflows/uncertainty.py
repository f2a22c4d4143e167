"""The uncertainty layer: how much the mapped probability depends on the training rows.

The layer is the standard deviation of ``P(landslide)`` across ``B`` bootstrap
refits of the mapped model, per pixel (raster regions) or per unit (table
regions):

- a fine-tune run's *delivered* model: the strategy it chose (kept fixed: the
  choice is not re-made) is re-fitted on ``B`` class-stratified bootstrap
  resamples of the rows its map model was trained on (``delivered_rows.parquet``:
  every labelled target point outside the hold-out, or all of them with
  ``--shots all``), against the same source models;
- a family model of a fit run: the family re-fitted on ``B`` bootstrap resamples of
  the run's training table (off by default: a forest on a large source table costs
  ``B`` full fits).

Each refit goes through the same normalisation, base-rate shift and
``--prevalence`` correction as the map.  The spread is sampling uncertainty of the
fit given those rows; it says nothing of factors the model never saw or of a
wrong inventory.  An ensemble strategy's refits are not recalibrated on
out-of-fold margins as the delivered model is (its calibration slope is pulled
towards 1, so the difference is small).

Example
-------
>>> fn = spread_fn(run, "delivered", spec, stats, replicates=10)   # doctest: +SKIP
>>> fn(table)                                                        # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lsm.config.run import MAX_REPLICATES
from lsm.workflows.runs import Run

#: Bootstrap refits of a delivered model by default (a few seconds on tens to
#: thousands of rows); family models of fit runs get none unless asked.
DEFAULT_REPLICATES = 10
#: An estimate of the refits' time is printed (as a note) when more refits than the
#: default are asked for, or when they will take longer than this many seconds.
ANNOUNCE_S = 60.0
DESCRIPTION = "std of P(landslide) across {b} bootstrap refits of the {family} model"


def default_replicates(run: Run, family: str) -> int:
    """Refits made by default: :data:`DEFAULT_REPLICATES` for a delivered model whose
    training rows the run kept, else 0."""
    from lsm.workflows.extras import checked_file

    if family == run.meta.get("delivered") and checked_file(run, "delivered_fit"):
        return DEFAULT_REPLICATES
    return 0


class _Refits:
    """Counts refits: a progress bar (when on) and, after the first refit, a one-line
    estimate of the total when it is large (more refits than the default, or long)."""

    def __init__(self, family: str, n: int, rows: int, progress: bool) -> None:
        self.family, self.n, self.rows, self.progress = family, n, rows, progress
        self.done = 0
        self.start = time.perf_counter()

    def __enter__(self) -> _Refits:
        from lsm.workflows.progress import progress_bar

        self._cm = progress_bar(f"uncertainty: {self.n} refits of {self.family}", self.n,
                                enabled=self.progress)
        self.bar = self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    def tick(self) -> None:
        self.done += 1
        self.bar.advance()
        if self.done == 1 and self.n > 1:
            first = time.perf_counter() - self.start
            total = first * self.n
            if self.n > DEFAULT_REPLICATES or total > ANNOUNCE_S:
                warnings.warn(f"uncertainty layer: {self.n} bootstrap refits of the "
                              f"{self.family} model on {self.rows} rows; the first took "
                              f"{_duration(first)}, so about {_duration(total)} in all "
                              "(--uncertainty N sets N, 0 turns the layer off)",
                              UserWarning, stacklevel=4)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def bootstrap_models(run: Run, family: str, *, replicates: int, seed: int = 0,
                     progress: bool = False) -> list[Any]:
    """``replicates`` refits of ``family`` on class-stratified bootstrap resamples.

    A progress bar counts them (with ``progress``); when there are more than
    :data:`DEFAULT_REPLICATES` or they will take over :data:`ANNOUNCE_S` seconds, a
    warning after the first refit says how long all of them will take.
    """
    rng = np.random.default_rng(seed)
    if family == run.meta.get("delivered") and "delivered_fit" in run.meta:
        return _delivered_refits(run, replicates, rng, seed, progress)
    if run.meta.get("kind") != "fit":
        from lsm.errors import SpecError

        raise SpecError(f"{run.path}: the uncertainty layer of a {run.meta.get('kind')} run "
                        f"is made for its delivered model only, not {family!r}")
    from lsm.workflows.fit import make_model
    from lsm.workflows.sources import run_matrix

    table = run.training_table()
    X = run_matrix(run, table, run.schema)
    y = table["label"].to_numpy()
    out = []
    with _Refits(family, replicates, len(y), progress) as count:
        for b in range(replicates):
            idx = _resample(y, rng)
            out.append(make_model(family, seed=seed + b, device="cpu").fit(X.iloc[idx],
                                                                           y[idx]))
            count.tick()
    return out


def _resample(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap row indices, drawn within each class (both classes always present)."""
    parts = [rng.choice(np.flatnonzero(y == c), size=int((y == c).sum()), replace=True)
             for c in np.unique(y)]
    return np.sort(np.concatenate(parts))


def _delivered_refits(run: Run, replicates: int, rng: np.random.Generator,
                      seed: int, progress: bool = False) -> list[Any]:
    from lsm.transfer.select import Context, Strategy, build, make_batch
    from lsm.workflows.finetune import _make_target, _rebase

    info = run.meta["delivered_fit"]
    st = dict(info["strategy"])
    st["opts"] = tuple((str(k), v) for k, v in st.get("opts") or ())
    strategy = Strategy(**st)
    from lsm.errors import ArtifactError
    from lsm.workflows.extras import checked_file

    path = checked_file(run, "delivered_fit")
    if path is None:
        raise ArtifactError(f"{run.path}: the rows of its delivered model are missing or "
                            "changed; no uncertainty layer (run the fine-tune again)")
    rows = pd.read_parquet(path)
    y = rows.pop("label").to_numpy().astype(np.float64)
    sources = _sources(run, strategy)
    ctx = Context(sources=sources, make_target=_make_target("cpu"), seed=seed,
                  n_features=rows.shape[1], feature_names=list(rows.columns))
    batch = make_batch(sources, rows, neutral=info.get("neutral") or [])
    prev = float(info.get("prevalence", 0.5))
    out = []
    with _Refits(run.meta["delivered"], replicates, len(y), progress) as count:
        for b in range(replicates):
            idx = _resample(y, rng)
            ctx.seed = seed + b
            out.append(_rebase(build(strategy, batch.take(idx), y[idx], ctx), prev))
            count.tick()
    return out


def _sources(run: Run, strategy: Any) -> dict[str, Any]:
    """The source models the delivered strategy was built on.

    They are the delivered model's own ``source_<family>`` members; a stage
    strategy (whose member is the adapted model) takes them from the run's kept
    source models.
    """
    dm = run.models[run.meta["delivered"]]
    found = {name[len("source_"):].split("~")[0]: m for name, m in dm.members_.items()
             if name.startswith("source_")}
    if strategy.kind in ("stage1", "stage2"):
        from lsm.workflows.outputs import source_models

        found = source_models(run) or {}
    return found


def spread_fn(run: Run, family: str, spec: Any, region_stats: dict[str, Any], *,
              replicates: int, prevalence: float | None = None, seed: int = 0,
              progress: bool = False) -> Callable[[pd.DataFrame], np.ndarray]:
    """A row-wise ``table of raw factor values -> std of P`` over bootstrap refits.

    The design matrix is built once per block and shared by the refits; each
    refit's probabilities get the same base-rate shift as the map.
    """
    from lsm.stack.clean import name_categories
    from lsm.stack.features import design_matrix
    from lsm.transfer.prior import prior_shift

    models = bootstrap_models(run, family, replicates=replicates, seed=seed,
                              progress=progress)
    source_stats = run.meta.get("source_stats") or run.stats
    train_prev = float(run.meta.get("training_prevalence", 0.5))
    prevalence = prevalence if prevalence is not None else run.meta.get("prevalence")

    def spread(table: pd.DataFrame) -> np.ndarray:
        X = design_matrix(name_categories(table, spec), run.schema, norm=run.norm,
                          region_stats=region_stats, source_stats=source_stats,
                          warn_unknown=False)
        ps = np.vstack([m.predict_proba(X)[:, 1] for m in models])
        if prevalence:
            ps = prior_shift(ps, train_prev, prevalence)
        return ps.std(axis=0, ddof=1) if len(models) > 1 else np.zeros(len(X))

    return spread


def resolve_replicates(run: Run, family: str, replicates: int | None) -> int:
    """``replicates`` if given (0 turns the layer off), else the default for ``family``."""
    from lsm.errors import SpecError

    if replicates is not None and (isinstance(replicates, bool) or
                                   not float(replicates).is_integer()):
        raise SpecError(f"uncertainty: {replicates!r} is not a whole number of bootstrap "
                        "refits")
    n = default_replicates(run, family) if replicates is None else int(replicates)
    if n == 1 or n < 0:
        raise SpecError(f"uncertainty: {n} bootstrap refits; give 0 (none) or at least 2")
    if n > MAX_REPLICATES:
        raise SpecError(f"uncertainty: {n} bootstrap refits is more than the cap of "
                        f"{MAX_REPLICATES} (each one refits the model)")
    return n
