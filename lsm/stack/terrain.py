"""Terrain factors derived from a DEM: slope, aspect, curvatures and wetness.

Every function takes a georeferenced DEM (an :class:`xarray.DataArray` with dims
``("y", "x")``, a CRS and a transform readable by rioxarray) and returns a new
``float32`` DataArray on the same grid, with the DEM's coords, dims and attrs and
``name`` set to the factor.  A numpy-backed DEM gives a numpy result; a dask-backed
DEM gives a lazy dask result with the same chunks.

Conventions
-----------
- Cell size comes from ``dem.rio.resolution()`` and keeps its sign, so north-up
  (``y`` decreasing with the row) and south-up grids both give the right
  north/east directions.  For a geographic CRS (degrees) the cell size is turned
  into metres on a sphere of radius 6 371 008.8 m at the latitude of the grid
  centre: an approximation that is good for the small extents a region covers.
  Without a CRS, map units are taken to be metres.
- A cell whose 3 x 3 window is incomplete (grid border) or holds a NaN gets NaN.
  A DEM ``nodata`` value recorded by rioxarray is treated as NaN.
- Values are computed in float64 and returned as float32.

Example
-------
>>> factors = derive_terrain(dem, ["slope", "aspect", "twi"])   # doctest: +SKIP
>>> factors["slope"].max().compute()                            # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import dask.array as dsa
import numpy as np
import xarray as xr
from scipy import ndimage

from lsm.config.factors import DERIVABLE_FACTORS
from lsm.errors import DataError, SpecError

__all__ = [
    "FACTORS",
    "aspect",
    "curvature",
    "derive_terrain",
    "flow_accumulation",
    "plan_curvature",
    "profile_curvature",
    "slope",
    "twi",
]

#: Names :func:`derive_terrain` understands.
FACTORS: tuple[str, ...] = tuple(DERIVABLE_FACTORS)

#: Factors computed from the whole grid at once (flow routing); ``build_stack``
#: computes each once per stack through a cached GeoTIFF (``lsm.io.raster_cache``).
GLOBAL_FACTORS: tuple[str, ...] = ("twi",)

#: Below this gradient (rise over run) a cell is flat: aspect is NaN there and
#: plan and profile curvature are 0.
FLAT_GRADIENT = 1e-8

#: tan(slope) is floored at tan(0.1 degree) in the wetness index, so flat cells
#: give a large but finite value.
MIN_TAN_SLOPE = math.tan(math.radians(0.1))

#: Exponent of the slope weights in multiple-flow-direction routing (Freeman 1991).
MFD_EXPONENT = 1.1

#: Rise (m) given to each step across a filled depression or flat so that every
#: cell drains; small enough not to matter for the wetness index.
FILL_EPSILON = 1e-6

_EARTH_RADIUS_M = 6_371_008.8

Kernel = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- #
# Public functions
# --------------------------------------------------------------------------- #
def slope(dem: xr.DataArray) -> xr.DataArray:
    """Slope in degrees (0 to 90).

    The gradient is Horn's (1981) weighted 3 x 3 finite difference, as in GDAL and
    ArcGIS.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``slope``, float32 degrees; NaN on the border and next to NaN cells.

    Example
    -------
    >>> slope(dem).mean().item()                                   # doctest: +SKIP
    """
    return _apply(dem, _slope_numpy, "slope", "degree", "slope angle")


def aspect(dem: xr.DataArray) -> xr.DataArray:
    """Downslope direction in degrees clockwise from north, in ``[0, 360)``.

    0 means the surface dips to the north, 90 to the east, 180 to the south and
    270 to the west.  Flat cells (gradient below :data:`FLAT_GRADIENT`) are NaN:
    a flat cell has no aspect, and a missing value says so.  The gradient is the
    same Horn (1981) estimate :func:`slope` uses.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``aspect``, float32 degrees.

    Example
    -------
    >>> aspect(dem).sel(x=x0, y=y0, method="nearest").item()       # doctest: +SKIP
    """
    return _apply(dem, _aspect_numpy, "aspect", "degree", "downslope azimuth from north")


def curvature(dem: xr.DataArray) -> xr.DataArray:
    """General (total) curvature in 1/m, positive where the surface is convex.

    From the Zevenbergen & Thorne (1987) quadratic fitted to the 3 x 3 window:
    ``curvature = -(z_xx + z_yy)`` (ArcGIS's ``-2 (D + E)`` without its factor
    100, so units stay 1/m).  Positive on hilltops and ridges (upwardly convex),
    negative in hollows and valleys, 0 on planes.  It equals
    ``profile_curvature + plan_curvature``.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``curvature``, float32 in 1/m.

    Example
    -------
    >>> curvature(dem)                                              # doctest: +SKIP
    """
    return _apply(dem, _curvature_numpy, "curvature", "1/m", "general curvature")


def profile_curvature(dem: xr.DataArray) -> xr.DataArray:
    """Curvature along the direction of steepest slope, in 1/m; positive = convex.

    ``-(z_xx p^2 + 2 z_xy p q + z_yy q^2) / (p^2 + q^2)`` with ``p, q`` the
    gradient, from the Zevenbergen & Thorne (1987) quadratic (their profile
    curvature, same sign).  Positive where the slope steepens downhill (convex
    profile, flow accelerates, e.g. below a crest), negative where it eases off
    (concave profile, flow decelerates, e.g. at a slope foot).  0 on flat cells.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``profile_curvature``, float32 in 1/m.

    Example
    -------
    >>> profile_curvature(dem)                                      # doctest: +SKIP
    """
    return _apply(dem, _profile_curvature_numpy, "profile_curvature", "1/m",
                  "profile curvature (positive = convex)")


def plan_curvature(dem: xr.DataArray) -> xr.DataArray:
    """Curvature across the slope (along the contour), in 1/m; positive = convex.

    ``-(z_xx q^2 - 2 z_xy p q + z_yy p^2) / (p^2 + q^2)`` from the Zevenbergen &
    Thorne (1987) quadratic.  Their plan curvature has the opposite sign; it is
    flipped here so that all three curvatures read "positive = convex".
    Positive on spurs and noses (contours bulge downhill, flow diverges),
    negative in hollows and channels (flow converges).  0 on flat cells.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``plan_curvature``, float32 in 1/m.

    Example
    -------
    >>> plan_curvature(dem)                                         # doctest: +SKIP
    """
    return _apply(dem, _plan_curvature_numpy, "plan_curvature", "1/m",
                  "plan curvature (positive = convex)")


def flow_accumulation(dem: xr.DataArray) -> xr.DataArray:
    """Upslope contributing area in cells (the cell itself included).

    Depressions and flats are first removed with Priority-Flood+epsilon (Barnes et
    al. 2014): every cell that cannot drain is raised to its spill level plus a
    tiny step per cell (:data:`FILL_EPSILON`) away from the outlet, so that every
    cell has a lower neighbour on a path to the grid edge or to a NaN hole.  Flow
    is then routed with multiple flow directions (Freeman 1991): a cell shares its
    area among all lower neighbours in proportion to ``tan(slope)^1.1``.  Cells
    with no lower neighbour (on the edge, next to NaN) are outlets.  NaN cells get
    NaN.

    Routing is global, so the whole grid is computed in memory at once; a dask
    DEM gives a lazy dask result that loads the full array when computed.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``flow_accumulation``, float32 number of cells.

    Example
    -------
    >>> flow_accumulation(dem).max().item()                         # doctest: +SKIP
    """
    return _apply(dem, _accumulation_numpy, "flow_accumulation", "cells",
                  "upslope contributing area (MFD)", whole=True)


def twi(dem: xr.DataArray) -> xr.DataArray:
    """Topographic wetness index ``ln(a / tan(beta))`` (Beven & Kirkby 1979).

    ``a`` is the specific catchment area in metres: the upslope area of
    :func:`flow_accumulation` (multiple flow directions after Priority-Flood
    depression filling) in m^2, divided by the cell width ``sqrt(|dx dy|)``.
    ``tan(beta)`` is the local Horn gradient of the unfilled DEM, floored at
    :data:`MIN_TAN_SLOPE` (tan 0.1 degree) so that flat cells stay finite.

    Flow accumulation is global: the whole grid is computed in memory at once.
    A dask DEM gives a lazy dask result (one task on the full array, rechunked
    back to the DEM's chunks).

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.

    Returns
    -------
    xarray.DataArray
        ``twi``, float32 (dimensionless); NaN on the border and next to NaN cells.

    Example
    -------
    >>> twi(dem).compute()                                          # doctest: +SKIP
    """
    return _apply(dem, _twi_numpy, "twi", "1", "topographic wetness index", whole=True)


_FUNCTIONS: dict[str, Callable[[xr.DataArray], xr.DataArray]] = {
    "slope": slope,
    "aspect": aspect,
    "curvature": curvature,
    "plan_curvature": plan_curvature,
    "profile_curvature": profile_curvature,
    "twi": twi,
}


def derive_terrain(dem: xr.DataArray, names: Sequence[str]) -> dict[str, xr.DataArray]:
    """Compute the terrain factors ``names`` from ``dem``.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation in metres, dims ``("y", "x")``, georeferenced with rioxarray.
    names : sequence of str
        Any of :data:`FACTORS`: ``slope``, ``aspect``, ``curvature``,
        ``plan_curvature``, ``profile_curvature``, ``twi``.

    Returns
    -------
    dict of str to xarray.DataArray
        One DataArray per name, in the order asked; lazy when ``dem`` is dask.

    Raises
    ------
    SpecError
        If a name is not a derivable terrain factor.

    Example
    -------
    >>> derive_terrain(dem, ["slope", "twi"])                       # doctest: +SKIP
    {'slope': <xarray.DataArray 'slope' ...>, 'twi': <xarray.DataArray 'twi' ...>}
    """
    unknown = [n for n in names if n not in _FUNCTIONS]
    if unknown:
        raise SpecError(f"cannot derive terrain factor(s) {unknown} from a DEM; "
                        f"known: {list(FACTORS)}")
    return {n: _FUNCTIONS[n](dem) for n in dict.fromkeys(names)}


# --------------------------------------------------------------------------- #
# Plumbing: grid geometry, backend choice, output DataArray
# --------------------------------------------------------------------------- #
def _apply(dem: xr.DataArray, kernel: Kernel, name: str, units: str, long_name: str,
           *, whole: bool = False) -> xr.DataArray:
    dem = _as_2d(dem)
    hx, hy = _cell_size(dem)
    func = partial(kernel, hx=hx, hy=hy)
    data = dem.data
    nodata = dem.rio.nodata
    # Whole-grid kernels (flow routing) take float32 DEMs as they are: their
    # compiled loops promote each value to float64, and a float64 copy of a large
    # grid is the biggest array they would otherwise hold.
    work = np.float32 if whole and np.dtype(dem.dtype) == np.float32 else np.float64
    if isinstance(data, dsa.Array):
        data = data.astype(work)
        if nodata is not None and not np.isnan(nodata):
            data = dsa.where(data == nodata, np.nan, data)
        meta = np.array((), dtype=np.float32)
        if whole:
            # Flow routing needs the full grid: one block in, original chunks out.
            out = (data.rechunk(-1).map_blocks(func, dtype=np.float32, meta=meta)
                   .rechunk(data.chunks))
        else:
            out = data.map_overlap(func, depth=1, boundary=np.nan, dtype=np.float32,
                                   meta=meta)
    else:
        z = np.asarray(data, dtype=work)
        if nodata is not None and not np.isnan(nodata):
            z = np.where(z == nodata, np.nan, z)
        out = func(z)

    attrs = {k: v for k, v in dem.attrs.items()
             if k not in ("_FillValue", "missing_value", "scale_factor", "add_offset",
                          "units", "long_name", "standard_name")}
    attrs.update(units=units, long_name=long_name)
    result = xr.DataArray(out, coords=dem.coords, dims=dem.dims, attrs=attrs, name=name)
    result.encoding = {}
    return result


def _as_2d(dem: xr.DataArray) -> xr.DataArray:
    if not isinstance(dem, xr.DataArray):
        raise DataError(f"DEM must be an xarray.DataArray, got {type(dem).__name__}")
    if dem.ndim == 3 and dem.shape[0] == 1:
        dem = dem.squeeze(dem.dims[0], drop=True)
    if dem.ndim != 2:
        raise DataError(f"DEM {dem.name!r} must be 2-D (y, x), got dims {dem.dims}")
    try:
        y_dim, x_dim = dem.rio.y_dim, dem.rio.x_dim
    except Exception as err:  # rioxarray raises its own errors for odd dims
        raise DataError(f"DEM {dem.name!r}: cannot find its x/y dims ({err})") from err
    return dem.transpose(y_dim, x_dim)


def _cell_size(dem: xr.DataArray) -> tuple[float, float]:
    """Signed (x step per column, y step per row) in metres."""
    try:
        hx, hy = (float(v) for v in dem.rio.resolution())
    except Exception as err:
        raise DataError(f"DEM {dem.name!r}: cannot read its resolution ({err})") from err
    if not (np.isfinite(hx) and np.isfinite(hy)) or hx == 0 or hy == 0:
        raise DataError(f"DEM {dem.name!r}: bad resolution {(hx, hy)}")
    crs = dem.rio.crs
    if crs is not None and crs.is_geographic:
        lat = float(dem[dem.rio.y_dim].mean())
        metres_per_degree = math.pi / 180.0 * _EARTH_RADIUS_M
        hx *= metres_per_degree * math.cos(math.radians(lat))
        hy *= metres_per_degree
    return hx, hy


def _interior(z: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Place interior-window ``values`` in a float32 array shaped like ``z``.

    The border and every cell whose 3x3 window holds a NaN become NaN: some
    stencils skip the centre or the corners, and a hole must not go unnoticed.
    """
    out = np.full(z.shape, np.nan, dtype=np.float32)
    if values.size:
        holes = sum(np.isnan(w) for w in _window(z).values()).astype(bool)
        out[1:-1, 1:-1] = np.where(holes, np.nan, values)
    return out


# --------------------------------------------------------------------------- #
# Numpy kernels. Each takes a float64 2-D array and signed cell sizes (m) and
# returns a float32 array of the same shape, NaN where the 3x3 window is
# incomplete.  ``hx`` is the x step per column, ``hy`` the y step per row (negative
# for north-up grids), so derivatives below are d/d(east) and d/d(north).
# --------------------------------------------------------------------------- #
def _window(z: np.ndarray) -> dict[str, np.ndarray]:
    """The nine cells of every interior 3x3 window, keyed by row/column offset."""
    ny, nx = z.shape
    return {f"{di}{dj}": z[1 + di:ny - 1 + di, 1 + dj:nx - 1 + dj]
            for di in (-1, 0, 1) for dj in (-1, 0, 1)}


def _horn_gradient(z: np.ndarray, hx: float, hy: float) -> tuple[np.ndarray, np.ndarray]:
    w = _window(z)
    p = ((w["-11"] + 2 * w["01"] + w["11"]) - (w["-1-1"] + 2 * w["0-1"] + w["1-1"])) / (8 * hx)
    q = ((w["1-1"] + 2 * w["10"] + w["11"]) - (w["-1-1"] + 2 * w["-10"] + w["-11"])) / (8 * hy)
    return p, q


def _zt_derivatives(z: np.ndarray, hx: float, hy: float) -> tuple[np.ndarray, ...]:
    """Zevenbergen & Thorne (1987) p, q, r = z_xx, s = z_xy, t = z_yy."""
    w = _window(z)
    c = w["00"]
    p = (w["01"] - w["0-1"]) / (2 * hx)
    q = (w["10"] - w["-10"]) / (2 * hy)
    r = (w["01"] - 2 * c + w["0-1"]) / hx**2
    t = (w["10"] - 2 * c + w["-10"]) / hy**2
    s = (w["11"] - w["1-1"] - w["-11"] + w["-1-1"]) / (4 * hx * hy)
    return p, q, r, s, t


def _slope_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    p, q = _horn_gradient(z, hx, hy)
    return _interior(z, np.degrees(np.arctan(np.hypot(p, q))))


def _aspect_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    p, q = _horn_gradient(z, hx, hy)
    # Downslope is -grad = (-p east, -q north); azimuth = atan2(east, north).
    azimuth = np.mod(np.degrees(np.arctan2(-p, -q)), 360.0)
    azimuth = np.where(np.hypot(p, q) < FLAT_GRADIENT, np.nan, azimuth)
    # mod can round a tiny negative angle up to exactly 360.
    return _interior(z, np.where(azimuth >= 360.0, 0.0, azimuth))


def _curvature_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    _, _, r, _, t = _zt_derivatives(z, hx, hy)
    return _interior(z, -(r + t))


def _directional_curvature(z: np.ndarray, hx: float, hy: float, *, along: bool) -> np.ndarray:
    p, q, r, s, t = _zt_derivatives(z, hx, hy)
    g2 = p * p + q * q
    if along:  # second derivative in the gradient direction
        num = r * p * p + 2 * s * p * q + t * q * q
    else:  # second derivative in the contour direction
        num = r * q * q - 2 * s * p * q + t * p * p
    flat = np.sqrt(g2) < FLAT_GRADIENT
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(flat, 0.0, -num / np.where(flat, 1.0, g2))
    return _interior(z, value)


def _profile_curvature_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    return _directional_curvature(z, hx, hy, along=True)


def _plan_curvature_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    return _directional_curvature(z, hx, hy, along=False)


def _accumulation_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    acc = _mfd_accumulation(_fill_depressions(z), hx, hy)
    return acc.astype(np.float32)


def _twi_numpy(z: np.ndarray, *, hx: float, hy: float) -> np.ndarray:
    from lsm.stack import _hydrology

    acc = _mfd_accumulation(_fill_depressions(z), hx, hy)
    # one compiled pass: the Horn gradient and the logarithm of the numpy kernels,
    # without their half-dozen grid-sized float64 temporaries
    return _hydrology.wetness(z, acc, hx, hy, MIN_TAN_SLOPE)


# --------------------------------------------------------------------------- #
# Hydrology on the full grid
# --------------------------------------------------------------------------- #
def _fill_depressions(z: np.ndarray, eps: float = FILL_EPSILON) -> np.ndarray:
    """Priority-Flood+epsilon (Barnes, Lehman & Mulla 2014): a filled float64 grid.

    Seeds are the valid cells on the grid edge or next to NaN.  Cells are taken
    lowest first (ties: lowest flat index) from a heap; a neighbour that cannot
    drain below the current cell is raised to ``current + eps`` and flooded
    breadth-first from a plain queue, so every filled cell ends up strictly
    above the cell that reached it.  The loop is compiled
    (:mod:`lsm.stack._hydrology`): one byte of bookkeeping per cell besides the
    result, about a second per ten million cells.
    """
    from lsm.stack import _hydrology

    ny, nx = z.shape
    valid = np.isfinite(z)
    if ny < 1 or nx < 1 or not valid.any():
        return np.array(z, dtype=np.float64)
    seed = np.zeros((ny, nx), dtype=bool)
    seed[0, :] = seed[-1, :] = seed[:, 0] = seed[:, -1] = True
    if not valid.all():
        seed |= ndimage.binary_dilation(~valid, structure=np.ones((3, 3), dtype=bool))
    seed &= valid
    return _hydrology.fill_depressions(z, seed, valid, eps)


def _mfd_accumulation(filled: np.ndarray, hx: float, hy: float,
                      exponent: float = MFD_EXPONENT) -> np.ndarray:
    """Contributing cells by multiple flow directions (Freeman 1991) on a filled grid.

    A cell's area (1 plus what it received) goes to its lower neighbours in
    proportion to ``(drop / distance) ** exponent``.  Cells are passed on in
    topological order (a cell once every higher neighbour draining into it has
    been), in one compiled pass with a byte per cell of bookkeeping: the same
    accumulation as solving ``(I - F) acc = 1``, up to the order of additions.
    NaN cells get NaN.
    """
    from lsm.stack import _hydrology

    if filled.size == 0:
        return np.zeros(filled.shape)
    return _hydrology.mfd_accumulation(filled, hx, hy, exponent)
