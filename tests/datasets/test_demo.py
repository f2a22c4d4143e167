"""The synthetic demo regions: files, grids, counts, determinism, specs, caching."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from lsm.config.spec import load_region
from lsm.datasets import ensure_demo, generate_demo
from lsm.datasets.demo import SPEC_NAMES

RASTERS = ("elevation", "lithology", "rainfall", "ndvi")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_demo(tmp_path_factory.mktemp("demo"))


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _raster_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for region in ("source", "target"):
        for name in RASTERS:
            a = _read(folder / region / f"{name}.tif")
            h.update(f"{name}{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("region", "crs", "shape", "res"),
    [("source", 32633, (300, 300), 30.0), ("target", 32617, (200, 200), 25.0)],
)
def test_raster_grids(demo: dict[str, Path], region: str, crs: int, shape, res: float) -> None:
    folder = demo["demo-source"].parent / region
    for name in ("elevation", "lithology", "ndvi"):
        with rasterio.open(folder / f"{name}.tif") as src:
            assert src.crs.to_epsg() == crs
            assert src.shape == shape
            assert src.res == (res, res)
    with rasterio.open(folder / "rainfall.tif") as src:
        assert src.crs.to_epsg() == crs
        factor = 1 if region == "source" else 4  # target rainfall is on a coarser grid
        assert src.res == (res * factor, res * factor)
        assert src.shape == (shape[0] // factor, shape[1] // factor)


def test_source_values(demo: dict[str, Path]) -> None:
    folder = demo["demo-source"].parent / "source"
    with rasterio.open(folder / "elevation.tif") as src:
        assert src.dtypes[0] == "float32" and src.nodata == -9999
        dem = src.read(1)
    missing = dem == -9999
    assert 0 < missing.sum() < 50
    assert missing[:, 1:].sum() == 0  # only on the left edge
    valid = dem[~missing]
    assert 150 < valid.min() < 300 and 1700 < valid.max() < 1900
    lith = _read(folder / "lithology.tif")
    assert lith.dtype == np.uint8 and set(np.unique(lith)) == {1, 2, 3}
    rain = _read(folder / "rainfall.tif")
    assert 1000 < rain.min() and rain.max() < 2300  # mm/yr
    ndvi = _read(folder / "ndvi.tif")
    assert ndvi.dtype == np.float32 and -1 <= ndvi.min() and ndvi.max() <= 1


def test_target_values(demo: dict[str, Path]) -> None:
    folder = demo["demo-target"].parent / "target"
    dem = _read(folder / "elevation.tif")
    missing = dem == -9999
    assert 0 < missing.sum() < 50 and missing[:-1].sum() == 0  # only on the bottom edge
    assert 0 < dem[~missing].min() < 100 and 850 < dem[~missing].max() < 1000
    lith = _read(folder / "lithology.tif")
    assert set(np.unique(lith)) == {10, 20, 30}
    rain = _read(folder / "rainfall.tif")
    assert 40 < rain.min() and rain.max() < 90  # inches/yr
    with rasterio.open(folder / "ndvi.tif") as src:
        assert src.dtypes[0] == "int16" and src.nodata is None  # the sentinel is in the spec
        ndvi = src.read(1)
    sentinel = ndvi == -32768
    assert 0 < sentinel.sum() < 50
    assert -10000 <= ndvi[~sentinel].min() and ndvi[~sentinel].max() <= 10000


def test_inventories(demo: dict[str, Path]) -> None:
    root = demo["demo-source"].parent
    src = gpd.read_file(root / "source" / "landslides.gpkg", layer="landslides")
    tgt = gpd.read_file(root / "target" / "landslides.gpkg", layer="landslides")
    assert set(src.geom_type) == {"Polygon"} and set(tgt.geom_type) == {"Point"}
    assert 600 <= len(src) <= 900 and 100 <= len(tgt) <= 150
    assert src.crs.to_epsg() == 32633 and tgt.crs.to_epsg() == 32617
    assert src.area.between(300, 5100).all()  # ellipses with 10-40 m semi-axes
    for gdf, region in ((src, "source"), (tgt, "target")):
        with rasterio.open(root / region / "elevation.tif") as r:
            x0, y0, x1, y1 = r.bounds
        c = gdf.geometry.centroid
        assert c.x.between(x0, x1).all() and c.y.between(y0, y1).all()
        truth = json.loads((root / region / "truth.json").read_text())
        assert truth["n_landslides"] == len(gdf)
        assert set(truth["coefficients"]) == {"slope", "curvature", "rainfall", "ndvi"}


def test_landslides_prefer_steep_ground(demo: dict[str, Path]) -> None:
    folder = demo["demo-source"].parent / "source"
    with rasterio.open(folder / "elevation.tif") as r:
        dem = r.read(1, masked=True).astype(float).filled(np.nan)
        gdf = gpd.read_file(folder / "landslides.gpkg")
        rows, cols = rasterio.transform.rowcol(r.transform, gdf.centroid.x, gdf.centroid.y)
    gy, gx = np.gradient(dem, 30.0)
    slope = np.degrees(np.arctan(np.hypot(gx, gy)))
    at = slope[np.asarray(rows), np.asarray(cols)]
    assert np.nanmean(at) > np.nanmean(slope) + 5


def test_specs_load(demo: dict[str, Path]) -> None:
    assert set(demo) == set(SPEC_NAMES)
    src, tgt = (load_region(demo[n]) for n in SPEC_NAMES)
    assert src.name == "demo-source" and tgt.name == "demo-target"
    for spec in (src, tgt):
        assert spec.factor_names == [
            "elevation", "lithology", "rainfall", "ndvi", "slope", "aspect", "curvature",
        ]
        for key, ref in spec.file_refs().items():
            assert (spec.base_dir / ref.path).is_file(), key
        assert spec.inventory is not None and spec.inventory.layer == "landslides"
    assert src.factors["lithology"].categories == {"1": "granite", "2": "sandstone", "3": "shale"}
    assert tgt.factors["lithology"].categories == {
        "10": "shale", "20": "granite", "30": "sandstone",
    }
    assert tgt.factors["rainfall"].scale == 25.4
    assert tgt.factors["ndvi"].scale == 0.0001 and tgt.factors["ndvi"].nodata == [-32768]
    assert src.crs != tgt.crs


def test_deterministic(tmp_path: Path, demo: dict[str, Path]) -> None:
    again = generate_demo(tmp_path / "again")
    first = demo["demo-source"].parent
    assert _raster_digest(first) == _raster_digest(again["demo-source"].parent)
    for region in ("source", "target"):
        a = gpd.read_file(first / region / "landslides.gpkg")
        b = gpd.read_file(tmp_path / "again" / region / "landslides.gpkg")
        assert a.geometry.to_wkb().tolist() == b.geometry.to_wkb().tolist()
        assert json.loads((first / region / "truth.json").read_text()) == json.loads(
            (tmp_path / "again" / region / "truth.json").read_text()
        )
    for name in SPEC_NAMES:
        assert demo[name].read_text() == again[name].read_text()
    other = generate_demo(tmp_path / "other", seed=1)
    assert _raster_digest(other["demo-source"].parent) != _raster_digest(first)


def test_no_silent_overwrite(tmp_path: Path) -> None:
    generate_demo(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_demo(tmp_path)
    specs = generate_demo(tmp_path, overwrite=True)
    assert all(p.is_file() for p in specs.values())


def test_ensure_demo_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSM_DEMO_DIR", str(tmp_path / "cache"))
    folder = ensure_demo()
    assert folder == tmp_path / "cache"
    spec = folder / "demo-source.yaml"
    stamp = spec.stat().st_mtime_ns
    dem_stamp = (folder / "source" / "elevation.tif").stat().st_mtime_ns
    assert ensure_demo() == folder
    assert spec.stat().st_mtime_ns == stamp
    assert (folder / "source" / "elevation.tif").stat().st_mtime_ns == dem_stamp
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temp folder left behind
    assert load_region("demo-target").base_dir == folder.resolve()


def test_ensure_demo_into_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    assert ensure_demo(tmp_path) == tmp_path
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert all((tmp_path / f"{n}.yaml").is_file() for n in SPEC_NAMES)
    assert not [p for p in tmp_path.parent.iterdir() if ".tmp-" in p.name]
