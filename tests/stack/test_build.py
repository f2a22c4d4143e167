"""Stack building: alignment to the reference grid, resampling, cleaning, laziness, stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as dka
import numpy as np
import pytest

from lsm.config.spec import load_region, parse_region
from lsm.errors import GridMismatchError
from lsm.stack.build import build_stack, stack_grid, valid_mask
from lsm.stack.stats import QUANTILES, stack_statistics, table_statistics

X0, Y0, RES, CRS = 500_000.0, 5_000_000.0, 10.0, "EPSG:32633"
NY, NX = 36, 48  # reference grid: 480 m x 360 m


def ref_centres() -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.indices((NY, NX))
    return X0 + RES * (cols + 0.5), Y0 - RES * (rows + 0.5)


def field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A known linear field in reference (UTM) coordinates."""
    return 2.0 * (x - X0) - 0.5 * (y - Y0) + 10.0


def spec_for(tmp_path: Path, factors: dict[str, Any], **extra: Any):
    data = {"name": "t", "factors": factors, "inventory": {"path": "none.gpkg"}, "chunks": 16}
    data.update(extra)
    return parse_region(data, source=str(tmp_path / "t.yaml"), base_dir=tmp_path)


@pytest.fixture
def reference(tmp_path: Path, write_tif: Any) -> Path:
    """Reference DEM on the UTM 10 m grid, nodata (-9999) in column 0."""
    x, y = ref_centres()
    z = field(x, y).astype("float32")
    z[:, 0] = -9999.0
    return write_tif(tmp_path / "ref.tif", z, nodata=-9999.0)


@pytest.fixture
def coarse_linear(tmp_path: Path, write_tif: Any) -> Path:
    """The same linear field on a 30 m grid, one coarse cell larger on each side."""
    ny, nx = NY // 3 + 2, NX // 3 + 2
    rows, cols = np.indices((ny, nx))
    ox, oy = X0 - 30.0, Y0 + 30.0
    x, y = ox + 30.0 * (cols + 0.5), oy - 30.0 * (rows + 0.5)
    return write_tif(tmp_path / "coarse.tif", field(x, y).astype("float32"), origin=(ox, oy),
                     res=30.0)


@pytest.fixture
def mercator_linear(tmp_path: Path, write_tif: Any) -> Path:
    """The linear field (computed in UTM) stored on a Web-Mercator grid around the area."""
    from pyproj import Transformer

    to_merc = Transformer.from_crs(CRS, "EPSG:3857", always_xy=True)
    to_utm = Transformer.from_crs("EPSG:3857", CRS, always_xy=True)
    mx, my = to_merc.transform([X0 - 60, X0 + NX * RES + 60, X0 - 60, X0 + NX * RES + 60],
                               [Y0 + 60, Y0 + 60, Y0 - NY * RES - 60, Y0 - NY * RES - 60])
    res = 8.0
    left, top = min(mx), max(my)
    nx = int(np.ceil((max(mx) - left) / res))
    ny = int(np.ceil((top - min(my)) / res))
    rows, cols = np.indices((ny, nx))
    ux, uy = to_utm.transform(left + res * (cols + 0.5), top - res * (rows + 0.5))
    return write_tif(tmp_path / "merc.tif", field(np.asarray(ux), np.asarray(uy)).astype(
        "float32"), crs="EPSG:3857", origin=(left, top), res=res)


