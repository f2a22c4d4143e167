"""Aligned, Dask-chunked factor stacks for raster regions.

Every factor raster is opened lazily with rioxarray.  Rasters whose CRS or
grid differ from the reference grid are warped on the fly through a GDAL
``WarpedVRT`` (bilinear for continuous factors, nearest for categorical ones),
so nothing is read until a writer or a sampler computes.

Example
-------
>>> spec = load_region("demo-source")           # doctest: +SKIP
>>> ds = build_stack(spec)                      # doctest: +SKIP
>>> ds.slope.data                               # a dask array  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lsm.config.spec import RegionSpec
from lsm.errors import GridMismatchError, SpecError
from lsm.io.fetch import resolve_file
from lsm.io.readers import RasterInfo, band_index, raster_info
from lsm.stack.clean import clean_values


@dataclass(frozen=True)
class Grid:
    """A north-up reference grid."""

    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def res(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        t = self.transform
        x = t.c + t.a * (np.arange(self.width) + 0.5)
        y = t.f + t.e * (np.arange(self.height) + 0.5)
        return x, y

    def describe(self) -> str:
        b = self.bounds
        nd = 6 if self.crs.is_geographic else 1  # degrees need ~0.1 m of precision too
        return (f"{self.width} x {self.height} px at {self.res:g} {_unit(self.crs)}, "
                f"{self.crs.to_string()}, bounds ({', '.join(f'{v:.{nd}f}' for v in b)})")


def _unit(crs: Any) -> str:
    try:
        return "deg" if crs.is_geographic else (crs.linear_units or "units")
    except Exception:
        return "units"



def _reference_grid(spec: RegionSpec, infos: dict[str, RasterInfo]) -> Grid:
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import calculate_default_transform, transform_bounds

    for name, info in infos.items():
        if info.crs is None:
            raise SpecError(f"{spec.where(f'factors.{name}')}.path: {info.path.name} has no "
                            "CRS; every factor raster must carry one (the spec's 'crs' is the "
                            "grid to build, not a guess for unreferenced files)")
    first = next(iter(infos.values()))
    crs = CRS.from_user_input(spec.crs) if spec.crs else first.crs
    if crs is None:
        raise SpecError(f"{spec.where('crs')}: {first.path.name} has no CRS; "
                        "set 'crs' in the spec")
    if first.crs != crs:
        tr, w, h = calculate_default_transform(first.crs, crs, first.width, first.height,
                                               *first.bounds, resolution=spec.resolution)
        res = spec.resolution or abs(tr.a)
        bounds = transform_bounds(first.crs, crs, *first.bounds)
    else:
        res = spec.resolution or abs(first.res[0])
        bounds = first.bounds
    if spec.aoi is not None and spec.aoi.bounds is not None:
        ab = spec.aoi.bounds
        bounds = (max(bounds[0], ab[0]), max(bounds[1], ab[1]),
                  min(bounds[2], ab[2]), min(bounds[3], ab[3]))
        if bounds[2] <= bounds[0] or bounds[3] <= bounds[1]:
            raise GridMismatchError(f"{spec.where('aoi.bounds')}: {spec.aoi.bounds} does not "
                                    f"overlap the first factor raster {first.path.name}")
    if first.crs == crs and spec.resolution is None and spec.aoi is None:
        return Grid(crs, first.transform, first.width, first.height)
    width = max(1, math.ceil((bounds[2] - bounds[0]) / res - 1e-9))
    height = max(1, math.ceil((bounds[3] - bounds[1]) / res - 1e-9))
    grid = Grid(crs, from_origin(bounds[0], bounds[3], res, res), width, height)
    check_grid_size(grid, where=spec.where("resolution"))
    return grid


#: Bytes per pixel held in memory at once by a region's sampling step: the valid-pixel
#: mask (1) and the flat indices of valid pixels absences are drawn from (8).
BYTES_PER_PIXEL = 9


def check_grid_size(grid: Grid, *, where: str, available: int | None = None) -> None:
    """Refuse a grid whose sampling step cannot fit in memory, before allocating anything.

    Stacks, statistics and maps stay lazy and chunked, but the valid-pixel mask and the
    pool of absence candidates are whole-grid arrays. ``LSM_MAX_PIXELS`` overrides the
    limit (a number of pixels).
    """
    import os

    n = grid.width * grid.height
    limit_env = os.environ.get("LSM_MAX_PIXELS")
    if limit_env:
        limit = int(float(limit_env))
        why = f"LSM_MAX_PIXELS={limit_env}"
    else:
        import psutil

        avail = psutil.virtual_memory().available if available is None else available
        limit = int(0.5 * avail / BYTES_PER_PIXEL)
        why = (f"about {n * BYTES_PER_PIXEL / 2**30:.1f} GiB needed to sample it, "
               f"{avail / 2**30:.1f} GiB available")
    if n > limit:
        raise GridMismatchError(
            f"{where}: the grid would be {grid.width:,} x {grid.height:,} px "
            f"({n / 1e9:.2f} Gpx at {grid.res:g} {_unit(grid.crs)}), too large ({why}); "
            "use a coarser resolution or an aoi")


def _same_grid(info: RasterInfo, grid: Grid) -> bool:
    return (info.crs == grid.crs and info.width == grid.width and info.height == grid.height
            and info.transform.almost_equals(grid.transform))


def _overlaps(info: RasterInfo, grid: Grid) -> bool:
    from rasterio.warp import transform_bounds

    b = transform_bounds(info.crs, grid.crs, *info.bounds) if info.crs != grid.crs else info.bounds
    g = grid.bounds
    return not (b[2] <= g[0] or b[0] >= g[2] or b[3] <= g[1] or b[1] >= g[3])


def _open_factor(info: RasterInfo, band: int, grid: Grid, *, categorical: bool,
                 chunks: int) -> xr.DataArray:
    import rasterio
    import rioxarray
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if _same_grid(info, grid):
        da = rioxarray.open_rasterio(info.path, chunks={"band": 1, "y": chunks, "x": chunks},
                                     masked=True, lock=False)
    else:
        # rioxarray re-creates the WarpedVRT lazily from these parameters in each task
        with rasterio.open(info.path) as src, WarpedVRT(
            src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
            resampling=Resampling.nearest if categorical else Resampling.bilinear,
            src_nodata=info.nodata, nodata=info.nodata if info.nodata is not None else np.nan,
        ) as vrt:
            da = rioxarray.open_rasterio(vrt, chunks={"band": 1, "y": chunks, "x": chunks},
                                         masked=True, lock=False)
    da = da.sel(band=band, drop=True)
    x, y = grid.coords()
    return da.assign_coords(x=x, y=y)


def _aoi_mask(spec: RegionSpec, grid: Grid, chunks: int) -> xr.DataArray | None:
    if spec.aoi is None or spec.aoi.path is None:
        return None
    import dask.array as dka
    import geopandas as gpd
    from rasterio.features import geometry_mask

    path = resolve_file(spec.aoi.path, base_dir=spec.base_dir, where=spec.where("aoi.path"))
    gdf = gpd.read_file(path, engine="pyogrio")
    if gdf.crs is None:
        raise SpecError(f"{spec.where('aoi.path')}: {path.name} has no CRS")
    geoms = list(gdf.to_crs(grid.crs).geometry)
    t = grid.transform

    def block(_: np.ndarray, block_info: Any = None) -> np.ndarray:
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        bt = t @ t.translation(c0, r0)
        return ~geometry_mask(geoms, out_shape=(r1 - r0, c1 - c0), transform=bt)

    base = dka.zeros((grid.height, grid.width), chunks=chunks, dtype=bool)
    inside = base.map_blocks(block, dtype=bool)
    x, y = grid.coords()
    return xr.DataArray(inside, dims=("y", "x"), coords={"y": y, "x": x})


def build_stack(spec: RegionSpec, *, chunks: int | None = None, progress: bool = True
                ) -> xr.Dataset:
    """Open, clean and align all factor rasters of ``spec`` into one lazy Dataset.

    Continuous factors are float32 in their true units; categorical factors
    hold their local codes (names come from the spec's ``categories``);
    missing values are NaN.  Derived terrain factors are added lazily.
    """
    if spec.is_table:
        raise SpecError(f"{spec.where('samples')}: a table region has no raster stack")
    chunks = chunks or spec.chunks
    infos: dict[str, RasterInfo] = {}
    paths: dict[str, Path] = {}
    for name, src in spec.factors.items():
        assert src.path is not None
        where = spec.where(f"factors.{name}.path")
        paths[name] = resolve_file(src.path, base_dir=spec.base_dir, where=where,
                                   progress=progress)
        infos[name] = raster_info(paths[name], where=where)
    grid = _reference_grid(spec, infos)
    aoi = _aoi_mask(spec, grid, chunks)

    data: dict[str, xr.DataArray] = {}
    for name, src in spec.factors.items():
        info = infos[name]
        where = spec.where(f"factors.{name}")
        if info.crs is None:
            raise SpecError(f"{where}.path: {info.path.name} has no CRS")
        band = band_index(info, src.band, where=f"{where}.band")
        if not _overlaps(info, grid):
            first_name, first = next(iter(infos.items()))
            origin = "" if spec.aoi is not None else \
                f", taken from factors.{first_name}: {first.path.name}"
            raise GridMismatchError(f"{where}: {info.path.name} does not overlap the region's "
                                    f"grid ({grid.describe()}{origin})")
        categorical = spec.kind_of(name) == "categorical"
        da = _open_factor(info, band, grid, categorical=categorical, chunks=chunks)
        da = clean_values(da, src)
        if aoi is not None:
            da = da.where(aoi)
        da.attrs = {"kind": spec.kind_of(name), "source": info.path.name, "band": band}
        data[name] = da.rename(name)

    if spec.derive is not None:
        from lsm.io.raster_cache import cache_global
        from lsm.stack.terrain import GLOBAL_FACTORS, derive_terrain

        dem = data[spec.derive.dem].rio.write_crs(grid.crs).rio.write_transform(grid.transform)
        todo = [f for f in spec.derive.factors if f not in data]
        for name, da in derive_terrain(dem, todo).items():
            if name in GLOBAL_FACTORS:  # whole-grid routing: once, not once per dask pass
                da = cache_global(da.rio.write_crs(grid.crs).rio.write_transform(grid.transform),
                                  key=_derive_key(spec, infos[spec.derive.dem], grid), name=name)
            if aoi is not None:
                da = da.where(aoi)
            da.attrs = {"kind": spec.kind_of(name), "source": f"derived from {spec.derive.dem}"}
            data[name] = da.astype("float32").rename(name)

    ds = xr.Dataset(data)
    ds = ds.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    ds.attrs.update({"region": spec.name})
    return ds


def _derive_key(spec: RegionSpec, dem: RasterInfo, grid: Grid) -> dict[str, Any]:
    """Everything a derived factor depends on: the DEM file, its cleaning, grid and AOI."""
    st = Path(dem.path).stat()
    return {
        "dem": str(Path(dem.path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "clean": spec.factors[spec.derive.dem].model_dump(mode="json") if spec.derive else None,
        "aoi": spec.aoi.model_dump(mode="json") if spec.aoi is not None else None,
        "crs": grid.crs.to_wkt(), "transform": list(grid.transform)[:6],
        "shape": [grid.height, grid.width],
    }


def stack_grid(ds: xr.Dataset) -> Grid:
    """The :class:`Grid` of a stack built by :func:`build_stack`."""
    return Grid(ds.rio.crs, ds.rio.transform(), ds.sizes["x"], ds.sizes["y"])


def valid_mask(ds: xr.Dataset, factors: list[str] | None = None) -> xr.DataArray:
    """Lazy boolean mask of pixels where every factor has a value.

    Circular factors (aspect) are skipped: their NaN means "flat", a valid
    value that models see as sin = cos = 0.
    """
    factors = list(factors or ds.data_vars)
    checked = [f for f in factors if ds[f].attrs.get("kind") != "circular"] or factors
    ok = None
    for f in checked:
        m = ds[f].notnull()
        ok = m if ok is None else ok & m
    assert ok is not None
    return ok
