"""Several source regions pooled into one pretraining table.

``lsm fit --source hongkong,jiangxi-yongxin`` trains one model per family on
the rows of every source region:

- only factors that every source has, with the same kind, are used
  (categorical ones only when every spec maps its codes to a shared legend
  with ``categories``), see :func:`common_factors`;
- each region's rows are normalised with that region's *own* statistics
  (norm ``target``/``quantile``; ``source`` uses the first region's, ``none``
  raw values), see :func:`pooled_matrix`;
- rows carry region- and class-balanced weights (every region's weights sum
  to the same total, and within a region landslides and non-landslides weigh
  the same), see :func:`source_weights`.  Balancing the regions alone left
  their different landslide shares (Hong Kong 49 %, Yongxin 3 %) for the
  models to explain with whatever told the regions apart, which cost the
  pooled source 0.04 to 0.07 of zero-shot AUC on Yushan and Ecuador (lr).

A multi-source run records ``regions`` and ``region_stats`` (name ->
statistics) in ``model.json`` and a ``region`` column in its training table;
its ``stats``, ``source_stats`` and ``spec`` are those of the first region.
:func:`run_matrix` and :func:`run_weights` rebuild the training design and
weights of any fit run (one region or several).

Example
-------
>>> source_names("hongkong, jiangxi-yongxin")
['hongkong', 'jiangxi-yongxin']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lsm.config.spec import RegionSpec
from lsm.errors import FactorMismatchError, SpecError
from lsm.stack.features import FeatureSchema, design_matrix

#: Separator of region names in the name of a multi-source run (``hongkong+jiangxi-yongxin``).
JOIN = "+"


def source_names(source: str | list[str]) -> list[str]:
    """A comma list (or list) of region names/spec paths -> list; one name stays one."""
    items = source.split(",") if isinstance(source, str) else list(source)
    names = [str(s).strip() for s in items if str(s).strip()]
    if not names:
        raise SpecError(f"--source {source!r}: no region given")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"--source {source!r}: region(s) {dup} given more than once")
    return names


def common_factors(specs: list[RegionSpec], factors: list[str] | None = None
                   ) -> tuple[list[str], list[str]]:
    """Factors every source region has with the same kind, and notes on dropped ones.

    Default: the first region's transfer factors (in its order) that every
    other region also offers for transfer.  A categorical factor is kept only
    when every spec maps its codes to a shared legend (``categories``).  An
    explicit ``factors`` list must be usable as a whole (:class:`SpecError`
    naming the region that lacks a factor).
    """
    first = specs[0]
    notes: list[str] = []
    if factors is not None:
        for spec in specs:
            lacking = [f for f in factors if f not in spec.factor_names]
            if lacking:
                raise SpecError(f"{spec.where('factors')}: region has no factor(s) {lacking} "
                                f"(it has: {', '.join(spec.factor_names)})")
        wanted, explicit = list(factors), True
    else:
        wanted, explicit = list(first.transfer_factor_names), False
    keep: list[str] = []
    for f in wanted:
        missing = [s.name for s in specs if f not in s.transfer_factor_names]
        if missing and not explicit:
            notes.append(f"factor {f!r} is not a transfer factor of {', '.join(missing)}: "
                         "dropped")
            continue
        kinds = {s.name: str(s.kind_of(f)) for s in specs}
        if len(set(kinds.values())) > 1:
            msg = (f"factor {f!r} has different kinds in the sources "
                   f"({', '.join(f'{k}: {v}' for k, v in kinds.items())})")
            if explicit:
                raise FactorMismatchError(msg)
            notes.append(msg + ": dropped")
            continue
        if kinds[first.name] == "categorical":
            unmapped = [s.name for s in specs
                        if not (s.factors.get(f) and s.factors[f].categories)]
            if unmapped:
                msg = (f"categorical factor {f!r}: {', '.join(unmapped)} do(es) not map its "
                       "codes to a shared legend with 'categories'")
                if explicit:
                    raise FactorMismatchError(msg)
                notes.append(msg + ": dropped")
                continue
        keep.append(f)
    return keep, notes


def pooled_matrix(table: pd.DataFrame, schema: FeatureSchema, *, norm: str,
                  region_stats: dict[str, dict[str, Any]],
                  source_stats: dict[str, Any] | None) -> pd.DataFrame:
    """Design matrix of a pooled table, each ``region``'s rows with its own statistics.

    Rows keep the order (and index) of ``table``.
    """
    if "region" not in table.columns:
        raise FactorMismatchError("a pooled table needs a 'region' column")
    regions = table["region"].astype(str).to_numpy()
    unknown = sorted(set(regions) - set(region_stats))
    if unknown:
        raise FactorMismatchError(f"no statistics for region(s) {unknown} of the table "
                                  f"(have: {', '.join(region_stats)})")
    parts = []
    for name in pd.unique(regions):
        rows = table[regions == name]
        parts.append(design_matrix(rows, schema, norm=norm, region_stats=region_stats[name],
                                   source_stats=source_stats, warn_unknown=False))
    return pd.concat(parts).loc[table.index]


def is_multi_source(meta: dict[str, Any]) -> bool:
    """Whether a run's ``model.json`` describes a pretraining on several regions."""
    return len(meta.get("regions") or []) > 1 and bool(meta.get("region_stats"))


