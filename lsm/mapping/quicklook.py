"""Quick-look PNGs of probability and zone rasters.

One figure: a hillshade underlay (when elevation is given), the map as a
semi-transparent colour layer, map-unit axes labelled with the CRS, a scale
bar, a north arrow and optional landslide points.  Rasters larger than
``max_size`` pixels a side are decimated first (block means for probability
and elevation, every n-th pixel for zones), so the plot stays fast and small
whatever the raster size.

Example
-------
>>> quicklook_png(prob, "prob.png", hillshade_from=stack["elevation"])   # doctest: +SKIP
>>> quicklook_png(zones, "zones.png", kind="zones", points=(xs, ys))     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr

from lsm.mapping.zones import ZONE_COLORS, ZONE_NAMES

Kind = Literal["probability", "zones", "uncertainty"]

PROBABILITY_CMAP = "magma_r"
#: Uncertainty (spread of P): a sequential map scaled to its own 99th percentile.
UNCERTAINTY_CMAP = "viridis"
OVERLAY_ALPHA = 0.7


def quicklook_png(
    data: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    kind: Kind = "probability",
    hillshade_from: xr.DataArray | None = None,
    points: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str = "",
    max_size: int = 1500,
    dpi: int = 150,
) -> Path:
    """Render a probability or zone raster to a PNG.

    Parameters
    ----------
    data
        2-D probability (``kind="probability"``, values in [0, 1], NaN = no
        data), spread of the probability (``kind="uncertainty"``, >= 0, NaN = no
        data; colours scaled from 0 to its 99th percentile) or zone raster
        (``kind="zones"``, 1..5, 0 = no data) with ``x``/``y`` coordinates in map units.
    path
        Target ``.png``; written atomically.
    kind
        ``"probability"`` (colourbar ``P(landslide)``), ``"uncertainty"`` (colourbar
        ``std of P(landslide)``) or ``"zones"`` (legend).
    hillshade_from
        Elevation raster on the same area; drawn as a grey hillshade under the map.
    points
        ``(xs, ys)`` of landslides in the map's CRS, drawn on top.
    title
        Figure title.
    max_size
        Largest number of pixels per side that is plotted.
    dpi
        Resolution of the PNG.

    Returns
    -------
    pathlib.Path
        ``path``.

    Example
    -------
    >>> quicklook_png(prob, "prob.png", title="Region A")               # doctest: +SKIP
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if kind not in ("probability", "zones", "uncertainty"):
        raise ValueError(f"kind must be 'probability', 'uncertainty' or 'zones', got {kind!r}")
    data = _as_2d(data)
    ydim, xdim = data.dims
    small = _decimate(data, max_size, categorical=kind == "zones")
    values = np.asarray(small.values)
    extent, origin = _extent(small)

    width_in = 8.0
    ny, nx = values.shape
    map_h = width_in * 0.72 * ny / max(nx, 1)
    fig = Figure(figsize=(width_in, min(max(map_h + 1.6, 4.0), 14.0)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("white")

    if hillshade_from is not None:
        dem = _decimate(_as_2d(hillshade_from), max_size, categorical=False)
        shade = hillshade(np.asarray(dem.values, dtype=np.float64), *_cell_size(dem))
        dem_extent, dem_origin = _extent(dem)
        ax.imshow(np.ma.masked_invalid(shade), cmap="gray", vmin=0.0, vmax=1.0,
                  extent=dem_extent, origin=dem_origin, interpolation="nearest")

    alpha = OVERLAY_ALPHA if hillshade_from is not None else 1.0
    handles: list = []
    if kind == "probability":
        layer = np.ma.masked_invalid(values.astype(np.float64))
        im = ax.imshow(layer, cmap=PROBABILITY_CMAP, vmin=0.0, vmax=1.0, alpha=alpha,
                       extent=extent, origin=origin, interpolation="nearest")
        cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.03)
        cbar.set_label("P(landslide)")
        cbar.solids.set_alpha(1.0)
    elif kind == "uncertainty":
        layer = np.ma.masked_invalid(values.astype(np.float64))
        top = float(np.percentile(layer.compressed(), 99)) if layer.count() else 1.0
        im = ax.imshow(layer, cmap=UNCERTAINTY_CMAP, vmin=0.0, vmax=max(top, 1e-6),
                       alpha=alpha, extent=extent, origin=origin, interpolation="nearest")
        cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.03)
        cbar.set_label("std of P(landslide)")
        cbar.solids.set_alpha(1.0)
    else:
        classes = sorted(ZONE_COLORS)
        cmap = ListedColormap([np.asarray(ZONE_COLORS[k]) / 255.0 for k in classes])
        norm = BoundaryNorm(np.arange(classes[0] - 0.5, classes[-1] + 1.0), cmap.N)
        layer = np.ma.masked_where(~np.isin(values, classes), values)
        ax.imshow(layer, cmap=cmap, norm=norm, alpha=alpha, extent=extent, origin=origin,
                  interpolation="nearest")
        handles = [
            Patch(facecolor=np.asarray(ZONE_COLORS[k]) / 255.0, edgecolor="0.3",
                  label=f"{k} {ZONE_NAMES[k]}")
            for k in reversed(classes)
        ]

    if points is not None:
        xs, ys = (np.asarray(v, dtype=np.float64).reshape(-1) for v in points)
        pts = ax.scatter(xs, ys, s=14, marker="o", facecolor="white", edgecolor="black",
                         linewidth=0.8, zorder=5, label=f"landslides ({xs.size})")
        handles.append(pts)
    if kind == "zones":
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  frameon=False, fontsize=8, title="Susceptibility zone", title_fontsize=9)
    elif handles:  # the colourbar holds the right margin: points go inside
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)

    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    crs_name, unit = _crs_label(data)
    ax.set_xlabel(f"{xdim} [{unit}]" if unit else xdim, fontsize=8)
    ax.set_ylabel(f"{ydim} [{unit}]" if unit else ydim, fontsize=8)
    # Map coordinates have 6-7 digits: few ticks, written out in full.
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.tick_params(labelsize=7)
    ax.tick_params(axis="y", labelrotation=90)
    for lab in ax.get_yticklabels():
        lab.set_verticalalignment("center")
    if crs_name:
        ax.text(1.0, -0.09, crs_name, transform=ax.transAxes, ha="right", va="top",
                fontsize=7, color="0.3")
    _scale_bar(ax, extent, unit)
    _north_arrow(ax)
    if title:
        ax.set_title(title, fontsize=11)

    return _save_atomic(fig, Path(path), dpi)