@pytest.fixture
def coarse_classes(tmp_path: Path, write_tif: Any) -> tuple[Path, np.ndarray]:
    """Categorical codes 10/20/30 on a 30 m grid exactly covering the reference grid."""
    rng = np.random.default_rng(3)
    codes = rng.choice(np.array([10, 20, 30], dtype="uint8"), size=(NY // 3, NX // 3))
    return write_tif(tmp_path / "classes.tif", codes, res=30.0, nodata=0), codes


INTERIOR = (slice(4, -4), slice(4, -4))


def test_reference_grid_and_coords(tmp_path: Path, reference: Path) -> None:
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"}}), progress=False)
    x, y = ref_centres()
    assert ds.sizes == {"y": NY, "x": NX}
    np.testing.assert_allclose(ds.x.values, x[0])
    np.testing.assert_allclose(ds.y.values, y[:, 0])
    g = stack_grid(ds)
    assert g.crs.to_epsg() == 32633
    assert (g.width, g.height, g.res) == (NX, NY, RES)
    assert g.bounds == pytest.approx((X0, Y0 - NY * RES, X0 + NX * RES, Y0))
    assert "48 x 36 px at 10" in g.describe()


def test_stack_is_lazy_until_computed(tmp_path: Path, reference: Path,
                                      coarse_linear: Path) -> None:
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                                         "rainfall": {"path": "coarse.tif"}}), progress=False)
    for name in ("elevation", "rainfall"):
        assert isinstance(ds[name].data, dka.Array), name
        assert ds[name].data.chunksize == (16, 16)
        assert ds[name].dtype == np.float32
    mask = valid_mask(ds)
    assert isinstance(mask.data, dka.Array)


def test_nodata_edge_is_nan_and_values_exact(tmp_path: Path, reference: Path) -> None:
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"}}), progress=False)
    z = ds.elevation.values
    assert np.isnan(z[:, 0]).all()
    x, y = ref_centres()
    np.testing.assert_allclose(z[:, 1:], field(x, y)[:, 1:], rtol=0, atol=1e-3)
    assert not valid_mask(ds).values[:, 0].any()
    assert valid_mask(ds).values[:, 1:].all()


def test_coarser_raster_is_bilinear_on_reference_grid(tmp_path: Path, reference: Path,
                                                      coarse_linear: Path) -> None:
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                                         "rainfall": {"path": "coarse.tif"}}), progress=False)
    x, y = ref_centres()
    got = ds.rainfall.values
    want = field(x, y)
    np.testing.assert_allclose(got[INTERIOR], want[INTERIOR], rtol=0, atol=0.05)
    # bilinear, not nearest: the fine pixels in one coarse cell (columns 3-5) all differ
    assert got[10, 3] < got[10, 4] < got[10, 5]


def test_other_crs_is_warped_bilinear(tmp_path: Path, reference: Path,
                                      mercator_linear: Path) -> None:
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                                         "dist_road": {"path": "merc.tif"}}), progress=False)
    assert ds.sizes == {"y": NY, "x": NX}
    x, y = ref_centres()
    got = ds.dist_road.values
    assert np.isfinite(got).all()
    err = np.abs(got - field(x, y))[INTERIOR]
    # GDAL's approximate transformer (0.125 px) allows ~1 m of shift, ~2 units of this field;
    # nearest resampling would be off by up to ~9 units (half an 8 m Mercator cell)
    assert err.max() < 2.5, err.max()
    assert err.mean() < 0.5, err.mean()


def test_categorical_is_nearest(tmp_path: Path, reference: Path,
                                coarse_classes: tuple[Path, np.ndarray]) -> None:
    _, codes = coarse_classes
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                                         "lithology": {"path": "classes.tif"}}), progress=False)
    got = ds.lithology.values
    assert ds.lithology.attrs["kind"] == "categorical"
    assert set(np.unique(got[np.isfinite(got)])) <= {10.0, 20.0, 30.0}
    want = np.repeat(np.repeat(codes, 3, axis=0), 3, axis=1).astype("float32")
    np.testing.assert_array_equal(got, want)


def test_continuous_factor_on_class_raster_would_blend(tmp_path: Path, reference: Path,
                                                       coarse_classes: Any) -> None:
    """Control for the test above: declared continuous, the same file is interpolated."""
    ds = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                                         "codes": {"path": "classes.tif",
                                                   "kind": "continuous"}}), progress=False)
    v = ds.codes.values
    assert not set(np.unique(v[np.isfinite(v)])) <= {10.0, 20.0, 30.0}


