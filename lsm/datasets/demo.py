"""Two synthetic raster regions with a known susceptibility, for demos and tests.

``demo-source`` is data-rich (9 x 9 km at 30 m, several hundred landslides);
``demo-target`` is data-scarce (5 x 5 km at 25 m, about a hundred and twenty),
in another UTM zone and stored the awkward way real data often is: other
lithology codes, rainfall in inches on a coarser grid, NDVI as scaled
integers with a sentinel.  Landslides are drawn from a logistic model whose
coefficients are written to ``truth.json`` next to each region's rasters, so
a fitted model can be checked against the truth.

Layout of the generated folder::

    demo-source.yaml   demo-target.yaml
    source/  elevation.tif lithology.tif rainfall.tif ndvi.tif landslides.gpkg truth.json
    target/  elevation.tif lithology.tif rainfall.tif ndvi.tif landslides.gpkg truth.json

Example
-------
>>> from lsm.config.spec import load_region
>>> folder = ensure_demo()                      # doctest: +SKIP
>>> load_region(folder / "demo-target.yaml").factor_names   # doctest: +SKIP
['elevation', 'lithology', 'rainfall', 'ndvi', 'slope', 'aspect', 'curvature']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEMO_VERSION = "demo-v1"
SPEC_NAMES = ("demo-source", "demo-target")
_DEM_NODATA = -9999.0
_NDVI_SENTINEL = -32768
_INCH = 25.4


@dataclass(frozen=True)
class _Plan:
    """Everything that makes one demo region what it is."""

    name: str
    folder: str
    description: str
    crs: str
    origin: tuple[float, float]  # upper-left corner (x, y)
    shape: tuple[int, int]
    res: float
    relief: tuple[float, float]  # elevation min, max (m)
    rain_mm: tuple[float, float]  # rainfall min, max (mm/yr)
    rain_factor: int  # rainfall cell = rain_factor * res
    rain_in_inches: bool
    ndvi_as_int16: bool
    lithology_codes: dict[int, str]  # stored code -> shared legend name
    expected_landslides: float
    min_spacing_px: int
    coefficients: dict[str, float]  # per standard deviation of the factor
    lithology_effect: dict[str, float]  # by legend name, added to the logit
    polygons: bool
    block_size: float
    min_distance: float
    stream: int
    nodata_edge: str


_SOURCE = _Plan(
    name="demo-source",
    folder="source",
    description="Synthetic data-rich region (9 x 9 km, 30 m, UTM 33N) with a known "
    "susceptibility; see source/truth.json.",
    crs="EPSG:32633",
    origin=(620_000.0, 5_160_000.0),
    shape=(300, 300),
    res=30.0,
    relief=(200.0, 1800.0),
    rain_mm=(1100.0, 2200.0),
    rain_factor=1,
    rain_in_inches=False,
    ndvi_as_int16=False,
    lithology_codes={1: "granite", 2: "sandstone", 3: "shale"},
    expected_landslides=850.0,
    min_spacing_px=1,
    coefficients={"slope": 1.3, "curvature": -0.5, "rainfall": 0.4, "ndvi": -0.5},
    lithology_effect={"granite": -0.4, "sandstone": 0.2, "shale": 0.8},
    polygons=True,
    block_size=1500.0,
    min_distance=90.0,
    stream=1,
    nodata_edge="left",
)

_TARGET = _Plan(
    name="demo-target",
    folder="target",
    description="Synthetic data-scarce region (5 x 5 km, 25 m, UTM 17N) with a known "
    "susceptibility; rainfall in inches on a 100 m grid, NDVI as int16 x 10000; "
    "see target/truth.json.",
    crs="EPSG:32617",
    origin=(380_000.0, 3_955_000.0),
    shape=(200, 200),
    res=25.0,
    relief=(50.0, 900.0),
    rain_mm=(1300.0, 2100.0),
    rain_factor=4,
    rain_in_inches=True,
    ndvi_as_int16=True,
    lithology_codes={10: "shale", 20: "granite", 30: "sandstone"},
    expected_landslides=140.0,
    min_spacing_px=1,
    # same signs and similar sizes as the source: transfer helps; rainfall matters
    # more here and sandstone is weaker
    coefficients={"slope": 1.1, "curvature": -0.4, "rainfall": 0.9, "ndvi": -0.4},
    lithology_effect={"granite": -0.2, "sandstone": -0.1, "shale": 1.0},
    polygons=False,
    block_size=1000.0,
    min_distance=75.0,
    stream=2,
    nodata_edge="bottom",
)

_PLANS = (_SOURCE, _TARGET)


# ---------------------------------------------------------------------------
# public


def generate_demo(out_dir: Path, *, seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write the two demo regions and their specs into ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder to write into; created if missing.
    seed
        Same seed, same rasters and landslides.
    overwrite
        Replace an existing demo in ``out_dir``; otherwise an existing one is an error.

    Returns
    -------
    dict
        ``{"demo-source": spec path, "demo-target": spec path}``.

    Example
    -------
    >>> specs = generate_demo(tmp_path)                    # doctest: +SKIP
    >>> load_region(specs["demo-source"]).name             # doctest: +SKIP
    'demo-source'
    """
    out_dir = Path(out_dir)
    owned = [out_dir / f"{n}.yaml" for n in SPEC_NAMES] + [out_dir / p.folder for p in _PLANS]
    present = [p for p in owned if p.exists()]
    if present and not overwrite:
        raise FileExistsError(f"{present[0]}: a demo is already there (pass overwrite=True)")
    _refuse_foreign(present)
    for p in present:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)

    specs: dict[str, Path] = {}
    for plan in _PLANS:
        rng = np.random.default_rng(np.random.SeedSequence([seed, plan.stream]))
        region = _simulate(plan, rng)
        folder = out_dir / plan.folder
        folder.mkdir()
        _write_region(plan, region, folder, seed=seed)
        (folder / DEMO_MARK).write_text("written by lsm's demo generator\n", encoding="utf-8")
        spec_path = out_dir / f"{plan.name}.yaml"
        spec_path.write_text(_spec_text(plan), encoding="utf-8")
        specs[plan.name] = spec_path
    return specs


