"""Shared fixtures: tiny seeded GeoTIFFs, vector inventories and region specs in ``tmp_path``.

Every raster here is small (8x6 up to 64x64), seeded, and has a nodata edge, so
tests exercise the masking paths and still run in milliseconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

#: Upper-left corner and cell size of the reference grid of the tiny region.
X0, Y0 = 500_000.0, 5_000_000.0
RES = 10.0
CRS = "EPSG:32633"
#: Tiny region shape (rows, cols).
SHAPE = (40, 48)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                  ) -> None:
    """No test reads a developer's data dir or writes into their download cache.

    ``LSM_DATA_DIR`` is set then removed through monkeypatch so that a value the CLI
    writes into ``os.environ`` (``--data-dir``) is undone after the test too.
    """
    monkeypatch.setenv("LSM_DATA_DIR", "")
    monkeypatch.delenv("LSM_DATA_DIR")
    monkeypatch.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("lsm-cache")))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two generated demo regions (``demo-source.yaml``, ``demo-target.yaml``), once."""
    from lsm.datasets.demo import generate_demo

    d = tmp_path_factory.mktemp("demo")
    generate_demo(d)
    return d


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder (``../shared/data`` beside the repo), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} does not exist")
    return SHARED_DATA


def _write_tif(path: Path, data: np.ndarray, *, crs: str = CRS,
               origin: tuple[float, float] = (X0, Y0), res: float | tuple[float, float] = RES,
               nodata: float | None = None, descriptions: list[str] | None = None,
               dtype: str | None = None) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    arr = np.asarray(data)
    if arr.ndim == 2:
        arr = arr[None]
    rx, ry = (res, res) if np.isscalar(res) else res
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = dict(
        driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
        dtype=dtype or arr.dtype.name, crs=crs,
        transform=from_origin(origin[0], origin[1], rx, ry), nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr.astype(profile["dtype"]))
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


@pytest.fixture
def write_tif() -> Callable[..., Path]:
    """``write_tif(path, array, crs=, origin=(x0, y0), res=, nodata=, descriptions=)``.

    ``array`` is (rows, cols) or (bands, rows, cols); ``origin`` is the upper-left corner.
    """
    return _write_tif


def _write_spec(path: Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def write_spec() -> Callable[[Path, dict[str, Any]], Path]:
    """``write_spec(path, mapping)`` writes a YAML region spec and returns its path."""
    return _write_spec


def pixel_centres(shape: tuple[int, int] = SHAPE, *, origin: tuple[float, float] = (X0, Y0),
                  res: float = RES) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates (X, Y) of every pixel centre of a north-up grid."""
    rows, cols = np.indices(shape)
    return origin[0] + res * (cols + 0.5), origin[1] - res * (rows + 0.5)


@pytest.fixture
def tiny_region(tmp_path: Path) -> dict[str, Any]:
    """A raster region of 40 x 48 px at 10 m (EPSG:32633) with a nodata left edge.

    Files: ``elevation.tif`` (a tilted plane, -9999 on column 0), ``lithology.tif``
    (codes 1/2/3 in vertical bands), ``ndvi.tif`` (int16 x 10000, sentinel -32768 in
    the top-right corner), ``points.gpkg`` (12 landslide points), ``polygons.gpkg``
    (5 square landslide polygons) and ``region.yaml`` (points inventory).
    Returns a dict with the paths, the true arrays and the spec mapping.
    """
    import geopandas as gpd
    from shapely.geometry import Point, box

    rng = np.random.default_rng(42)
    ny, nx = SHAPE
    X, Y = pixel_centres()
    elev = (100.0 + 0.2 * (X - X0) + 0.1 * (Y0 - Y)).astype("float32")
    elev[:, 0] = -9999.0
    litho = np.select([np.arange(nx) < 16, np.arange(nx) < 32], [1, 2], 3)
    litho = np.broadcast_to(litho, SHAPE).astype("uint8")
    ndvi_true = rng.uniform(-0.2, 0.9, SHAPE).round(4)
    ndvi_int = np.round(ndvi_true * 10000).astype("int16")
    ndvi_int[:3, -3:] = -32768

    _write_tif(tmp_path / "elevation.tif", elev, nodata=-9999.0)
    _write_tif(tmp_path / "lithology.tif", litho, nodata=0)
    _write_tif(tmp_path / "ndvi.tif", ndvi_int)

    # landslides on valid pixels well inside the grid
    pr = rng.integers(5, ny - 5, 12)
    pc = rng.integers(5, nx - 5, 12)
    pts = [Point(X0 + RES * (c + 0.5), Y0 - RES * (r + 0.5)) for r, c in zip(pr, pc)]
    gpd.GeoDataFrame({"id": range(12)}, geometry=pts, crs=CRS).to_file(
        tmp_path / "points.gpkg", engine="pyogrio")
    polys = []
    for k in range(5):
        cx, cy = X0 + 60.0 + 80.0 * k, Y0 - 80.0 - 50.0 * (k % 3)
        polys.append(box(cx, cy - 30.0, cx + 30.0, cy))  # 3 x 3 pixels each
    gpd.GeoDataFrame({"id": range(5)}, geometry=polys, crs=CRS).to_file(
        tmp_path / "polygons.gpkg", engine="pyogrio")

    spec = {
        "name": "tiny",
        "factors": {
            "elevation": {"path": "elevation.tif"},
            "lithology": {"path": "lithology.tif",
                          "categories": {1: "granite", 2: "sandstone", 3: "shale"}},
            "ndvi": {"path": "ndvi.tif", "nodata": [-32768], "scale": 0.0001},
        },
        "inventory": {"path": "points.gpkg"},
        "absences": {"ratio": 2.0, "min_distance": 25.0, "seed": 1},
        "folds": {"n_folds": 3, "block_size": 100.0},
        "chunks": 16,
    }
    spec_path = _write_spec(tmp_path / "region.yaml", spec)
    return {"dir": tmp_path, "spec_path": spec_path, "spec": spec, "elevation": elev,
            "lithology": litho, "ndvi": ndvi_true, "ndvi_int": ndvi_int,
            "points": pts, "polygons": polys}


# -- the battery's runs (tests/battery), built once per session -----------------------


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A fit run (all four families) and a fine-tune run (lr + delivered), no maps."""
    from lsm.cli import main

    root = tmp_path_factory.mktemp("tamper-base")
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("tamper-cache")))
    try:
        assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model",
                     "rf,lr,xgb,mlp", "--out", str(root / "src"), "--no-cv", "--no-explain",
                     "--no-predict", "-q"]) == 0
        assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                     str(root / "src"), "--model", "lr", "--shots", "15", "--repeats", "2",
                     "--out", str(root / "ft"), "--no-explain", "--no-predict", "-q"]) == 0
    finally:
        mp.undo()
    return root


@pytest.fixture
def world(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the requesting module's ``base`` as the working folder."""
    w = tmp_path / "world"
    shutil.copytree(base, w)
    monkeypatch.chdir(w)
    monkeypatch.setenv("LSM_CACHE", str(tmp_path / "cache"))
    return w
