"""Terrain factors against hand-computed values, and numpy/dask agreement."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from lsm.errors import SpecError
from lsm.stack.terrain import (
    FACTORS,
    FILL_EPSILON,
    MFD_EXPONENT,
    MIN_TAN_SLOPE,
    _fill_depressions,
    _mfd_accumulation,
    aspect,
    curvature,
    derive_terrain,
    flow_accumulation,
    plan_curvature,
    profile_curvature,
    slope,
    twi,
)

RES = 10.0
X0, Y0 = 500_000.0, 5_000_000.0


def make_dem(func, ny: int = 8, nx: int = 6, *, res: float = RES, north_up: bool = True,
             crs: str = "EPSG:32633", x0: float = X0, y0: float = Y0) -> xr.DataArray:
    """DEM with cell centres at ``x0 + res*(j - nx//2)``, ``y0 -/+ res*(i - ny//2)``.

    ``func(X, Y)`` gets offsets from the centre cell in map units, so the centre
    cell sits at X = Y = 0.
    """
    cols = res * (np.arange(nx) - nx // 2)
    rows = res * (np.arange(ny) - ny // 2)
    dy = -rows if north_up else rows
    X, Y = np.meshgrid(cols, dy)
    z = np.asarray(func(X, Y), dtype=np.float64) * np.ones_like(X)
    dem = xr.DataArray(z, dims=("y", "x"), coords={"y": y0 + dy, "x": x0 + cols}, name="dem")
    return dem.rio.write_crs(crs)


def interior(da: xr.DataArray, margin: int = 1) -> np.ndarray:
    return np.asarray(da.values)[margin:-margin, margin:-margin]


def circular_diff(a, b):
    return np.abs((np.asarray(a) - b + 180.0) % 360.0 - 180.0)


# --------------------------------------------------------------------------- #
# slope and aspect
# --------------------------------------------------------------------------- #
def test_slope_of_plane_and_nan_border():
    dem = make_dem(lambda X, Y: 0.1 * X - 0.05 * Y)
    out = slope(dem)
    # atan(hypot(0.1, 0.05)) = atan(0.1118034) = 6.3794 degrees
    np.testing.assert_allclose(interior(out), 6.37937, atol=1e-4)
    assert np.isnan(out.values[0]).all() and np.isnan(out.values[:, -1]).all()
    assert out.name == "slope" and out.dtype == np.float32
    assert out.dims == dem.dims and out.rio.crs == dem.rio.crs
    np.testing.assert_array_equal(out.x, dem.x)


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (lambda X, Y: -0.1 * X, 90.0),  # lower to the east
        (lambda X, Y: -0.1 * Y, 0.0),  # lower to the north
        (lambda X, Y: 0.1 * Y, 180.0),  # lower to the south
        (lambda X, Y: 0.1 * X, 270.0),  # lower to the west
        (lambda X, Y: 0.1 * X + 0.1 * Y, 225.0),  # rises NE, dips SW
        (lambda X, Y: 0.1 * X - 0.05 * Y, 296.5651),  # downslope (-0.1 E, +0.05 N)
    ],
)
@pytest.mark.parametrize("north_up", [True, False])
def test_aspect_of_planes(func, expected, north_up):
    out = aspect(make_dem(func, north_up=north_up))
    vals = interior(out)
    assert np.all((vals >= 0) & (vals < 360))
    assert circular_diff(vals, expected).max() < 1e-3


def test_flat_dem_has_no_aspect_and_zero_slope_and_curvature():
    dem = make_dem(lambda X, Y: 250.0)
    assert np.isnan(aspect(dem).values).all()
    for func in (slope, curvature, plan_curvature, profile_curvature):
        np.testing.assert_array_equal(interior(func(dem)), 0.0)


def test_geographic_crs_uses_metres():
    # 0.001 deg cells at 45 N; z rises 0.1 m per metre eastwards.
    lat0, lon0, deg = 45.0, 10.0, 0.001
    m_per_deg = np.pi / 180 * 6_371_008.8
    dem = make_dem(lambda X, Y: 0.1 * X * m_per_deg * np.cos(np.radians(lat0)), res=deg,
                   crs="EPSG:4326", x0=lon0, y0=lat0)
    np.testing.assert_allclose(interior(slope(dem)), np.degrees(np.arctan(0.1)), rtol=1e-3)
    np.testing.assert_allclose(interior(aspect(dem)), 270.0, atol=1e-3)


# --------------------------------------------------------------------------- #
# curvatures (Zevenbergen & Thorne; positive = convex, 1/m)
# --------------------------------------------------------------------------- #
def test_curvature_of_cylinder_along_x():
    # z = 0.01 X^2: a U-shaped trough, z_xx = 0.02; flow runs along x.
    dem = make_dem(lambda X, Y: 0.01 * X**2, ny=7, nx=9)
    prof = interior(profile_curvature(dem))
    np.testing.assert_allclose(interior(curvature(dem)), -0.02, atol=1e-9)
    # centre column (X = 0) is flat -> 0 by convention; elsewhere flow is along x
    off_axis = np.ones(prof.shape, bool)
    off_axis[:, 9 // 2 - 1] = False
    np.testing.assert_allclose(prof[off_axis], -0.02, atol=1e-9)
    np.testing.assert_allclose(prof[~off_axis], 0.0, atol=1e-12)
    np.testing.assert_allclose(interior(plan_curvature(dem)), 0.0, atol=1e-9)


def test_curvature_of_dome_is_positive():
    # z = -0.01 (X^2 + Y^2): a dome, convex in every direction.
    dem = make_dem(lambda X, Y: -0.01 * (X**2 + Y**2), ny=9, nx=9)
    np.testing.assert_allclose(interior(curvature(dem)), 0.04, atol=1e-9)
    centre = (3, 3)  # interior index of X = Y = 0 (flat -> 0)
    prof, plan = interior(profile_curvature(dem)), interior(plan_curvature(dem))
    mask = np.ones(prof.shape, bool)
    mask[centre] = False
    np.testing.assert_allclose(prof[mask], 0.02, atol=1e-9)
    np.testing.assert_allclose(plan[mask], 0.02, atol=1e-9)
    assert prof[centre] == 0 and plan[centre] == 0


def test_curvature_of_inclined_valley():
    # z = 0.01 X^2 + 0.1 Y: a channel along x = 0 dropping to the south.
    dem = make_dem(lambda X, Y: 0.01 * X**2 + 0.1 * Y, ny=7, nx=9)
    prof, plan = profile_curvature(dem), plan_curvature(dem)
    at = {"y": Y0}  # any row works: the surface does not change along y
    # channel (X = 0): p = 0, q = 0.1 -> profile 0, plan = -z_xx = -0.02 (converging)
    assert prof.sel(x=X0, **at).item() == pytest.approx(0.0, abs=1e-9)
    assert plan.sel(x=X0, **at).item() == pytest.approx(-0.02, rel=1e-5)
    # X = 20 m: p = 0.4, q = 0.1, z_xx = 0.02
    # profile = -0.02 * 0.16 / 0.17 = -0.0188235; plan = -0.02 * 0.01 / 0.17 = -0.0011765
    assert prof.sel(x=X0 + 20, **at).item() == pytest.approx(-0.0188235, rel=1e-5)
    assert plan.sel(x=X0 + 20, **at).item() == pytest.approx(-0.0011765, rel=1e-4)
    np.testing.assert_allclose(interior(prof) + interior(plan), interior(curvature(dem)),
                               atol=1e-8)


# --------------------------------------------------------------------------- #
# flow accumulation and TWI
# --------------------------------------------------------------------------- #
def test_accumulation_on_plane_counts_upslope_columns():
    # z = -0.1 X dips east: in rows far from the top/bottom edges, MFD flow
    # spreads sideways evenly, so a cell gathers its whole row upslope.
    nx, ny = 25, 41
    dem = make_dem(lambda X, Y: -0.1 * X, ny=ny, nx=nx)
    acc = flow_accumulation(dem).values
    mid = ny // 2
    np.testing.assert_allclose(acc[mid], np.arange(1, nx + 1), rtol=1e-3)
    # everything leaves by the east edge
    assert acc[:, -1].sum() == pytest.approx(nx * ny, rel=1e-6)
    # twi = ln(a / tan b) with a = (j + 1) * 10 m and tan b = 0.1
    t = twi(dem).values[mid, 1:-1]
    np.testing.assert_allclose(t, np.log(100.0 * np.arange(2, nx)), rtol=1e-3)


def test_accumulation_drains_through_a_pit():
    dem = make_dem(lambda X, Y: -0.1 * X, ny=15, nx=15)
    dem[7, 7] = dem[7, 7] - 5.0  # a 5 m deep pit
    dem[7, 8] = dem[7, 8] + 3.0  # and a dam below it
    acc = flow_accumulation(dem).values
    assert acc[:, -1].sum() == pytest.approx(15 * 15, rel=1e-6)
    assert np.isfinite(twi(dem).values[1:-1, 1:-1]).all()


def test_twi_on_v_valley():
    # V valley along x = 0 dropping to the south.
    dem = make_dem(lambda X, Y: 0.2 * np.abs(X) + 0.05 * Y, ny=31, nx=21)
    acc = flow_accumulation(dem).values
    channel = acc[1:-1, 21 // 2]
    assert np.all(np.diff(channel) > 0)  # grows downslope (southwards)
    assert channel[-1] > 10 * acc[-2, 2]  # much more than a hillslope cell
    t = twi(dem).values
    assert np.isfinite(t[1:-1, 1:-1]).all()
    assert np.all(t[5:-1, 21 // 2] > t[5:-1, 2])


# --------------------------------------------------------------------------- #
# NaN handling, dask, derive_terrain
# --------------------------------------------------------------------------- #
ALL = (slope, aspect, curvature, plan_curvature, profile_curvature, twi, flow_accumulation)


@pytest.mark.parametrize("func", ALL, ids=lambda f: f.__name__)
def test_nan_reaches_neighbours_only(func):
    dem = make_dem(lambda X, Y: 0.05 * X + 0.02 * Y + 0.001 * X * Y, ny=12, nx=12)
    dem[5, 6] = np.nan
    out = func(dem).values
    near = np.zeros(out.shape, bool)
    if func is flow_accumulation:
        near[5, 6] = True  # accumulation needs no window
        inner = out
    else:
        near[4:7, 5:8] = True
        inner = out[1:-1, 1:-1]
        near = near[1:-1, 1:-1]
    assert np.isnan(inner[near]).all()
    assert np.isfinite(inner[~near]).all()


@pytest.fixture(scope="module")
def rough_dem() -> xr.DataArray:
    rng = np.random.default_rng(42)
    z = rng.normal(size=(40, 40)).cumsum(0).cumsum(1) * 0.5
    dem = make_dem(lambda X, Y: z, ny=40, nx=40)
    dem[17, 20] = np.nan  # on a chunk corner's halo
    dem[0, 5] = np.nan
    return dem


@pytest.mark.parametrize("func", ALL, ids=lambda f: f.__name__)
def test_numpy_and_dask_agree(func, rough_dem):
    lazy = func(rough_dem.chunk({"y": 16, "x": 16}))
    assert isinstance(lazy.data, dsa.Array)
    assert lazy.chunks == ((16, 16, 8), (16, 16, 8))
    eager = func(rough_dem)
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_allclose(lazy.compute().values, eager.values, rtol=1e-6, atol=1e-6,
                               equal_nan=True)
    assert np.isfinite(eager.values).sum() > 0.8 * eager.size


def test_derive_terrain_returns_requested_factors(rough_dem):
    out = derive_terrain(rough_dem.chunk(16), ["twi", "slope"])
    assert list(out) == ["twi", "slope"]
    assert all(isinstance(v.data, dsa.Array) and v.name == k for k, v in out.items())
    assert set(derive_terrain(rough_dem, list(FACTORS))) == set(FACTORS)
    with pytest.raises(SpecError, match="elevation"):
        derive_terrain(rough_dem, ["slope", "elevation"])


def test_nodata_value_is_masked():
    dem = make_dem(lambda X, Y: 0.1 * X, ny=8, nx=8)
    dem[3, 3] = -9999.0
    dem = dem.rio.write_nodata(-9999.0)
    out = slope(dem).values
    assert np.isnan(out[2:5, 2:5]).all()
    assert np.isfinite(out[6, 1:-1]).all()


# --------------------------------------------------------------------------- #
# compiled hydrology against a plain reference
# --------------------------------------------------------------------------- #
def _reference_fill(z: np.ndarray, eps: float) -> np.ndarray:
    """Priority-Flood+epsilon in plain Python (heapq + deque), seeds on the edge and
    next to NaN, ties broken by flat index: the order the compiled loop follows."""
    import heapq
    from collections import deque

    from scipy import ndimage

    ny, nx = z.shape
    valid = np.isfinite(z)
    seed = np.zeros((ny, nx), bool)
    seed[0, :] = seed[-1, :] = seed[:, 0] = seed[:, -1] = True
    seed |= ndimage.binary_dilation(~valid, structure=np.ones((3, 3), bool))
    seed &= valid
    filled = np.where(valid, z, np.inf).astype(np.float64).ravel().tolist()
    closed = (~valid).ravel().tolist()
    heap = [(filled[i], i) for i in np.flatnonzero(seed).tolist()]
    heapq.heapify(heap)
    for _, i in heap:
        closed[i] = True
    pit: deque[int] = deque()
    while heap or pit:
        if pit:
            cell = pit.popleft()
            level = filled[cell]
        else:
            level, cell = heapq.heappop(heap)
        r, c = divmod(cell, nx)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                rr, cc = r + di, c + dj
                if (di, dj) == (0, 0) or not (0 <= rr < ny and 0 <= cc < nx):
                    continue
                nb = rr * nx + cc
                if closed[nb]:
                    continue
                closed[nb] = True
                if filled[nb] <= level + eps:
                    filled[nb] = level + eps
                    pit.append(nb)
                else:
                    heapq.heappush(heap, (filled[nb], nb))
    out = np.asarray(filled).reshape(ny, nx)
    out[~valid] = np.nan
    return out


def _reference_accumulation(filled: np.ndarray, hx: float, hy: float,
                            exponent: float) -> np.ndarray:
    """MFD as a linear system (I - F) acc = 1, solved densely."""
    ny, nx = filled.shape
    n = ny * nx
    F = np.zeros((n, n))
    for r in range(ny):
        for c in range(nx):
            w = {}
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    rr, cc = r + di, c + dj
                    if (di, dj) != (0, 0) and 0 <= rr < ny and 0 <= cc < nx:
                        drop = filled[r, c] - filled[rr, cc]
                        if drop > 0:
                            w[rr * nx + cc] = (drop / np.hypot(di * hy, dj * hx)) ** exponent
            total = sum(w.values())
            for to, v in w.items():
                F[to, r * nx + c] = v / total
    acc = np.linalg.solve(np.eye(n) - F, np.ones(n)).reshape(ny, nx)
    acc[np.isnan(filled)] = np.nan
    return acc


def _reference_twi(z: np.ndarray, acc: np.ndarray, hx: float, hy: float) -> np.ndarray:
    sca = acc * abs(hx * hy) / np.sqrt(abs(hx * hy))
    out = np.full(z.shape, np.nan)
    for r in range(1, z.shape[0] - 1):
        for c in range(1, z.shape[1] - 1):
            w = z[r - 1:r + 2, c - 1:c + 2].astype(np.float64)
            if np.isnan(w).any():
                continue
            p = ((w[0, 2] + 2 * w[1, 2] + w[2, 2]) - (w[0, 0] + 2 * w[1, 0] + w[2, 0])) / (8 * hx)
            q = ((w[2, 0] + 2 * w[2, 1] + w[2, 2]) - (w[0, 0] + 2 * w[0, 1] + w[0, 2])) / (8 * hy)
            out[r, c] = np.log(sca[r, c] / max(np.hypot(p, q), MIN_TAN_SLOPE))
    return out


def _rough(n: int, seed: int, *, terraces: float = 0.0, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n)).cumsum(0).cumsum(1) * 0.3 + rng.normal(size=(n, n))
    if terraces:
        z = np.round(z / terraces) * terraces  # wide flats
    z[n // 3:n // 3 + 3, n // 2:n // 2 + 4] = np.nan  # a hole, seeding its rim
    z[0, 2] = np.nan
    return z.astype(dtype)


@pytest.mark.parametrize(("seed", "terraces", "dtype"),
                         [(1, 0.0, np.float64), (2, 2.0, np.float64), (3, 0.0, np.float32)])
def test_compiled_hydrology_matches_reference(seed, terraces, dtype):
    z = _rough(30, seed, terraces=terraces, dtype=dtype)
    filled = _fill_depressions(z)
    ref_filled = _reference_fill(z, FILL_EPSILON)
    np.testing.assert_array_equal(filled, ref_filled)  # same surface, bit for bit
    assert filled.dtype == np.float64
    acc = _mfd_accumulation(filled, RES, -RES)
    np.testing.assert_allclose(acc, _reference_accumulation(ref_filled, RES, -RES,
                                                            MFD_EXPONENT),
                               rtol=1e-10, equal_nan=True)
    dem = make_dem(lambda X, Y: z.astype(np.float64), ny=30, nx=30).astype(dtype)
    t = twi(dem).values
    np.testing.assert_allclose(t, _reference_twi(z, acc, RES, -RES).astype(np.float32),
                               rtol=1e-6, equal_nan=True)
    assert np.isfinite(t).sum() > 0.8 * t.size


def test_filling_leaves_no_pit():
    z = _rough(40, 4, terraces=1.0)
    filled = _fill_depressions(z)
    ok = np.isfinite(filled)
    assert (filled[ok] >= z[ok]).all() and (filled > z).any()
    # every valid interior cell not next to a NaN has a strictly lower neighbour
    pad = np.pad(filled, 1, constant_values=np.nan)
    lower = np.zeros(z.shape, bool)
    edge = np.zeros(z.shape, bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            nb = pad[1 + di:41 + di, 1 + dj:41 + dj]
            lower |= nb < filled
            edge |= np.isnan(nb)
    assert lower[ok & ~edge].all()