def run_matrix(run: Any, table: pd.DataFrame, schema: FeatureSchema,
               norm: str | None = None) -> pd.DataFrame:
    """Design matrix of a fit run's own training rows, as the run normalised them."""
    norm = norm or run.norm
    source_stats = run.meta.get("source_stats") or run.stats
    if is_multi_source(run.meta) and "region" in table.columns:
        return pooled_matrix(table, schema, norm=norm, region_stats=run.meta["region_stats"],
                             source_stats=source_stats)
    return design_matrix(table, schema, norm=norm, region_stats=run.stats,
                         source_stats=source_stats, warn_unknown=False)


def source_weights(regions: Any, y: Any) -> np.ndarray:
    """Weights of pooled rows: each (region, label) group totals the same; mean 1.

    Every region then counts the same, and within it landslides and
    non-landslides weigh the same.

    Example
    -------
    >>> source_weights(["a", "a", "a", "b"], [1, 0, 0, 1]).tolist()
    [1.3333333333333333, 0.6666666666666666, 0.6666666666666666, 1.3333333333333333]
    """
    from lsm.transfer.reweight import balanced_weights

    keys = [f"{r}\0{int(v)}" for r, v in zip(np.asarray(regions), np.asarray(y), strict=True)]
    return balanced_weights(np.asarray(keys))


def run_weights(run: Any, table: pd.DataFrame) -> np.ndarray | None:
    """Training weights of a multi-source run (None for one region): :func:`source_weights`."""
    if is_multi_source(run.meta) and "region" in table.columns:
        return source_weights(table["region"].astype(str).to_numpy(), table["label"].to_numpy())
    return None


def unlabelled_rows(spec: RegionSpec, table: pd.DataFrame, stack: Any, factors: list[str],
                    *, n: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Factor values of up to ``n`` rows that describe a region's terrain, labels unused.

    A raster region gives a seeded sample of valid pixels of its stack (the
    labelled points cover a sliver of it); a table region its sample table.
    Categorical codes are named with the region's legend.
    """
    rng = np.random.default_rng(seed)
    if stack is None:
        rows = table[factors]
        if len(rows) > n:
            rows = rows.iloc[np.sort(rng.choice(len(rows), size=n, replace=False))]
        return rows.reset_index(drop=True)
    from lsm.sampling.points import extract_values
    from lsm.stack.build import valid_mask
    from lsm.stack.clean import name_categories

    ds = stack[factors]
    valid = np.flatnonzero(valid_mask(ds).compute().to_numpy().ravel())
    if valid.size == 0:
        raise FactorMismatchError(f"{spec.source_file or spec.name}: no pixel has every "
                                  f"factor of {factors}")
    pick = np.sort(rng.choice(valid, size=min(n, valid.size), replace=False))
    r, c = np.divmod(pick, ds.sizes["x"])
    return name_categories(extract_values(ds, r, c, factors), spec)
