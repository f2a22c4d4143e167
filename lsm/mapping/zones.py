"""Susceptibility zones: five classes cut from a probability raster.

Classes are ``1`` very low, ``2`` low, ``3`` moderate, ``4`` high and ``5``
very high; ``0`` means no data.  Four increasing thresholds ``t1 < ... < t4``
cut ``[0, 1]`` without gaps, with :func:`numpy.digitize` semantics::

    p < t1 -> 1,  t1 <= p < t2 -> 2,  ...,  p >= t4 -> 5

By default the thresholds are the 20/40/60/80 % quantiles of the valid
probabilities, taken from a fine histogram computed block by block, so a raster
of any size is classified without holding it in memory.

:func:`zone_statistics` gives the usual per-class table of area share,
landslide share and their ratio (the "frequency ratio" or landslide density
per class): a good map puts few landslides in the low classes and most in the
high ones, i.e. ``density_ratio`` rises from class 1 to 5.

Example
-------
>>> zones, thresholds = classify_zones(prob)                       # doctest: +SKIP
>>> zone_statistics(zones, rows, cols)                             # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

N_ZONES = 5
NODATA = 0
ZONE_NAMES: dict[int, str] = {
    1: "very low",
    2: "low",
    3: "moderate",
    4: "high",
    5: "very high",
}
# ColorBrewer RdYlGn (5 classes), reversed: green (safe) to red (susceptible).
ZONE_COLORS: dict[int, tuple[int, int, int, int]] = {
    1: (26, 150, 65, 255),
    2: (166, 217, 106, 255),
    3: (255, 255, 191, 255),
    4: (253, 174, 97, 255),
    5: (215, 25, 28, 255),
}
QUANTILES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
EQUAL_THRESHOLDS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)

Method = Literal["quantile", "equal"]


def classify_zones(
    prob: xr.DataArray,
    *,
    thresholds: Sequence[float] | None = None,
    method: Method = "quantile",
    bins: int = 1 << 16,
) -> tuple[xr.DataArray, list[float]]:
    """Cut a probability raster into five susceptibility zones.

    Parameters
    ----------
    prob
        ``P(landslide)`` in ``[0, 1]``, NaN where unknown (numpy or dask-backed).
    thresholds
        Four strictly increasing values in ``(0, 1)``.  When given, ``method``
        is ignored and nothing is computed: a dask input gives a lazy result.
    method
        How to pick thresholds when none are given: ``"quantile"`` (20/40/60/80 %
        of the valid pixels, one pass over the raster) or ``"equal"``
        (0.2, 0.4, 0.6, 0.8).
    bins
        Histogram bins on ``[0, 1]`` for the quantiles; a quantile is exact to
        within ``1 / bins`` (linear within its bin).

    Returns
    -------
    zones
        ``uint8`` DataArray named ``"zone"`` on the grid of ``prob``: 1..5 for
        every finite probability, 0 (also its nodata) elsewhere.
    thresholds
        The four thresholds used.

    Raises
    ------
    ValueError
        Bad thresholds or method, or quantiles asked of a raster without valid pixels.

    Example
    -------
    >>> zones, t = classify_zones(prob, thresholds=[0.1, 0.3, 0.5, 0.7])  # doctest: +SKIP
    """
    if thresholds is not None:
        cuts = validate_thresholds(thresholds)
    elif method == "equal":
        cuts = list(EQUAL_THRESHOLDS)
    elif method == "quantile":
        cuts = _quantile_thresholds(prob, bins=bins)
    else:
        raise ValueError(f"method must be 'quantile' or 'equal', got {method!r}")

    zones = xr.apply_ufunc(
        _classify,
        prob,
        kwargs={"thresholds": np.asarray(cuts, dtype=np.float64)},
        dask="parallelized",
        output_dtypes=[np.uint8],
        keep_attrs=False,
    )
    zones.name = "zone"
    zones.attrs = {
        "long_name": "susceptibility zone",
        "thresholds": ",".join(repr(float(t)) for t in cuts),
        **{f"ZONE_{k}": v for k, v in ZONE_NAMES.items()},
    }
    if prob.rio.crs is not None:
        zones = zones.rio.write_crs(prob.rio.crs)
    if prob.ndim >= 2:
        zones = zones.rio.write_transform(prob.rio.transform())
    zones = zones.rio.write_nodata(NODATA, encoded=False)
    return zones, cuts


def validate_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Check user thresholds: four finite, strictly increasing values in ``(0, 1)``."""
    try:
        cuts = [float(t) for t in thresholds]
    except (TypeError, ValueError):
        raise ValueError(f"thresholds must be 4 numbers, got {thresholds!r}") from None
    if len(cuts) != N_ZONES - 1:
        raise ValueError(
            f"thresholds must be {N_ZONES - 1} values (for {N_ZONES} zones), got {len(cuts)}: "
            f"{cuts}"
        )
    for t in cuts:
        if not (np.isfinite(t) and 0.0 < t < 1.0):
            raise ValueError(f"threshold {t!r} is not inside (0, 1): {cuts}")
    if any(b <= a for a, b in zip(cuts[:-1], cuts[1:], strict=True)):
        raise ValueError(f"thresholds must be strictly increasing, got {cuts}")
    return cuts


