"""Global rasters computed once, kept as tiled GeoTIFFs in the cache, read lazily.

A factor that needs the whole grid at once (the wetness index: depression
filling and flow routing are global) is one dask task on the full array.  Each
pass over a stack (valid mask, statistics, sampling, extraction, prediction)
computes its blocks anew, so without a cache the global routing ran once per
pass.  :func:`cache_global` wraps such a raster in a lazy array whose first block
computes the whole raster once, writes it (atomically) to
``<cache>/terrain/<name>-<key>.tif`` and reads its window back; every later
block, pass and run with the same inputs reads windows of that file.

The key is a hash of what the raster is computed from (the caller passes
it: source file identity, cleaning, grid, ...), so a changed input gets a new
file.

Example
-------
>>> twi = cache_global(twi_lazy, key={"dem": "dem.tif", "size": 123}, name="twi")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

#: Bump when a cached raster's algorithm changes, so old files are not reused.
CACHE_VERSION = 1
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def cache_folder() -> Path:
    """``<download cache>/terrain`` (``LSM_CACHE`` moves it with the downloads)."""
    from lsm.io.fetch import cache_dir

    return cache_dir() / "terrain"


def cache_global(da: xr.DataArray, *, key: dict[str, Any], name: str) -> xr.DataArray:
    """A lazy copy of 2-D ``da`` that is computed at most once, through a cached GeoTIFF.

    Parameters
    ----------
    da
        Lazy (dask) 2-D raster with rioxarray CRS and transform; computed whole,
        once, when the first block of the result is computed.
    key
        JSON-able description of every input of ``da``; its hash names the file.
    name
        Raster name (the file name's stem).

    Returns
    -------
    xarray.DataArray
        Same grid, chunks, coords, attrs and name as ``da``, float32.
    """
    import dask.array as dka

    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "name": name, **key},
                                       sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_folder() / f"{name}-{digest}.tif"
    block = _CachedBlocks(da, path)
    chunks = da.chunks if da.chunks is not None else da.shape
    data = dka.zeros(da.shape, chunks=chunks, dtype=np.float32).map_blocks(
        block, dtype=np.float32, name=f"cached-{name}-{digest}",
        meta=np.empty((0, 0), dtype=np.float32))
    out = xr.DataArray(data, coords=da.coords, dims=da.dims, attrs=dict(da.attrs), name=da.name)
    out.encoding = {}
    return out


class _CachedBlocks:
    """Block function: make sure the file exists, then read the block's window."""

    def __init__(self, da: xr.DataArray, path: Path) -> None:
        self.da = da
        self.path = path
        self.crs = da.rio.crs
        self.transform = da.rio.transform()

    def __call__(self, _: np.ndarray, block_info: Any = None) -> np.ndarray:
        import rasterio
        from rasterio.windows import Window

        self.ensure()
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        with rasterio.open(self.path) as src:
            return src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)

    def ensure(self) -> None:
        if self.path.is_file():
            return
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(str(self.path), threading.Lock())
        with lock:  # other blocks of this pass wait for the one computing it
            if self.path.is_file():
                return
            # one computation on this thread; the result is the whole grid anyway
            values = np.asarray(self.da.data.compute(scheduler="synchronous"),
                                dtype=np.float32)
            self._write(values)

    def _write(self, values: np.ndarray) -> None:
        import rasterio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.tmp-",
                                   suffix=".tif")
        os.close(fd)
        ny, nx = values.shape
        profile = {"driver": "GTiff", "width": nx, "height": ny, "count": 1,
                   "dtype": "float32", "nodata": float("nan"), "crs": self.crs,
                   "transform": self.transform, "tiled": True, "blockxsize": 256,
                   "blockysize": 256, "compress": "zstd", "zstd_level": 1, "predictor": 3,
                   "bigtiff": "IF_SAFER"}
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(tmp, "w", **profile) as dst:
                dst.write(values, 1)
            os.replace(tmp, self.path)  # another process may have won: same content
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
