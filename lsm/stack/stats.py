"""Per-region factor statistics, computed out-of-core.

Transfer needs to know what "steep" or "wet" means in each region: these
statistics (mean, std, quantiles, category frequencies) are computed from the
whole stack of a raster region (two dask passes, no labels needed) or from the
sample table of a tabular region, and stored with every model run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Levels of the percentile table used by the ``quantile`` normalisation.
PERCENTILE_LEVELS = np.linspace(0.0, 1.0, 101)
_BINS = 4096


def _continuous_from_values(v: np.ndarray) -> dict[str, Any]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0}
    q = np.quantile(v, QUANTILES)
    return {"count": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max()),
            "quantiles": {f"q{int(p * 100):02d}": float(x) for p, x in zip(QUANTILES, q)},
            "percentiles": [float(x) for x in np.quantile(v, PERCENTILE_LEVELS)]}


def _categorical_from_values(v: Any) -> dict[str, Any]:
    s = pd.Series(v).dropna().astype(str)
    counts = s.value_counts()
    total = int(counts.sum())
    return {"count": total,
            "frequencies": {str(k): float(c / total) for k, c in counts.items()} if total else {}}


def _circular_from_values(v: np.ndarray) -> dict[str, Any]:
    v = np.asarray(v, dtype="float64")
    fin = v[np.isfinite(v)]
    rad = np.deg2rad(fin)
    return {"count": int(fin.size), "flat_share": float(1 - fin.size / max(v.size, 1)),
            "mean_sin": float(np.sin(rad).mean()) if fin.size else 0.0,
            "mean_cos": float(np.cos(rad).mean()) if fin.size else 0.0}


def table_statistics(table: pd.DataFrame, kinds: dict[str, str]) -> dict[str, Any]:
    """Statistics of every factor column of a sample table."""
    out: dict[str, Any] = {}
    for f, kind in kinds.items():
        if f not in table.columns:
            continue
        if kind == "categorical":
            out[f] = {"kind": kind, **_categorical_from_values(table[f])}
        elif kind == "circular":
            out[f] = {"kind": kind, **_circular_from_values(table[f].to_numpy())}
        else:
            out[f] = {"kind": kind, **_continuous_from_values(table[f].to_numpy(dtype="float64"))}
    return {"source": "table", "n": int(len(table)), "factors": out}


def stack_statistics(ds: xr.Dataset, kinds: dict[str, str], *, category_names: Any = None
                     ) -> dict[str, Any]:
    """Statistics of every factor of a lazy stack, in two out-of-core passes.

    Pass 1: count, sum, sum of squares, min, max per continuous factor and
    category counts; pass 2: a fine histogram between min and max, from which
    quantiles are read (error below (max - min) / 4096).
    """
    import dask
    import dask.array as dka

    first: dict[str, Any] = {}
    for f, kind in kinds.items():
        a = ds[f].data
        a = a if isinstance(a, dka.Array) else dka.from_array(a)
        fin = dka.isfinite(a)
        if kind == "continuous":
            z = dka.where(fin, a, 0).astype("float64")
            first[f] = (fin.sum(), z.sum(), (z * z).sum(),
                        dka.nanmin(a), dka.nanmax(a))
        elif kind == "categorical":
            flat = dka.where(fin, a, -np.inf).astype("float64").ravel()  # known chunk sizes
            first[f] = (fin.sum(), dka.unique(flat, return_counts=True))
        else:
            rad = dka.deg2rad(dka.where(fin, a, 0).astype("float64"))
            first[f] = (fin.sum(), dka.where(fin, dka.sin(rad), 0).sum(),
                        dka.where(fin, dka.cos(rad), 0).sum(), a.size)
    (res1,) = dask.compute(first)

    hists = {}
    for f, kind in kinds.items():
        if kind == "continuous" and int(res1[f][0]) > 0:
            lo, hi = float(res1[f][3]), float(res1[f][4])
            if hi > lo:
                a = ds[f].data
                a = a if isinstance(a, dka.Array) else dka.from_array(a)
                hists[f] = dka.histogram(a[dka.isfinite(a)], bins=_BINS, range=(lo, hi))[0]
    (res2,) = dask.compute(hists)

    out: dict[str, Any] = {}
    for f, kind in kinds.items():
        r = res1[f]
        n = int(r[0])
        if kind == "continuous":
            if n == 0:
                out[f] = {"kind": kind, "count": 0}
                continue
            mean = float(r[1]) / n
            var = max(float(r[2]) / n - mean * mean, 0.0)
            lo, hi = float(r[3]), float(r[4])
            if f in res2:
                cdf = np.cumsum(res2[f]) / n
                edges = np.linspace(lo, hi, _BINS + 1)
                qs = {f"q{int(p * 100):02d}": float(np.interp(p, np.r_[0, cdf], edges))
                      for p in QUANTILES}
                pct = [float(np.interp(p, np.r_[0, cdf], edges)) for p in PERCENTILE_LEVELS]
            else:
                qs = {f"q{int(p * 100):02d}": lo for p in QUANTILES}
                pct = [lo] * len(PERCENTILE_LEVELS)
            out[f] = {"kind": kind, "count": n, "mean": mean, "std": var ** 0.5,
                      "min": lo, "max": hi, "quantiles": qs, "percentiles": pct}
        elif kind == "categorical":
            codes, counts = r[1]
            keep = np.isfinite(codes)
            codes, counts = codes[keep], counts[keep]
            names = (category_names(f, codes) if category_names is not None
                     else [str(c) for c in codes])
            freq: dict[str, float] = {}
            for name, c in zip(names, counts):
                freq[str(name)] = freq.get(str(name), 0.0) + float(c) / max(n, 1)
            out[f] = {"kind": kind, "count": n, "frequencies": freq}
        else:
            out[f] = {"kind": kind, "count": n, "flat_share": float(1 - n / max(int(r[3]), 1)),
                      "mean_sin": float(r[1]) / max(n, 1), "mean_cos": float(r[2]) / max(n, 1)}
    return {"source": "stack", "n": int(ds.sizes["x"] * ds.sizes["y"]), "factors": out}