def test_spec_crs_and_resolution_define_grid(tmp_path: Path, reference: Path) -> None:
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"}}, resolution=20.0)
    ds = build_stack(spec, progress=False)
    assert ds.sizes == {"y": NY // 2, "x": NX // 2}
    assert stack_grid(ds).res == 20.0
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"}}, crs="EPSG:3857")
    ds = build_stack(spec, progress=False)
    assert ds.rio.crs.to_epsg() == 3857
    assert np.isfinite(ds.elevation.values).mean() > 0.8


def test_sentinels_scale_replace_range(tmp_path: Path, write_tif: Any, reference: Path) -> None:
    rng = np.random.default_rng(0)
    ndvi = np.round(rng.uniform(-0.5, 0.95, (NY, NX)), 4)
    stored = np.round(ndvi * 10000).astype("int16")
    stored[0, :5] = -32768  # sentinel not declared in the file
    stored[1, :5] = 12000  # out of the valid range once scaled
    write_tif(tmp_path / "ndvi.tif", stored)
    slope = rng.uniform(1, 40, (NY, NX)).astype("float32")
    slope[2, :7] = 0.000001  # placeholder meaning flat
    slope[3, :2] = -1.0  # a second sentinel
    write_tif(tmp_path / "slope.tif", slope)
    spec = spec_for(tmp_path, {
        "elevation": {"path": "ref.tif"},
        "ndvi": {"path": "ndvi.tif", "nodata": [-32768], "scale": 0.0001,
                 "valid_range": [-1, 1]},
        "slope": {"path": "slope.tif", "replace": {0.000001: 0}, "nodata": [-1]},
        "rainfall": {"path": "slope.tif", "scale": 2.0, "offset": 5.0},
    })
    ds = build_stack(spec, progress=False).compute()
    got = ds.ndvi.values
    assert np.isnan(got[0, :5]).all() and np.isnan(got[1, :5]).all()
    ok = np.ones_like(got, dtype=bool)
    ok[:2, :5] = False
    np.testing.assert_allclose(got[ok], ndvi[ok], atol=1e-6)
    assert np.nanmax(got) <= 1.0
    s = ds.slope.values
    assert (s[2, :7] == 0).all()
    assert np.isnan(s[3, :2]).all()
    np.testing.assert_allclose(s[4:], slope[4:], rtol=1e-6)
    np.testing.assert_allclose(ds.rainfall.values[4:], slope[4:] * 2 + 5, rtol=1e-5)


def test_non_overlapping_factor_is_named(tmp_path: Path, write_tif: Any,
                                         reference: Path) -> None:
    write_tif(tmp_path / "far.tif", np.ones((6, 8), "float32"), origin=(X0 + 50_000, Y0))
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"}, "rainfall": {"path": "far.tif"}})
    with pytest.raises(GridMismatchError) as exc:
        build_stack(spec, progress=False)
    msg = str(exc.value)
    assert "factors.rainfall" in msg and "far.tif" in msg and "does not overlap" in msg
    assert "\n" not in msg


def test_aoi_outside_raster_is_an_error(tmp_path: Path, reference: Path) -> None:
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"}},
                    aoi={"bounds": [0, 0, 10, 10]})
    with pytest.raises(GridMismatchError, match=r"aoi.bounds.*does not overlap.*ref.tif"):
        build_stack(spec, progress=False)


def test_aoi_bounds_crop_the_grid(tmp_path: Path, reference: Path,
                                  coarse_classes: Any) -> None:
    b = (X0 + 100.0, Y0 - 250.0, X0 + 300.0, Y0 - 50.0)
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                               "lithology": {"path": "classes.tif"}}, aoi={"bounds": list(b)})
    ds = build_stack(spec, progress=False)
    assert ds.sizes == {"y": 20, "x": 20}
    assert stack_grid(ds).bounds == pytest.approx(b)
    assert ds.x.values.min() > b[0] and ds.x.values.max() < b[2]
    full = build_stack(spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                                           "lithology": {"path": "classes.tif"}}),
                       progress=False)
    np.testing.assert_allclose(ds.elevation.values, full.elevation.values[5:25, 10:30],
                               atol=1e-3)
    np.testing.assert_array_equal(ds.lithology.values, full.lithology.values[5:25, 10:30])


