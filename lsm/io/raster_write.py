"""Writers for the map products: a probability COG and a styled zone GeoTIFF.

Both outputs are Cloud-Optimized GeoTIFFs (tiled, compressed, with internal
overviews) written in two steps:

1. the array is streamed, a batch of whole blocks at a time (at most
   :data:`BAND_BYTES`), into a tiled GeoTIFF next to the target, so neither a
   dask array nor a band of it as wide as the raster is ever held whole;
2. GDAL's ``COG`` driver copies it into the final layout, building overviews
   out of core (fast DEFLATE, level :data:`DEFLATE_LEVEL`, on all cores).

GDAL's block cache is held to :data:`GDAL_CACHE_BYTES` during the write (unless
``GDAL_CACHEMAX`` is set in the environment): left at its default (5 % of the
RAM) it fills with tiles of the factor rasters as they are read, and the peak
memory of a map grew with the raster up to that cap.

Writes are atomic: everything goes to hidden temp files in the target's folder
(``.name.tmp-XXXX.tif``) and only the finished file is renamed onto ``path``.
On any failure, Ctrl-C included, the temp files are removed and ``path`` is
left as it was.

The zone raster carries a colour table (QGIS and GDAL show it styled), tags
``ZONE_1 = "very low"`` ..., and two sidecars written atomically with it:
``name.tif.aux.xml`` (GDAL category names, read by ``gdalinfo`` and GDAL-based
tools) and ``name.qml`` (a QGIS paletted style with the class labels, which
QGIS applies when it opens the file).

Example
-------
>>> write_probability_cog(prob, "out/susceptibility.tif")                  # doctest: +SKIP
>>> job = write_zones_geotiff(zones, "out/zones.tif", names=ZONE_NAMES,
...                           colors=ZONE_COLORS, compute=False)         # doctest: +SKIP
>>> job.compute()                                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import xarray as xr

from lsm.io.artifacts import before_place, chmod_default, with_path

if TYPE_CHECKING:
    from dask.delayed import Delayed

# Bytes of output blocks computed at once; bounds the memory a write needs.
BAND_BYTES = 64 * 1024 * 1024
# GDAL block cache during a write (reads of the factor rasters fill it).
GDAL_CACHE_BYTES = 128 * 1024 * 1024
# DEFLATE level of the final COG: level 1 is about 3x faster than GDAL's default 6
# on float32 maps for a few per cent more bytes.
DEFLATE_LEVEL = 1


def write_probability_cog(
    da: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    compute: bool = True,
    blocksize: int = 512,
    compress: str = "deflate",
    overview_count: int | None = None,
    base_rate: str | None = None,
    prevalence: float | None = None,
) -> Delayed | None:
    """Write a probability raster as a float32 Cloud-Optimized GeoTIFF.

    Parameters
    ----------
    da
        2-D probability raster (``y``, ``x``) with rioxarray CRS/transform;
        NaN = no data.  Dask-backed arrays are computed one band of blocks at a time.
    path
        Target ``.tif``; its folder is created if needed.
    compute
        ``False`` returns a :class:`dask.delayed.Delayed` that does the whole
        write (prediction, COG layout, rename) when computed.
    blocksize
        Internal tile size in pixels (a multiple of 16 in 128..4096; 256 or 512).
    compress
        GDAL compression (``deflate``, ``zstd``, ``lzw``); a floating-point
        predictor is always used.
    overview_count
        Number of overview levels (2, 4, 8, ...).  ``None`` lets GDAL add
        levels until the smallest fits in one tile.
    base_rate
        What landslide share the probabilities assume (e.g. "P assumes a 50 % landslide
        share (balanced training points)"): appended to the band description and kept
        as tag ``BASE_RATE``.
    prevalence
        That share as a number (tag ``PREVALENCE``).

    Returns
    -------
    Delayed or None

    Example
    -------
    >>> write_probability_cog(prob, "susceptibility.tif")              # doctest: +SKIP
    """
    tags = {"QUANTITY": "P(landslide)"}
    if base_rate:
        tags["BASE_RATE"] = base_rate
    if prevalence is not None:
        tags["PREVALENCE"] = repr(float(prevalence))
    description = f"P(landslide); {base_rate}" if base_rate else "P(landslide)"
    return write_value_cog(da, path, description=description, units="probability",
                           tags=tags, compute=compute,
                           blocksize=blocksize, compress=compress,
                           overview_count=overview_count)


def write_value_cog(
    da: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    description: str,
    units: str | None = None,
    tags: Mapping[str, str] | None = None,
    compute: bool = True,
    blocksize: int = 512,
    compress: str = "deflate",
    overview_count: int | None = None,
) -> Delayed | None:
    """Write any continuous raster as a float32 COG with its own band description.

    Parameters
    ----------
    da
        2-D raster (``y``, ``x``) with rioxarray CRS/transform; NaN = no data.
    path
        Target ``.tif``; its folder is created if needed.
    description
        Band description (what GDAL and QGIS show as the band name).
    units
        Band unit (GDAL's unit type), e.g. ``"log-odds"``.
    tags
        Dataset metadata items.
    compute, blocksize, compress, overview_count
        As for :func:`write_probability_cog`.

    Returns
    -------
    Delayed or None

    Example
    -------
    >>> write_value_cog(shap_slope, "shap_slope.tif", units="log-odds",
    ...                 description="SHAP contribution of slope (log-odds)")  # doctest: +SKIP
    """
    job = _RasterJob(
        da=da,
        path=Path(path),
        dtype="float32",
        nodata=float("nan"),
        blocksize=blocksize,
        compress=compress,
        resampling="AVERAGE",
        overview_count=overview_count,
        description=description,
        units=units,
        tags=dict(tags or {}),
    )
    return _run(job, compute)


def write_zones_geotiff(
    zones: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    names: Mapping[int, str],
    colors: Mapping[int, tuple[int, ...]],
    compute: bool = True,
    blocksize: int = 512,
    compress: str = "deflate",
    overview_count: int | None = None,
) -> Delayed | None:
    """Write a zone raster as a paletted uint8 Cloud-Optimized GeoTIFF.

    Parameters
    ----------
    zones
        2-D class raster, 1..5 with 0 = nodata (as from ``classify_zones``).
    path
        Target ``.tif``; ``<stem>.qml`` and ``<name>.aux.xml`` are written next to it.
    names, colors
        Class labels and RGB(A) colours (0-255) by class value, e.g.
        ``lsm.mapping.zones.ZONE_NAMES`` and ``ZONE_COLORS``.
    compute, blocksize, compress, overview_count
        As for :func:`write_probability_cog`; overviews use the mode of the classes.

    Returns
    -------
    Delayed or None

    Example
    -------
    >>> write_zones_geotiff(zones, "zones.tif", names=ZONE_NAMES,
    ...                     colors=ZONE_COLORS)                 # doctest: +SKIP
    """
    names = {int(k): str(v) for k, v in names.items()}
    rgba = {int(k): _rgba(v) for k, v in colors.items()}
    if 0 in rgba:
        raise ValueError("colors: class 0 is reserved for nodata")
    for k in list(names) + list(rgba):
        if not 1 <= int(k) <= 255:
            raise ValueError(f"class {k!r} is outside 1..255")
    colormap = {0: (0, 0, 0, 0), **rgba}
    path = Path(path)
    job = _RasterJob(
        da=zones,
        path=path,
        dtype="uint8",
        nodata=0,
        blocksize=blocksize,
        compress=compress,
        resampling="MODE",
        overview_count=overview_count,
        description="susceptibility zone",
        tags={f"ZONE_{int(k)}": str(v) for k, v in sorted(names.items())},
        colormap=colormap,
        sidecars={
            path.with_name(path.name + ".aux.xml"): _pam_categories(names),
            path.with_suffix(".qml"): _qgis_paletted_style(names, rgba),
        },
    )
    return _run(job, compute)


def _rgba(color: tuple[int, ...]) -> tuple[int, int, int, int]:
    c = tuple(int(v) for v in color)
    if len(c) == 3:
        c = (*c, 255)
    if len(c) != 4 or any(not 0 <= v <= 255 for v in c):
        raise ValueError(f"colour {color!r} is not RGB(A) in 0..255")
    return c  # type: ignore[return-value]


def _run(job: _RasterJob, compute: bool) -> Delayed | None:
    if compute:
        job()
        return None
    import dask

    # The job is opaque to dask on purpose: handing it the DataArray as an
    # argument would make dask compute the whole array before the call.
    return dask.delayed(job, pure=False)(
        dask_key_name=f"write-{job.path.name}-{uuid.uuid4().hex[:12]}"
    )


class _RasterJob:
    """Everything one atomic COG write needs; calling it does the write."""

    def __init__(
        self,
        *,
        da: xr.DataArray,
        path: Path,
        dtype: str,
        nodata: float,
        blocksize: int,
        compress: str,
        resampling: str,
        overview_count: int | None,
        description: str,
        tags: dict[str, str],
        units: str | None = None,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        sidecars: dict[Path, str] | None = None,
    ):
        if blocksize % 16 or not 128 <= blocksize <= 4096:
            raise ValueError(f"blocksize must be a multiple of 16 in 128..4096, got {blocksize}")
        if overview_count is not None and overview_count < 0:
            raise ValueError(f"overview_count must be >= 0, got {overview_count}")
        self.da = _as_2d(da)
        self.path = path
        self.dtype = dtype
        self.nodata = nodata
        self.blocksize = blocksize
        self.compress = compress.upper()
        self.resampling = resampling
        self.overview_count = overview_count
        self.description = description
        self.units = units
        self.tags = tags
        self.colormap = colormap
        self.sidecars = sidecars or {}
        # Fail on a bad grid now rather than at compute time.
        self.transform = self.da.rio.transform()
        self.crs = self.da.rio.crs

    def __call__(self) -> None:
        import rasterio
        from rasterio.shutil import copy as gdal_copy

        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        temps: list[Path] = []
        placed: list[Path] = []
        # GDAL_CACHEMAX sets GDAL's (process-wide) block cache; a user's own setting wins.
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
        try:
            stage = _temp_path(folder, self.path.name, temps)
            final = _temp_path(folder, self.path.name, temps)
            with rasterio.Env(**cache):
                self._write_stage(stage)
            options: dict[str, Any] = {
                "BLOCKSIZE": self.blocksize,
                "COMPRESS": self.compress,
                "PREDICTOR": "YES",  # 3 (floating point) for float32, 2 for uint8
                "OVERVIEW_RESAMPLING": self.resampling,
                "BIGTIFF": "IF_SAFER",
                "NUM_THREADS": "ALL_CPUS",
            }
            if self.overview_count is not None:
                options["OVERVIEW_COUNT"] = self.overview_count
            if self.compress == "DEFLATE":
                options["LEVEL"] = DEFLATE_LEVEL
            with rasterio.Env(GDAL_PAM_ENABLED="NO", **cache):
                gdal_copy(str(stage), str(final), driver="COG", **options)
            _remove(stage)
            sidecars = [(dst, _write_temp_text(folder, dst.name, text, temps))
                        for dst, text in self.sidecars.items()]
            for dst, tmp in sidecars:
                chmod_default(tmp)
                before_place(dst)
                os.replace(tmp, dst)
                placed.append(dst)
            chmod_default(final)
            before_place(self.path)
            os.replace(final, self.path)
        except BaseException as exc:
            # Sidecars already moved into place describe a file that never came.
            for tmp in [*temps, *placed]:
                _remove(tmp)
            named = with_path(exc, self.path)  # disk full: say which map
            if named is not None:
                raise named from exc
            raise

    def _write_stage(self, stage: Path) -> None:
        import rasterio
        from rasterio.windows import Window

        ny, nx = self.da.shape
        profile = {
            "driver": "GTiff",
            "width": nx,
            "height": ny,
            "count": 1,
            "dtype": self.dtype,
            "nodata": self.nodata,
            "crs": self.crs,
            "transform": self.transform,
            "tiled": True,
            "blockxsize": self.blocksize,
            "blockysize": self.blocksize,
            "bigtiff": "IF_SAFER",
        }
        if np.dtype(self.dtype).kind != "f":
            # Class rasters shrink a lot; probabilities barely do (58 vs 67 MB at
            # 4096^2) and their stage is written and read back ~0.1 s faster raw.
            profile.update(compress="zstd", zstd_level=1)
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(stage, "w", **profile) as dst:
            dst.set_band_description(1, self.description)
            if self.units:
                dst.set_band_unit(1, self.units)
            dst.update_tags(**self.tags)
            if self.colormap is not None:
                dst.write_colormap(1, self.colormap)
            for r0, c0, block in _blocks(self.da, self.blocksize):
                block = _cast(block, self.dtype, self.nodata)
                dst.write(block, 1, window=Window(c0, r0, block.shape[1], block.shape[0]))


def _as_2d(da: xr.DataArray) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(da).__name__}")
    if da.ndim == 3 and da.shape[0] == 1:
        da = da.isel({da.dims[0]: 0}, drop=True)
    if da.ndim != 2:
        raise ValueError(f"expected a 2-D (y, x) raster, got dims {da.dims}")
    return da


def _blocks(da: xr.DataArray, blocksize: int):
    """Yield ``(row0, col0, values)`` windows covering the raster in row-major order.

    A dask array yields its own chunks (none computed twice), computed together
    in batches of at most :data:`BAND_BYTES` (at least one chunk), so the
    scheduler keeps every core busy while the memory stays bounded whatever the
    raster's size; chunks are written as they are, never concatenated.  Other
    arrays come in bands of whole tiles.
    """
    ny, nx = da.shape
    itemsize = max(da.dtype.itemsize, 4)
    if da.chunks is not None:
        import dask

        data = da.data
        rows = np.cumsum((0, *data.chunks[0]))
        cols = np.cumsum((0, *data.chunks[1]))
        batch: list[tuple[int, int]] = []
        size = 0
        cells = [(i, j) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]
        for k, (i, j) in enumerate(cells):
            batch.append((i, j))
            size += (rows[i + 1] - rows[i]) * (cols[j + 1] - cols[j]) * itemsize
            nxt = cells[k + 1] if k + 1 < len(cells) else None
            if nxt is not None and size + (rows[nxt[0] + 1] - rows[nxt[0]]) * (
                    cols[nxt[1] + 1] - cols[nxt[1]]) * itemsize <= BAND_BYTES:
                continue
            values = dask.compute(*[data.blocks[i, j] for i, j in batch])
            for (i, j), v in zip(batch, values, strict=True):
                yield int(rows[i]), int(cols[j]), np.asarray(v)
            batch, size = [], 0
    else:
        row_bytes = nx * itemsize
        step = max(blocksize, (BAND_BYTES // max(row_bytes, 1)) // blocksize * blocksize)
        for r0 in range(0, ny, step):
            r1 = min(ny, r0 + step)
            yield r0, 0, np.asarray(da.isel({da.dims[0]: slice(r0, r1)}).values)


def _cast(block: np.ndarray, dtype: str, nodata: float) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return block.astype(dtype, copy=False)
    if block.dtype.kind == "f":
        block = np.where(np.isfinite(block), block, nodata)
    info = np.iinfo(dtype)
    if block.size and (block.min() < info.min or block.max() > info.max):
        raise ValueError(f"values outside the {dtype} range {info.min}..{info.max}")
    return block.astype(dtype, copy=False)


def _temp_path(folder: Path, name: str, temps: list[Path]) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp-", suffix=".tif")
    os.close(fd)
    temps.append(Path(tmp))
    return Path(tmp)


def _write_temp_text(folder: Path, name: str, text: str, temps: list[Path]) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.tmp-")
    temps.append(Path(tmp))
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(tmp)


def _remove(path: Path) -> None:
    # GDAL may leave helpers next to a file it was writing (e.g. overview temps).
    for p in [str(path), *glob.glob(glob.escape(str(path)) + ".*")]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


def _pam_categories(names: Mapping[int, str]) -> str:
    """GDAL PAM sidecar with category names (index = pixel value)."""
    top = max([0, *map(int, names)])
    labels = [names.get(i, "") if i else "nodata" for i in range(top + 1)]
    cats = "\n".join(f"      <Category>{escape(str(c))}</Category>" for c in labels)
    return (
        "<PAMDataset>\n"
        '  <PAMRasterBand band="1">\n'
        "    <CategoryNames>\n"
        f"{cats}\n"
        "    </CategoryNames>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )


def _qgis_paletted_style(
    names: Mapping[int, str], colors: Mapping[int, tuple[int, int, int, int]]
) -> str:
    """QGIS default-style sidecar: paletted renderer with the class labels."""
    entries = []
    for k in sorted(set(map(int, colors)) | set(map(int, names))):
        r, g, b, a = colors.get(k, (128, 128, 128, 255))
        label = names.get(k, str(k))
        entries.append(
            f'        <paletteEntry value="{k}" color="#{r:02x}{g:02x}{b:02x}" '
            f'alpha="{a}" label={quoteattr(str(label))}/>'
        )
    palette = "\n".join(entries)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        '<qgis version="3.28.0" styleCategories="AllStyleCategories">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
        'nodataColor="">\n'
        "      <rasterTransparency/>\n"
        "      <colorPalette>\n"
        f"{palette}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        '    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>\n'
        '    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0"/>\n'
        '    <rasterresampler maxOversampling="2"/>\n'
        "  </pipe>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )
