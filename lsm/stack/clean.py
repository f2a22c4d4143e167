"""Turn stored factor values into true values: placeholders, sentinels, units.

The same rules apply to raster bands (xarray, lazy) and table columns
(pandas), so a factor cleaned from a raster and from a table agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from lsm.config.spec import FactorSource, RegionSpec, _code_str


def clean_values(values: Any, src: FactorSource) -> Any:
    """Apply ``replace``, ``nodata``, ``scale``/``offset`` and ``valid_range``.

    An xarray DataArray stays lazy (float32); numpy arrays and pandas Series
    come back as float64 numpy arrays.  Missing values become NaN.
    """
    if isinstance(values, xr.DataArray):
        v = values.astype("float32")
        for stored, true in src.replace.items():
            v = v.where(v != np.float32(stored), true)
        if src.nodata:
            v = v.where(~v.isin(np.asarray(src.nodata, dtype="float32")))
        if src.scale != 1.0 or src.offset != 0.0:
            v = v * src.scale + src.offset
        if src.valid_range is not None:
            v = v.where((v >= src.valid_range[0]) & (v <= src.valid_range[1]))
        return v.astype("float32")
    v = np.asarray(values, dtype="float64").copy()
    for stored, true in src.replace.items():
        v[v == stored] = true
    if src.nodata:
        v[np.isin(v, src.nodata)] = np.nan
    v = v * src.scale + src.offset
    if src.valid_range is not None:
        with np.errstate(invalid="ignore"):
            v[(v < src.valid_range[0]) | (v > src.valid_range[1])] = np.nan
    return v


def category_names(values: Any, src: FactorSource | None) -> np.ndarray:
    """Local category codes -> shared legend names (strings); NaN -> None.

    Codes without an entry in ``categories`` keep their code as name, so two
    regions only share a category when their specs map it to the same name.
    """
    s = pd.Series(np.asarray(values).ravel())
    mapping = (src.categories or {}) if src is not None else {}
    out = np.full(len(s), None, dtype=object)
    for u in pd.unique(s[s.notna()]):
        code = _code_str(float(u)) if isinstance(u, (int, float, np.number)) else str(u)
        out[(s == u).to_numpy()] = mapping.get(code, code)
    return out


def name_categories(table: pd.DataFrame, spec: RegionSpec, *, as_category: bool = False
                    ) -> pd.DataFrame:
    """Replace numeric codes by legend names in the categorical columns of ``table``.

    ``as_category=True`` gives ``pandas.Categorical`` columns (the same names):
    the mapping path uses it, since naming each pixel in a column of strings costs
    more than the model on large map blocks.
    """
    from lsm.stack.features import check_unique_columns

    check_unique_columns(table, list(spec.factor_names))
    out = table.copy(deep=False)  # copy-on-write: replaced columns never touch ``table``
    for f in spec.factor_names:
        if f in out.columns and spec.kind_of(f) == "categorical":
            if as_category:
                codes, uniques = pd.factorize(out[f].to_numpy(), use_na_sentinel=True)
                names = category_names(np.asarray(uniques), spec.factors.get(f)).astype(str)
                cats, inverse = np.unique(names, return_inverse=True)  # two codes, one name
                codes = np.where(codes >= 0, np.append(inverse, -1)[codes], -1)
                out[f] = pd.Categorical.from_codes(codes, categories=cats)
            else:
                out[f] = category_names(out[f].to_numpy(), spec.factors.get(f))
    return out