def test_aoi_polygon_masks_outside(tmp_path: Path, reference: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    poly = box(X0 + 100, Y0 - 200, X0 + 200, Y0 - 100)
    gpd.GeoDataFrame(geometry=[poly], crs=CRS).to_file(tmp_path / "aoi.gpkg", engine="pyogrio")
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"}}, aoi={"path": "aoi.gpkg"})
    ds = build_stack(spec, progress=False)
    assert isinstance(ds.elevation.data, dka.Array)
    valid = np.isfinite(ds.elevation.values)
    assert valid.sum() == 100  # 10 x 10 pixel centres inside
    assert valid[10:20, 10:20].all()


def test_derived_slope_is_lazy_and_right(tmp_path: Path, write_tif: Any) -> None:
    x, y = ref_centres()
    dem = (0.1 * (x - X0)).astype("float32")  # rises 0.1 m per m eastwards
    dem[:, 0] = np.nan
    write_tif(tmp_path / "dem.tif", dem, nodata=np.nan)
    spec = spec_for(tmp_path, {"elevation": {"path": "dem.tif"}},
                    derive={"dem": "elevation", "factors": ["slope", "aspect"]})
    ds = build_stack(spec, progress=False)
    assert list(ds.data_vars) == ["elevation", "slope", "aspect"]
    assert isinstance(ds.slope.data, dka.Array)
    assert ds.slope.attrs["kind"] == "continuous"
    assert ds.aspect.attrs["kind"] == "circular"
    s = ds.slope.values[2:-2, 3:-2]
    np.testing.assert_allclose(s, np.degrees(np.arctan(0.1)), atol=1e-3)
    a = ds.aspect.values[2:-2, 3:-2]
    np.testing.assert_allclose(a, 270.0, atol=1e-3)  # downslope faces west


# ---------------------------------------------------------------------------
# statistics


def test_stack_statistics_match_numpy(tmp_path: Path, reference: Path,
                                      coarse_classes: Any, write_tif: Any) -> None:
    rng = np.random.default_rng(5)
    write_tif(tmp_path / "rain.tif", rng.gamma(2.0, 300.0, (NY, NX)).astype("float32"))
    asp = rng.uniform(0, 360, (NY, NX)).astype("float32")
    asp[:4] = np.nan
    write_tif(tmp_path / "aspect.tif", asp, nodata=np.nan)
    spec = spec_for(tmp_path, {"elevation": {"path": "ref.tif"},
                               "rainfall": {"path": "rain.tif"},
                               "lithology": {"path": "classes.tif",
                                             "categories": {10: "granite", 20: "shale"}},
                               "aspect": {"path": "aspect.tif"}})
    ds = build_stack(spec, progress=False)
    kinds = {f: spec.kind_of(f) for f in spec.factor_names}
    names = {"10": "granite", "20": "shale"}
    stats = stack_statistics(ds, kinds, category_names=lambda f, codes: [
        names.get(str(int(c)), str(int(c))) for c in codes])
    assert stats["source"] == "stack" and stats["n"] == NY * NX
    for f in ("elevation", "rainfall"):
        v = ds[f].values.astype("float64")
        v = v[np.isfinite(v)]
        s = stats["factors"][f]
        assert s["count"] == v.size
        assert s["mean"] == pytest.approx(v.mean(), rel=1e-6)
        assert s["std"] == pytest.approx(v.std(), rel=1e-5)
        assert (s["min"], s["max"]) == pytest.approx((v.min(), v.max()))
        # a histogram quantile q is a true p-quantile of the values up to one bin width:
        # at least p of them are <= q + bin and at most p are < q - bin (with ties and
        # gaps between samples, no single interpolation rule is "the" quantile)
        tol = 1.01 * (v.max() - v.min()) / 4096
        for p in QUANTILES:
            q = s["quantiles"][f"q{int(p * 100):02d}"]
            assert (v <= q + tol).mean() >= p, (f, p)
            assert (v < q - tol).mean() <= p, (f, p)
        assert s["quantiles"]["q50"] == pytest.approx(np.median(v), abs=(v.max() - v.min()) / 100)
    assert stats["factors"]["elevation"]["count"] == NY * (NX - 1)
    lith = ds.lithology.values
    freq = stats["factors"]["lithology"]["frequencies"]
    assert freq == pytest.approx({"granite": (lith == 10).mean(), "shale": (lith == 20).mean(),
                                  "30": (lith == 30).mean()})
    assert sum(freq.values()) == pytest.approx(1.0)
    a = stats["factors"]["aspect"]
    fin = asp[np.isfinite(asp)].astype("float64")
    assert a["kind"] == "circular"
    assert a["flat_share"] == pytest.approx(4 / NY)
    assert a["mean_sin"] == pytest.approx(np.sin(np.deg2rad(fin)).mean(), abs=1e-6)
    assert a["mean_cos"] == pytest.approx(np.cos(np.deg2rad(fin)).mean(), abs=1e-6)


def test_table_statistics_match_numpy() -> None:
    import pandas as pd

    rng = np.random.default_rng(1)
    t = pd.DataFrame({"slope": rng.uniform(0, 45, 200), "lithology": rng.choice(["a", "b"], 200),
                      "aspect": rng.uniform(0, 360, 200)})
    t.loc[:9, "slope"] = np.nan
    t.loc[:19, "aspect"] = np.nan
    s = table_statistics(t, {"slope": "continuous", "lithology": "categorical",
                             "aspect": "circular", "absent": "continuous"})
    assert s["n"] == 200 and "absent" not in s["factors"]
    v = t["slope"].dropna().to_numpy()
    assert s["factors"]["slope"]["count"] == 190
    assert s["factors"]["slope"]["mean"] == pytest.approx(v.mean())
    assert s["factors"]["slope"]["quantiles"]["q25"] == pytest.approx(np.quantile(v, 0.25))
    assert s["factors"]["lithology"]["frequencies"]["a"] == pytest.approx(
        (t.lithology == "a").mean())
    assert s["factors"]["aspect"]["flat_share"] == pytest.approx(0.1)


def test_tiny_region_fixture_stack(tiny_region: dict[str, Any]) -> None:
    """The shared fixture region builds; its NDVI and nodata edge are cleaned."""
    spec = load_region(tiny_region["spec_path"])
    ds = build_stack(spec, progress=False).compute()
    assert np.isnan(ds.elevation.values[:, 0]).all()
    nd = ds.ndvi.values
    assert np.isnan(nd[:3, -3:]).all()
    ok = np.isfinite(nd)
    np.testing.assert_allclose(nd[ok], tiny_region["ndvi"][ok], atol=1e-6)
    assert ok.sum() == nd.size - 9
    assert set(np.unique(ds.lithology.values)) == {1.0, 2.0, 3.0}


def test_global_factor_is_computed_once_and_cached(tmp_path: Path, write_tif: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import lsm.stack.terrain as terrain

    x, y = ref_centres()
    dem = (0.05 * (x - X0) + 0.002 * (y - Y0) ** 1.0 + np.sin(x / 37.0)).astype("float32")
    dem[:3, :3] = np.nan
    write_tif(tmp_path / "dem.tif", dem, nodata=np.nan)
    spec = spec_for(tmp_path, {"elevation": {"path": "dem.tif"}},
                    derive={"dem": "elevation", "factors": ["slope", "twi"]})
    calls = []
    real = terrain._twi_numpy

    def counting(z, **kw):
        calls.append(z.shape)
        return real(z, **kw)

    monkeypatch.setattr(terrain, "_twi_numpy", counting)
    ds = build_stack(spec, progress=False)
    assert isinstance(ds.twi.data, dka.Array) and calls == []  # still lazy
    first = ds.twi.values
    assert valid_mask(ds).values.any()  # another pass over every block
    assert ds.twi[5:20, 7:30].values.shape == (15, 23)
    assert calls == [(NY, NX)]  # once, on the whole grid
    again = build_stack(spec, progress=False).twi.values  # a new stack: the cached file
    assert calls == [(NY, NX)]
    ds_dem = build_stack(spec_for(tmp_path, {"elevation": {"path": "dem.tif"}}),
                         progress=False).elevation
    expected = terrain.twi(ds_dem.rio.write_crs(CRS)).values
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    assert ds.twi.attrs["kind"] == "continuous" and ds.twi.dtype == np.float32