def default_demo_dir() -> Path:
    """``$LSM_DEMO_DIR`` if set, else ``<user cache>/lsm/demo-v1``."""
    env = os.environ.get("LSM_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lsm")) / DEMO_VERSION


def ensure_demo(out_dir: Path | None = None) -> Path:
    """Return the folder holding ``demo-source.yaml`` and ``demo-target.yaml``.

    The demo is generated on first use, into a temporary folder that is then
    renamed, so the specs exist only once everything they name does.

    Example
    -------
    >>> folder = ensure_demo()                        # doctest: +SKIP
    >>> sorted(p.name for p in folder.glob("*.yaml"))  # doctest: +SKIP
    ['demo-source.yaml', 'demo-target.yaml']
    """
    out_dir = Path(out_dir) if out_dir is not None else default_demo_dir()
    if _complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        generate_demo(tmp, overwrite=True)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if not out_dir.exists():
            try:
                os.replace(tmp, out_dir)
                return out_dir
            except OSError:
                # another process got there first
                if _complete(out_dir):
                    return out_dir
                raise
        # a folder the user chose that holds other files: move ours in, specs last; a
        # same-named folder or spec of the user's is never replaced
        names = [p.folder for p in _PLANS] + [f"{n}.yaml" for n in SPEC_NAMES]
        _refuse_foreign([out_dir / n for n in names if (out_dir / n).exists()])
        for name in names:
            dest = out_dir / name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Marker file in every folder the demo generator writes: only those are ever replaced.
DEMO_MARK = ".lsm-demo"


def _refuse_foreign(paths: list[Path]) -> None:
    """Refuse (one line) to replace a folder or spec the demo generator did not write."""
    from lsm.errors import ArtifactError

    for p in paths:
        ours = (p / DEMO_MARK).is_file() if p.is_dir() else \
            p.is_file() and p.suffix == ".yaml" and "written by lsm.datasets.demo" in _head(p)
        if not ours:
            raise ArtifactError(f"{p}: exists and was not written by lsm's demo; refusing to "
                                "replace it (choose another folder)")