def _classify(p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    zones = (np.digitize(p, thresholds) + 1).astype(np.uint8)
    zones[~np.isfinite(p)] = NODATA
    return zones


def _quantile_thresholds(prob: xr.DataArray, *, bins: int) -> list[float]:
    counts = _histogram(prob, bins)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(
            f"cannot take quantile thresholds of {prob.name or 'the probability raster'}: "
            "it has no valid (finite) pixel"
        )
    cum = np.concatenate([[0], np.cumsum(counts)])
    width = 1.0 / bins
    cuts, hit = [], []
    for q in QUANTILES:
        target = q * total
        # First bin whose upper cumulative count reaches the target, then
        # linear interpolation inside it (as if its values were spread evenly).
        i = int(np.searchsorted(cum[1:], target, side="left"))
        i = min(i, bins - 1)
        inside = (target - cum[i]) / counts[i] if counts[i] else 1.0
        cuts.append((i + inside) * width)
        hit.append(i)
    if len(set(hit)) < len(hit):
        warnings.warn(
            f"quantile thresholds {cuts} share histogram bins: many pixels have (nearly) the "
            "same probability, so the zones will not hold equal shares of the area",
            stacklevel=3,
        )
    return _strictly_increasing(cuts)


def _histogram(prob: xr.DataArray, bins: int) -> np.ndarray:
    data = prob.data
    if hasattr(data, "dask"):
        import dask.array as da

        finite = da.where(da.isfinite(data), data, -1.0)  # outside the range -> not counted
        counts, _ = da.histogram(finite, bins=bins, range=(0.0, 1.0))
        return np.asarray(counts.compute(), dtype=np.int64)
    values = np.asarray(prob.values, dtype=np.float64)
    values = values[np.isfinite(values)]
    counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return counts.astype(np.int64)


def _strictly_increasing(cuts: list[float]) -> list[float]:
    """Nudge tied quantiles apart (point masses, e.g. many exact zeros)."""
    out: list[float] = []
    for t in cuts:
        t = float(min(max(t, np.nextafter(0.0, 1.0)), np.nextafter(1.0, 0.0)))
        if out and t <= out[-1]:
            t = float(np.nextafter(out[-1], 1.0))
        out.append(t)
    return out


def zone_statistics(
    zones: np.ndarray | xr.DataArray,
    landslide_rows: Sequence[int] | np.ndarray,
    landslide_cols: Sequence[int] | np.ndarray,
    *,
    seen: Sequence[bool] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Area and landslide shares per zone (the frequency-ratio table).

    With ``seen`` (one flag per landslide: the map model was trained on it) the table
    also splits the landslides (:func:`split_seen`): ``n_heldout``, ``heldout_share``
    and ``heldout_density_ratio`` count only the landslides the model never saw (a
    prediction rate: skill); ``n_seen``, ``seen_share`` and ``seen_density_ratio``
    those it was trained on (a success rate: fit, not skill).  The plain columns count
    every landslide, seen ones included.

    Parameters
    ----------
    zones
        2-D zone raster (1..5, 0 = nodata), numpy or dask-backed.
    landslide_rows, landslide_cols
        Pixel indices of the landslide points.  Points outside the raster or on
        nodata pixels are not counted.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``zone`` 1..5 with columns ``name``, ``n_pixels``,
        ``area_share`` (of the valid pixels), ``n_landslides``,
        ``landslide_share`` (of the counted landslides) and ``density_ratio``
        (``landslide_share / area_share``; NaN for an empty zone).

    Example
    -------
    >>> zone_statistics(zones, [3, 10], [4, 7])                      # doctest: +SKIP
    """
    import dask

    data = zones.data if isinstance(zones, xr.DataArray) else zones
    if data.ndim != 2:
        raise ValueError(f"zones must be 2-D, got shape {data.shape}")
    rows = _as_index(landslide_rows, "landslide_rows")
    cols = _as_index(landslide_cols, "landslide_cols")
    if rows.shape != cols.shape:
        raise ValueError(
            f"landslide_rows and landslide_cols differ in length: {rows.size} vs {cols.size}"
        )
    flags = None if seen is None else np.asarray(seen, dtype=bool).reshape(-1)
    if flags is not None and flags.shape != rows.shape:
        raise ValueError(f"seen has {flags.size} flags for {rows.size} landslides")
    ny, nx = data.shape
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    rows, cols = rows[inside], cols[inside]

    if hasattr(data, "dask"):
        pixel_counts = [(data == k).sum() for k in range(1, N_ZONES + 1)]
        at_points = data.vindex[rows, cols] if rows.size else np.empty(0, data.dtype)
        *pixel_counts, at_points = dask.compute(*pixel_counts, at_points)
    else:
        data = np.asarray(data)
        pixel_counts = [(data == k).sum() for k in range(1, N_ZONES + 1)]
        at_points = data[rows, cols]
    n_pixels = np.asarray(pixel_counts, dtype=np.int64)
    at_points = np.asarray(at_points)
    table = frequency_table(n_pixels, at_points, "n_pixels")
    if flags is not None:
        table = split_seen(table, at_points, flags[inside])
    return table


def frequency_table(n_cells: np.ndarray, zone_of_landslide: np.ndarray,
                    cell_column: str) -> pd.DataFrame:
    """The frequency-ratio table from cells per zone and the zone of each landslide."""
    n_slides = _per_zone(zone_of_landslide)
    area_share, slide_share, ratio = _shares(n_cells, n_slides)
    return pd.DataFrame(
        {
            "name": [ZONE_NAMES[k] for k in range(1, N_ZONES + 1)],
            cell_column: n_cells,
            "area_share": area_share,
            "n_landslides": n_slides,
            "landslide_share": slide_share,
            "density_ratio": ratio,
        },
        index=pd.Index(range(1, N_ZONES + 1), name="zone"),
    )


def split_seen(table: pd.DataFrame, zone_of_landslide: np.ndarray,
               seen: np.ndarray) -> pd.DataFrame:
    """Add held-out (never trained on: prediction rate) and seen (trained on: success
    rate) landslide columns to a frequency-ratio table.

    ``zone_of_landslide`` and ``seen`` have one entry per landslide.  The shares of each
    group are of that group's landslides in valid zones; NaN where the group is empty.
    """
    cells = table.iloc[:, 1].to_numpy()  # n_pixels or n_units
    out = table.copy()
    z = np.asarray(zone_of_landslide).reshape(-1)
    seen = np.asarray(seen, dtype=bool).reshape(-1)
    if seen.shape != z.shape:
        raise ValueError(f"seen has {seen.size} flags for {z.size} landslides")
    for name, mask in (("heldout", ~seen), ("seen", seen)):
        n = _per_zone(z[mask])
        _, share, ratio = _shares(cells, n)
        out[f"n_{name}"] = n
        out[f"{name}_share"] = share
        out[f"{name}_density_ratio"] = ratio
    return out


def _per_zone(zone_of_landslide: np.ndarray) -> np.ndarray:
    z = np.asarray(zone_of_landslide)
    return np.array([(z == k).sum() for k in range(1, N_ZONES + 1)], dtype=np.int64)


def _shares(n_cells: np.ndarray, n_slides: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        area = n_cells / n_cells.sum() if n_cells.sum() else np.full(N_ZONES, np.nan)
        share = n_slides / n_slides.sum() if n_slides.sum() else np.full(N_ZONES, np.nan)
        ratio = np.where(n_cells > 0, share / area, np.nan)
    return area, share, ratio


def _as_index(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.floor(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{what} must be integer pixel indices, got dtype {arr.dtype}")