def hillshade(
    elevation: np.ndarray,
    dx: float,
    dy: float,
    *,
    azimuth: float = 315.0,
    altitude: float = 45.0,
) -> np.ndarray:
    """Lambertian hillshade in [0, 1] of a north-up elevation grid.

    ``dx``/``dy`` are the cell sizes in the elevation's units (``dy`` > 0 means
    rows run north to south); NaN cells stay NaN.
    """
    # np.gradient along rows gives d/d(row); rows go south when dy > 0.
    dz_drow, dz_dcol = np.gradient(elevation)
    dzdx = dz_dcol / dx
    dzdy = -dz_drow / dy
    az, alt = math.radians(azimuth), math.radians(altitude)
    light = (math.cos(alt) * math.sin(az), math.cos(alt) * math.cos(az), math.sin(alt))
    norm = np.sqrt(dzdx**2 + dzdy**2 + 1.0)
    shade = (-dzdx * light[0] - dzdy * light[1] + light[2]) / norm
    return np.clip(shade, 0.0, 1.0)


def _as_2d(da: xr.DataArray) -> xr.DataArray:
    if da.ndim == 3 and da.shape[0] == 1:
        da = da.isel({da.dims[0]: 0}, drop=True)
    if da.ndim != 2:
        raise ValueError(f"expected a 2-D (y, x) raster, got dims {da.dims}")
    return da