def _head(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8", errors="replace")[:400]
    except OSError:
        return ""


def _complete(folder: Path) -> bool:
    return all((folder / f"{n}.yaml").is_file() for n in SPEC_NAMES)


# ---------------------------------------------------------------------------
# simulation


@dataclass
class _Region:
    elevation: np.ndarray  # float32, stored (with nodata)
    lithology: np.ndarray  # uint8 codes
    rainfall: np.ndarray  # float32, stored unit and grid
    ndvi: np.ndarray  # stored dtype
    rows: np.ndarray
    cols: np.ndarray
    xy: np.ndarray  # (n, 2) landslide points in map units
    radii: np.ndarray  # (n, 3) semi-axes a, b and angle (polygons only)
    intercept: float
    stats: dict[str, dict[str, float]]
    mean_probability: float


def _fractal(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Standardised noise with power spectrum ~ 1/f**beta (spectral synthesis).

    The field is drawn on a larger grid and cropped so that the FFT's
    wrap-around does not make opposite edges match.
    """
    ny, nx = shape
    py, px = ny + ny // 2, nx + nx // 2
    noise = rng.standard_normal((py, px))
    fy = np.fft.fftfreq(py)[:, None]
    fx = np.fft.rfftfreq(px)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf
    field = np.fft.irfft2(np.fft.rfft2(noise) * f ** (-beta / 2.0), s=(py, px))[:ny, :nx]
    return (field - field.mean()) / field.std()


def _rescale(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * (a - a.min()) / (a.max() - a.min())


def _terrain(dem: np.ndarray, res: float) -> tuple[np.ndarray, np.ndarray]:
    """Slope (deg, Horn 1981) and general curvature (1/m, positive = convex).

    The same 3x3 formulas as ``lsm.stack.terrain``, so the truth is stated in
    the factors the stack derives.  Edge cells reuse their neighbour (edge
    padding); they are never sampled.
    """
    z = np.pad(dem, 1, mode="edge")

    def w(di: int, dj: int) -> np.ndarray:
        return z[1 + di : z.shape[0] - 1 + di, 1 + dj : z.shape[1] - 1 + dj]

    dzdx = (w(-1, 1) + 2 * w(0, 1) + w(1, 1) - w(-1, -1) - 2 * w(0, -1) - w(1, -1)) / (8 * res)
    dzdy = (w(1, -1) + 2 * w(1, 0) + w(1, 1) - w(-1, -1) - 2 * w(-1, 0) - w(-1, 1)) / (8 * res)
    slope = np.degrees(np.arctan(np.hypot(dzdx, dzdy)))
    curvature = -(w(0, 1) + w(0, -1) + w(1, 0) + w(-1, 0) - 4 * w(0, 0)) / res**2
    return slope, curvature


def _z(a: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float, float]:
    m, s = float(a[valid].mean()), float(a[valid].std())
    return (a - m) / s, m, s


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _calibrate(eta: np.ndarray, expected: float) -> float:
    """Intercept b0 with sum(sigmoid(b0 + eta)) == expected (bisection)."""
    lo, hi = -30.0, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + eta).sum() > expected:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def _simulate(plan: _Plan, rng: np.random.Generator) -> _Region:
    ny, nx = plan.shape
    r_dem, r_lith, r_rain, r_ndvi, r_draw = rng.spawn(5)

    dem = _rescale(_fractal(r_dem, plan.shape, beta=4.0), *plan.relief)
    slope, curvature = _terrain(dem, plan.res)

    # lithology: smooth blobs cut at thirds, in the order of the stored codes
    blobs = _fractal(r_lith, plan.shape, beta=4.5)
    cuts = np.quantile(blobs, [1 / 3, 2 / 3])
    codes = np.array(list(plan.lithology_codes), dtype=np.uint8)
    lithology = codes[np.digitize(blobs, cuts)]

    # rainfall on its own (maybe coarser) grid, wetter uphill
    k = plan.rain_factor
    cy, cx = ny // k, nx // k
    dem_coarse = dem[: cy * k, : cx * k].reshape(cy, k, cx, k).mean(axis=(1, 3))
    dem_z = (dem_coarse - dem_coarse.mean()) / dem_coarse.std()
    rain_mm = _rescale(_fractal(r_rain, (cy, cx), beta=4.0) + 0.6 * dem_z, *plan.rain_mm)
    rain_fine = np.repeat(np.repeat(rain_mm, k, axis=0), k, axis=1)

    # vegetation thins on steep ground
    slope_z = (slope - slope.mean()) / slope.std()
    ndvi = np.clip(
        0.55 + 0.15 * _fractal(r_ndvi, plan.shape, beta=2.5) - 0.06 * slope_z, -0.2, 0.95
    )

    # missing cells: a strip on one edge of the DEM, a small "cloud" in int16 NDVI
    dem_missing = np.zeros(plan.shape, dtype=bool)
    strip = slice(ny // 5, ny // 5 + 12)
    if plan.nodata_edge == "left":
        dem_missing[strip, 0] = True
    else:
        dem_missing[-1, strip] = True
    ndvi_missing = np.zeros(plan.shape, dtype=bool)
    if plan.ndvi_as_int16:
        ndvi_missing[ny // 2 : ny // 2 + 4, nx // 3 : nx // 3 + 5] = True

    # landslides may fall where every factor (derived ones included) is defined
    valid = np.zeros(plan.shape, dtype=bool)
    valid[1:-1, 1:-1] = True
    grown = dem_missing.copy()
    grown[1:, :] |= dem_missing[:-1, :]
    grown[:-1, :] |= dem_missing[1:, :]
    grown[:, 1:] |= dem_missing[:, :-1]
    grown[:, :-1] |= dem_missing[:, 1:]
    valid &= ~grown & ~ndvi_missing

    factors = {"slope": slope, "curvature": curvature, "rainfall": rain_fine, "ndvi": ndvi}
    eta = np.zeros(plan.shape)
    stats: dict[str, dict[str, float]] = {}
    for name, b in plan.coefficients.items():
        z, m, s = _z(factors[name], valid)
        eta += b * z
        stats[name] = {"mean": m, "std": s}
    names = np.array([plan.lithology_effect[plan.lithology_codes[int(c)]] for c in codes])
    eta += names[np.digitize(blobs, cuts)]
    b0 = _calibrate(eta[valid], plan.expected_landslides)
    prob = np.where(valid, _sigmoid(b0 + eta), 0.0)

    hits = np.flatnonzero(r_draw.random(prob.size) < prob.ravel())
    rows, cols = _thin(hits, plan.shape, plan.min_spacing_px, r_draw)
    jitter = r_draw.uniform(-0.4, 0.4, size=(len(rows), 2))
    x = plan.origin[0] + (cols + 0.5 + jitter[:, 0]) * plan.res
    y = plan.origin[1] - (rows + 0.5 + jitter[:, 1]) * plan.res
    a = r_draw.uniform(20.0, 40.0, size=len(rows))
    radii = np.column_stack(
        [a, a * r_draw.uniform(0.5, 0.9, size=len(rows)), r_draw.uniform(0, np.pi, len(rows))]
    )

    elevation = dem.astype(np.float32)
    elevation[dem_missing] = _DEM_NODATA
    rainfall = (rain_mm / _INCH if plan.rain_in_inches else rain_mm).astype(np.float32)
    if plan.ndvi_as_int16:
        ndvi_stored = np.round(ndvi * 10000).astype(np.int16)
        ndvi_stored[ndvi_missing] = _NDVI_SENTINEL
    else:
        ndvi_stored = ndvi.astype(np.float32)
    return _Region(
        elevation=elevation,
        lithology=lithology,
        rainfall=rainfall,
        ndvi=ndvi_stored,
        rows=rows,
        cols=cols,
        xy=np.column_stack([x, y]),
        radii=radii,
        intercept=b0,
        stats=stats,
        mean_probability=float(prob[valid].mean()),
    )


def _thin(
    hits: np.ndarray, shape: tuple[int, int], spacing: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep hits, in random order, that have no kept hit within ``spacing`` pixels."""
    taken = np.zeros(shape, dtype=bool)
    keep: list[int] = []
    for i in rng.permutation(hits):
        r, c = divmod(int(i), shape[1])
        r0, c0 = max(r - spacing, 0), max(c - spacing, 0)
        if not taken[r0 : r + spacing + 1, c0 : c + spacing + 1].any():
            taken[r, c] = True
            keep.append(int(i))
    idx = np.sort(np.asarray(keep, dtype=np.int64))
    return idx // shape[1], idx % shape[1]


# ---------------------------------------------------------------------------
# writing


def _write_tif(
    path: Path,
    data: np.ndarray,
    plan: _Plan,
    *,
    res: float,
    nodata: float | None,
    description: str,
    units: str,
) -> None:
    import rasterio
    from affine import Affine

    profile = {
        "driver": "GTiff",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": plan.crs,
        "transform": Affine(res, 0.0, plan.origin[0], 0.0, -res, plan.origin[1]),
        "nodata": nodata,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, description)
        dst.update_tags(1, units=units)


def _write_region(plan: _Plan, region: _Region, folder: Path, *, seed: int) -> None:
    import geopandas as gpd
    import shapely

    res = plan.res
    _write_tif(folder / "elevation.tif", region.elevation, plan, res=res, nodata=_DEM_NODATA,
               description="elevation", units="m")
    _write_tif(folder / "lithology.tif", region.lithology, plan, res=res, nodata=0,
               description="lithology", units="code")
    _write_tif(folder / "rainfall.tif", region.rainfall, plan, res=res * plan.rain_factor,
               nodata=None, description="rainfall",
               units="in/yr" if plan.rain_in_inches else "mm/yr")
    # int16 NDVI carries its sentinel only in the spec, as such files often do
    _write_tif(folder / "ndvi.tif", region.ndvi, plan, res=res, nodata=None, description="ndvi",
               units="ndvi * 10000" if plan.ndvi_as_int16 else "ndvi")

    n = len(region.xy)
    if plan.polygons:
        t = np.linspace(0.0, 2.0 * np.pi, 33)[None, :]
        a, b, theta = (region.radii[:, i : i + 1] for i in range(3))
        u, v = a * np.cos(t), b * np.sin(t)
        ring = np.stack(
            [
                region.xy[:, :1] + u * np.cos(theta) - v * np.sin(theta),
                region.xy[:, 1:] + u * np.sin(theta) + v * np.cos(theta),
            ],
            axis=-1,
        )
        ring[:, -1] = ring[:, 0]
        geoms = shapely.polygons(ring)
        table = {"id": np.arange(1, n + 1), "area_m2": np.round(shapely.area(geoms), 1)}
    else:
        geoms = shapely.points(region.xy)
        table = {"id": np.arange(1, n + 1)}
    gdf = gpd.GeoDataFrame(table, geometry=geoms, crs=plan.crs)
    gdf.to_file(folder / "landslides.gpkg", layer="landslides", driver="GPKG")

    truth = {
        "region": plan.name,
        "seed": seed,
        "model": "logit p = intercept + sum_f coefficients[f] * (x_f - mean_f) / std_f "
        "+ lithology_effect[lithology]",
        "intercept": round(region.intercept, 6),
        "coefficients": plan.coefficients,
        "lithology_effect": plan.lithology_effect,
        "standardisation": {
            k: {s: round(v, 9) for s, v in d.items()} for k, d in region.stats.items()
        },
        "units": {"slope": "deg", "curvature": "1/m", "rainfall": "mm/yr", "ndvi": "-"},
        "definitions": {
            "slope": "arctan(|grad z|), Horn (1981) 3x3 gradient",
            "curvature": "-(d2z/dx2 + d2z/dy2), Zevenbergen & Thorne 3x3; positive = convex, "
            "so landslides favour negative values (hollows)",
            "rainfall": "on the rainfall grid, repeated onto the DEM grid",
        },
        "expected_landslides_before_spacing": plan.expected_landslides,
        "mean_probability": round(region.mean_probability, 9),
        "min_spacing_m": plan.min_spacing_px * plan.res,
        "n_landslides": n,
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")


def _spec_text(plan: _Plan) -> str:
    f = plan.folder
    rainfall: dict[str, Any] = {"path": f"{f}/rainfall.tif"}
    if plan.rain_in_inches:
        rainfall["scale"] = _INCH
    ndvi: dict[str, Any] = {"path": f"{f}/ndvi.tif"}
    if plan.ndvi_as_int16:
        ndvi.update(scale=0.0001, nodata=[_NDVI_SENTINEL], valid_range=[-1.0, 1.0])
    inventory: dict[str, Any] = {"path": f"{f}/landslides.gpkg", "layer": "landslides"}
    if plan.polygons:
        inventory["polygons"] = "centroid"
    data = {
        "name": plan.name,
        "description": plan.description,
        "crs": plan.crs,
        "resolution": plan.res,
        "factors": {
            "elevation": {"path": f"{f}/elevation.tif"},
            "lithology": {
                "path": f"{f}/lithology.tif",
                "categories": dict(plan.lithology_codes),
            },
            "rainfall": rainfall,
            "ndvi": ndvi,
        },
        "derive": {"dem": "elevation", "factors": ["slope", "aspect", "curvature"]},
        "inventory": inventory,
        "absences": {"ratio": 1.0, "min_distance": plan.min_distance, "seed": 0},
        "folds": {"n_folds": 5, "block_size": plan.block_size, "seed": 0},
    }
    header = (
        f"# {plan.name}: synthetic demo region written by lsm.datasets.demo ({DEMO_VERSION}).\n"
        f"# The true susceptibility model is in {f}/truth.json.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)
