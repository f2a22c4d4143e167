"""Presence and absence points for raster regions, and value extraction.

Presences come from the inventory: points as they are; polygons by their
centroid (default: one point per landslide, so large landslides do not weigh
more) or by every pixel centre inside (``polygons: all_pixels``).  Absences
are drawn at random from valid pixels farther than ``min_distance`` from
every landslide geometry (an STRtree query, exact for points and polygons),
reproducibly by seed.  Values are read with one vectorised pointwise index
into the lazy stack.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from lsm.errors import SamplingError


def pixel_index(grid_transform: object, xs: np.ndarray, ys: np.ndarray, width: int,
                height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, col of each point and whether it falls inside the grid."""
    inv = ~grid_transform  # type: ignore[operator]
    cols_f, rows_f = inv @ (np.asarray(xs, dtype="float64"), np.asarray(ys, dtype="float64"))
    cols = np.floor(cols_f).astype("int64")
    rows = np.floor(rows_f).astype("int64")
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return rows, cols, inside


def polygon_pixels(geoms: list, grid_transform: object, width: int, height: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rows/cols of every pixel whose centre lies inside one of ``geoms``."""
    from rasterio.features import rasterize

    burned = rasterize(((g, 1) for g in geoms), out_shape=(height, width),
                       transform=grid_transform, fill=0, dtype="uint8", all_touched=False)
    rows, cols = np.nonzero(burned)
    return rows, cols


def sample_absences(valid: np.ndarray, grid_transform: object, landslides: list, *, n: int,
                    min_distance: float, seed: int = 0,
                    exclude: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` absence pixels (rows, cols) from ``valid``, away from landslides.

    Candidates are drawn in rounds (oversampled) from the valid pixels and
    rejected when within ``min_distance`` of any landslide geometry.
    """
    import shapely
    from shapely import STRtree

    height, width = valid.shape
    flat_ok = valid.ravel().copy()
    if exclude is not None:
        er, ec = exclude
        flat_ok[er * width + ec] = False
    cand_all = np.flatnonzero(flat_ok)
    if cand_all.size == 0:
        raise SamplingError("no valid pixels to draw absences from")
    rng = np.random.default_rng(seed)
    tree = STRtree(landslides) if landslides else None
    t = grid_transform
    chosen: list[np.ndarray] = []
    got = 0
    pool = rng.permutation(cand_all)
    pos = 0
    while got < n and pos < pool.size:
        take = pool[pos:pos + max(4 * (n - got), 1024)]
        pos += take.size
        r, c = np.divmod(take, width)
        xs = t.c + t.a * (c + 0.5)  # type: ignore[attr-defined]
        ys = t.f + t.e * (r + 0.5)  # type: ignore[attr-defined]
        if tree is not None:
            pts = shapely.points(xs, ys)
            if min_distance > 0:
                hit = tree.query(pts, predicate="dwithin", distance=min_distance)[0]
            else:
                hit = tree.query(pts, predicate="intersects")[0]
            keep = np.ones(take.size, dtype=bool)
            keep[np.unique(hit)] = False
            take = take[keep]
        chosen.append(take[: n - got])
        got += min(take.size, n - got)
    if got < n:
        raise SamplingError(
            f"only {got} of {n} absences fit outside a {min_distance:g} buffer around the "
            "landslides; lower absences.min_distance or absences.ratio/count"
        )
    idx = np.concatenate(chosen)
    return np.divmod(idx, width)


def extract_values(ds: xr.Dataset, rows: np.ndarray, cols: np.ndarray,
                   factors: list[str]) -> pd.DataFrame:
    """Factor values at pixels (rows, cols), one vectorised lazy index + compute."""
    sel = ds[factors].isel(y=xr.DataArray(rows, dims="pt"), x=xr.DataArray(cols, dims="pt"))
    sel = sel.compute()
    return pd.DataFrame({f: sel[f].to_numpy().astype("float64") for f in factors})
