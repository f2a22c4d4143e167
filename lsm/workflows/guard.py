"""Rows given to :meth:`lsm.Run.predict`: brought to model units and checked.

A map never scores a pixel with a missing factor (it stays nodata), reads every
factor through the region spec's cleaning (:func:`lsm.stack.clean.clean_values`:
replacements, sentinels, scale and offset, valid range), and only meets values of
the region it was computed from.  Rows handed to the API get the same treatment:

- ``units="stored"``: values as the region's files store them; the spec's cleaning
  is applied, by the same function as for rasters and tables;
- ``units="model"`` (default): values as the region's training table holds them;
  only the parts of the cleaning that are the same in both units apply (the valid
  range, and sentinels and replacements of a factor without scale or offset);
- a row with a missing factor (NaN, a sentinel) scores NaN, as its pixel would be
  nodata; aspect excepted: a missing aspect is flat ground, which training tables
  hold and encode as (0, 0);
- a category the model never saw, and a value outside the training range (widened
  by ``tolerance`` times its width), are scored but reported.

Each kind of problem is one :class:`lsm.errors.InputWarning` with counts per
factor; ``strict=True`` turns them into one :class:`lsm.errors.DataError`.

Example
-------
>>> table, missing, notes = check_rows(run, df, spec, stats)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from lsm.config.spec import RegionSpec
from lsm.errors import ArgumentError, FactorMismatchError
from lsm.stack.clean import clean_values, name_categories
from lsm.workflows.runs import Run


def _same_units(src: Any) -> bool:
    return src.scale == 1.0 and src.offset == 0.0


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def to_model_units(table: pd.DataFrame, spec: RegionSpec, factors: list[str], *,
                   units: str) -> pd.DataFrame:
    """``table`` with its factor columns in model units (see the module docstring)."""
    out = table.copy(deep=False)
    for f in factors:
        src = spec.factors.get(f)
        if src is None:  # derived from the DEM: computed in true units
            continue
        col = out[f]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if not numeric:
            continue  # category names (strings) are not stored codes
        if units == "stored" or _same_units(src):
            out[f] = clean_values(col.to_numpy(dtype="float64"), src)
        elif src.valid_range is not None:
            v = col.to_numpy(dtype="float64").copy()
            with np.errstate(invalid="ignore"):
                v[(v < src.valid_range[0]) | (v > src.valid_range[1])] = np.nan
            out[f] = v
    return out


def check_rows(run: Run, table: pd.DataFrame, spec: RegionSpec, stats: dict[str, Any], *,
               units: str = "model", tolerance: float = 0.1
               ) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """(rows in model units, mask of rows with a missing factor, notes on the rows).

    Raises
    ------
    ArgumentError
        No rows, or a factor column given twice.
    FactorMismatchError
        A factor of the model is not a column of ``table``.
    """
    schema = run.schema
    if len(table) == 0:
        raise ArgumentError("data: the table has no rows")
    dup = sorted({str(c) for c in table.columns[table.columns.duplicated()]}
                 & set(schema.factors))
    if dup:
        raise ArgumentError(f"data: column {dup[0]!r} appears more than once")
    missing = [f for f in schema.factors if f not in table.columns]
    if missing:
        raise FactorMismatchError(f"data: factor(s) {missing} of the model are not columns "
                                  f"of the table (it has {', '.join(map(str, table.columns))})")
    model_units = to_model_units(table, spec, schema.factors, units=units)
    named = name_categories(model_units, spec)
    n = len(table)
    notes: list[str] = []

    nan = np.zeros(n, dtype=bool)
    per: dict[str, int] = {}
    for f in schema.factors:
        col = named[f]
        if schema.kinds[f] == "circular":
            continue  # a missing aspect is flat ground, encoded (0, 0) as in training
        if schema.kinds[f] == "categorical":
            bad = col.isna().to_numpy()
        else:
            v = pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64")
            bad = ~np.isfinite(v)
        if bad.any():
            per[f] = int(bad.sum())
            nan |= bad
    if nan.any():
        notes.append(f"{int(nan.sum())} of {n} rows have a missing factor value ("
                     + ", ".join(f"{f}: {k}" for f, k in per.items())
                     + "); they score NaN, as a map leaves such pixels nodata")

    unknown: list[str] = []
    for f in schema.factors:
        if schema.kinds[f] != "categorical":
            continue
        known = set(schema.categories.get(f, []))
        col = named[f]
        names = col[col.notna()].astype(str)
        bad = names[~names.isin(known)]
        if len(bad):
            shown = sorted(set(bad))[:5]
            unknown.append(f"{f}: {len(bad)} rows ({', '.join(map(repr, shown))})")
    if unknown:
        notes.append("categories the model never saw, scored as 'unknown' (every one-hot "
                     "column 0): " + "; ".join(unknown))

    factor_stats = stats.get("factors", stats) if isinstance(stats, dict) else {}
    outside: list[str] = []
    for f in schema.factors:
        if schema.kinds[f] != "continuous":
            continue
        st = factor_stats.get(f) or {}
        lo, hi = st.get("min"), st.get("max")
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        pad = tolerance * (hi - lo)
        v = pd.to_numeric(named[f], errors="coerce").to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):
            bad = (v < lo - pad) | (v > hi + pad)
        if not bad.any():
            continue
        worst = v[bad][np.argmax(np.abs(v[bad] - (lo + hi) / 2))]
        text = (f"{f}: {int(bad.sum())} rows (e.g. {_fmt(worst)}; training range "
                f"{_fmt(lo)}..{_fmt(hi)})")
        src = spec.factors.get(f)
        if units == "model" and src is not None and not _same_units(src):
            scaled = v[bad] * src.scale + src.offset
            if np.all((scaled >= lo - pad) & (scaled <= hi + pad)):
                text += (f" - these look like stored values (scale {src.scale:g}): pass "
                         "units='stored'")
        outside.append(text)
    if outside:
        notes.append(f"values outside the training range (tolerance {tolerance:g} of its "
                     "width), scored by extrapolation: " + "; ".join(outside))
    return model_units, nan, notes
