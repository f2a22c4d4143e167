"""From a table of canonical factor values to the numeric matrix models see.

This is where cross-region normalisation happens.  A :class:`FeatureSchema`
fixes which factors a model uses, their kinds and the categories of each
categorical factor; :func:`design_matrix` turns a factor table of any region
into the model's columns, standardising continuous factors with the statistics
the chosen normalisation picks:

- ``target`` (default): each region is standardised with its *own* statistics,
  so "steep for this region" means the same thing everywhere;
- ``source``: every region uses the source region's statistics;
- ``quantile``: each region's values are mapped through its *own* percentile
  table to normal scores, so any monotone difference between regions (units,
  a log transform in one region's SPI, skewed distances) disappears;
- ``none``: raw values.

Aspect (circular) becomes ``aspect_sin`` / ``aspect_cos`` (flat = 0, 0);
categorical factors become one-hot columns ``name=category``; a category the
schema has not seen maps to all zeros ("unknown") with a warning.

Example
-------
>>> schema = FeatureSchema.from_table(table, kinds)            # doctest: +SKIP
>>> X = design_matrix(table, schema, stats=region_stats)        # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from lsm.errors import FactorMismatchError

Norm = Literal["target", "source", "quantile", "none"]
NORMS: tuple[str, ...] = ("target", "source", "quantile", "none")


@dataclass
class FeatureSchema:
    """Factors a model was trained on, in order, with kinds and categories."""

    factors: list[str]
    kinds: dict[str, str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pd.DataFrame, kinds: dict[str, str],
                   factors: list[str] | None = None) -> FeatureSchema:
        factors = list(factors if factors is not None else kinds)
        cats = {}
        for f in factors:
            if kinds[f] == "categorical":
                vals = table[f].dropna().astype(str).unique().tolist()
                cats[f] = sorted(vals, key=_natural_key)
        return cls(factors=factors, kinds={f: kinds[f] for f in factors}, categories=cats)

    @property
    def columns(self) -> list[str]:
        """Names of the model's input columns (``feature_names_in_``)."""
        cols: list[str] = []
        for f in self.factors:
            kind = self.kinds[f]
            if kind == "circular":
                cols += [f"{f}_sin", f"{f}_cos"]
            elif kind == "categorical":
                cols += [f"{f}={c}" for c in self.categories[f]]
            else:
                cols.append(f)
        return cols

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(factors=list(d["factors"]), kinds=dict(d["kinds"]),
                   categories={k: list(v) for k, v in d.get("categories", {}).items()})

    def restrict(self, factors: list[str]) -> FeatureSchema:
        """The same schema on a subset of factors (order kept)."""
        keep = [f for f in self.factors if f in factors]
        return FeatureSchema(keep, {f: self.kinds[f] for f in keep},
                             {f: c for f, c in self.categories.items() if f in keep})


def _natural_key(s: str) -> tuple[int, float | str]:
    try:
        return (0, float(s))
    except ValueError:
        return (1, s)


def continuous_center_scale(
    factor: str, *, norm: str, region_stats: dict[str, Any] | None,
    source_stats: dict[str, Any] | None,
) -> tuple[float, float]:
    """Mean and std used to standardise ``factor`` under ``norm``."""
    if norm == "none":
        return 0.0, 1.0
    stats = region_stats if norm == "target" else source_stats
    if stats is None:
        raise FactorMismatchError(f"normalisation {norm!r} needs statistics for {factor!r}")
    fs = stats.get("factors", stats).get(factor)
    if fs is None or "mean" not in fs:
        raise FactorMismatchError(f"no statistics for factor {factor!r} (normalisation {norm!r})")
    std = float(fs["std"]) if fs["std"] and np.isfinite(fs["std"]) and fs["std"] > 0 else 1.0
    return float(fs["mean"]), std


def quantile_scores(values: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """Normal scores of ``values`` through a region's percentile table (0..100 %).

    Ties in the table (a value repeated over many percentiles) map to the middle of
    their range; scores are clipped at the 0.5 and 99.5 % levels.
    """
    from scipy.special import ndtri

    qs = np.asarray(percentiles, dtype="float64")
    levels = np.linspace(0.0, 1.0, qs.size)
    uniq, first = np.unique(qs, return_index=True)
    last = np.r_[first[1:] - 1, qs.size - 1]
    mid = (levels[first] + levels[last]) / 2  # a flat run of the table -> its middle level
    if uniq.size == 1:
        p = np.full(values.shape, 0.5)
    else:
        p = np.interp(values, uniq, mid)
    return ndtri(np.clip(p, 0.005, 0.995))


def _numeric(col: pd.Series) -> np.ndarray:
    """The values of a numeric column without a float64 copy (float32 stays float32)."""
    values = col.to_numpy()
    return values if values.dtype.kind == "f" else col.to_numpy(dtype="float64")


def check_unique_columns(table: pd.DataFrame, factors: list[str]) -> None:
    """Raise :class:`FactorMismatchError` if a factor's column appears more than once in
    ``table`` (which of them holds the factor would be a guess)."""
    if table.columns.has_duplicates:
        dup = [f for f in factors if (table.columns == f).sum() > 1]
        if dup:
            raise FactorMismatchError(f"factor column {dup[0]!r} appears more than once in "
                                      "the data; keep one of them")


def design_matrix(
    table: pd.DataFrame,
    schema: FeatureSchema,
    *,
    norm: str = "target",
    region_stats: dict[str, Any] | None = None,
    source_stats: dict[str, Any] | None = None,
    warn_unknown: bool = True,
) -> pd.DataFrame:
    """Encode a factor table into the model matrix of ``schema``.

    Missing continuous values are imputed with the centre (0 after
    standardisation); rasters never get here with missing values because
    ``lsm.mapping`` masks such pixels first.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    missing = [f for f in schema.factors if f not in table.columns]
    if missing:
        raise FactorMismatchError(f"factor(s) {missing} of the model are not in the data")
    check_unique_columns(table, schema.factors)
    n = len(table)
    columns = schema.columns
    if not n:
        return pd.DataFrame(columns=columns, dtype="float64")
    # One float64 block, filled column by column: a dict of columns would make pandas
    # copy everything once more to consolidate it (the whole cost on large map blocks).
    # Fortran order = pandas' own layout of a single block, so wrapping it copies nothing.
    mat = np.empty((n, len(columns)), dtype="float64", order="F")
    at = 0
    for f in schema.factors:
        kind = schema.kinds[f]
        col = table[f]
        if kind == "circular":
            rad = np.deg2rad(_numeric(col), dtype="float64")
            flat = ~np.isfinite(rad)  # flat ground has no aspect: (0, 0)
            with np.errstate(invalid="ignore"):
                np.sin(rad, out=mat[:, at])
                np.cos(rad, out=mat[:, at + 1])
            if flat.any():
                mat[flat, at:at + 2] = 0.0
            at += 2
        elif kind == "categorical":
            cats = schema.categories[f]
            # factorize: per-category work on the distinct values, not per row
            codes, uniques = pd.factorize(col, use_na_sentinel=True)
            names = [str(u) for u in uniques]
            known = set(cats)
            unknown = sorted({v for v in names if v not in known})
            if unknown and warn_unknown:
                warnings.warn(
                    f"factor {f!r}: categories {unknown[:10]} were not seen in training; "
                    "they are treated as 'unknown' (all one-hot columns zero)",
                    UserWarning, stacklevel=2,
                )
            position = {c: k for k, c in enumerate(cats)}
            lut = np.array([position.get(v, -1) for v in names] + [-1], dtype=np.int64)
            target = lut[codes]  # code -1 (missing) -> the trailing -1
            for k in range(len(cats)):  # whole contiguous columns, no scattered writes
                np.equal(target, k, out=mat[:, at + k], casting="unsafe")
            at += len(cats)
        elif norm == "quantile":
            fs = (region_stats or {}).get("factors", {}).get(f, {})
            if "percentiles" not in fs:
                raise FactorMismatchError(f"no percentile table for factor {f!r} (normalisation "
                                          "'quantile'); re-run 'lsm fit' with this version")
            v = quantile_scores(col.to_numpy(dtype="float64"), fs["percentiles"])
            mat[:, at] = np.where(np.isfinite(v), v, 0.0)
            at += 1
        else:
            mean, std = continuous_center_scale(f, norm=norm, region_stats=region_stats,
                                                source_stats=source_stats)
            # in place in the matrix column, in float64 whatever the input's dtype
            v = mat[:, at]
            np.subtract(_numeric(col), mean, out=v, dtype="float64")
            np.divide(v, std, out=v)
            bad = ~np.isfinite(v)
            if bad.any():
                v[bad] = 0.0 if norm != "none" or bad.all() else np.mean(v[~bad])
            at += 1
    return pd.DataFrame(mat, index=table.index, columns=columns, copy=False)