def _decimate(da: xr.DataArray, max_size: int, *, categorical: bool) -> xr.DataArray:
    ydim, xdim = da.dims
    step = max(1, math.ceil(max(da.shape) / max_size))
    if step == 1:
        return da
    if categorical:
        return da.isel({ydim: slice(step // 2, None, step), xdim: slice(step // 2, None, step)})
    return da.astype(np.float32).coarsen({ydim: step, xdim: step}, boundary="trim").mean()


def _extent(da: xr.DataArray) -> tuple[tuple[float, float, float, float], str]:
    ydim, xdim = da.dims
    x = np.asarray(da[xdim].values, dtype=np.float64)
    y = np.asarray(da[ydim].values, dtype=np.float64)
    hx = abs(x[1] - x[0]) / 2 if x.size > 1 else 0.5
    hy = abs(y[1] - y[0]) / 2 if y.size > 1 else 0.5
    origin = "upper" if y.size < 2 or y[0] > y[-1] else "lower"
    extent = (x.min() - hx, x.max() + hx, y.min() - hy, y.max() + hy)
    return extent, origin


def _cell_size(da: xr.DataArray) -> tuple[float, float]:
    """Cell size in metres where possible (geographic degrees are converted)."""
    ydim, xdim = da.dims
    x = np.asarray(da[xdim].values, dtype=np.float64)
    y = np.asarray(da[ydim].values, dtype=np.float64)
    dx = abs(x[1] - x[0]) if x.size > 1 else 1.0
    dy = abs(y[1] - y[0]) if y.size > 1 else 1.0
    crs = da.rio.crs
    if crs is not None and crs.is_geographic:
        lat = math.radians(float(np.nanmean(y)))
        dx *= 111_320.0 * max(math.cos(lat), 1e-6)
        dy *= 110_540.0
    if y.size > 1 and y[0] < y[-1]:
        dy = -dy  # rows run south to north
    return dx, dy


def _crs_label(da: xr.DataArray) -> tuple[str, str]:
    crs = da.rio.crs
    if crs is None:
        return "", ""
    try:
        import pyproj

        pcrs = pyproj.CRS.from_user_input(crs.to_wkt())
        name = pcrs.name
        epsg = pcrs.to_epsg()
        unit = pcrs.axis_info[0].unit_name if pcrs.axis_info else ""
    except Exception:  # the label is cosmetic; never fail a plot on it
        name, epsg, unit = crs.to_string(), None, ""
    unit = {"metre": "m", "meter": "m", "degree": "°", "US survey foot": "ftUS",
            "foot": "ft"}.get(unit, unit)
    label = f"{name} (EPSG:{epsg})" if epsg else name
    return label, unit


def _nice_length(span: float) -> float:
    """A 1-2-5 length close to a fifth of ``span``."""
    target = span / 5.0
    if target <= 0 or not math.isfinite(target):
        return 0.0
    mag = 10 ** math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * mag <= target:
            return m * mag
    return mag


def _scale_bar(ax, extent, unit: str) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _nice_length(extent[1] - extent[0])
    if length <= 0:
        return
    if unit == "m" and length >= 1000:
        label = f"{length / 1000:g} km"
    else:
        label = f"{length:g} {unit}".strip()
    bar = AnchoredSizeBar(ax.transData, length, label, loc="lower left", pad=0.4,
                          borderpad=0.6, sep=3, frameon=True,
                          size_vertical=(extent[3] - extent[2]) / 150,
                          fontproperties={"size": 8})
    bar.patch.set_facecolor("white")
    bar.patch.set_alpha(0.8)
    bar.patch.set_edgecolor("0.6")
    ax.add_artist(bar)


def _north_arrow(ax) -> None:
    ax.annotate("N", xy=(0.95, 0.96), xytext=(0.95, 0.85), xycoords="axes fraction",
                ha="center", va="center", fontsize=10, fontweight="bold",
                arrowprops={"arrowstyle": "-|>", "facecolor": "black", "lw": 1.2},
                bbox={"boxstyle": "circle,pad=0.2", "fc": "white", "ec": "none",
                      "alpha": 0.7})


def _save_atomic(fig, path: Path, dpi: int) -> Path:
    from lsm.io.artifacts import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path
