"""Block-wise prediction, zones, map writers and quick looks on tiny seeded rasters."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from rasterio.transform import from_origin

from lsm.errors import FactorMismatchError
from lsm.io.raster_write import write_probability_cog, write_value_cog, write_zones_geotiff
from lsm.mapping.predict import predict_raster
from lsm.mapping.quicklook import hillshade, quicklook_png
from lsm.mapping.zones import (
    ZONE_COLORS,
    ZONE_NAMES,
    classify_zones,
    validate_thresholds,
    zone_statistics,
)

FACTORS = ["slope", "elevation", "lithology"]
CRS = "EPSG:32633"


def make_stack(ny: int = 30, nx: int = 40, *, res: float = 25.0, seed: int = 0,
               chunks: int | None = 16) -> xr.Dataset:
    """Seeded factor stack with a NaN edge and scattered holes in single factors."""
    rng = np.random.default_rng(seed)
    x0, y0 = 500_000.0, 4_100_000.0
    x = x0 + res / 2 + res * np.arange(nx)
    y = y0 - res / 2 - res * np.arange(ny)
    slope = rng.uniform(0, 45, (ny, nx))
    elevation = rng.uniform(200, 1500, (ny, nx))
    lithology = rng.integers(1, 5, (ny, nx)).astype(np.float64)
    slope[:, -2:] = np.nan  # NaN edge
    elevation[0, :] = np.nan  # another edge, in another factor
    holes = rng.random((ny, nx)) < 0.05
    lithology[holes] = np.nan
    ds = xr.Dataset(
        {"slope": (("y", "x"), slope), "elevation": (("y", "x"), elevation),
         "lithology": (("y", "x"), lithology)},
        coords={"y": y, "x": x},
    )
    ds = ds.rio.write_crs(CRS).rio.write_transform(from_origin(x0, y0, res, res))
    return ds.chunk({"y": chunks, "x": chunks}) if chunks else ds


def logistic(table: pd.DataFrame) -> np.ndarray:
    z = 0.12 * (table["slope"].to_numpy() - 20) + 0.001 * (table["elevation"].to_numpy() - 800)
    z = z + 0.3 * table["lithology"].to_numpy()
    return 1.0 / (1.0 + np.exp(-z))


class Counting:
    """predict_fn that counts calls, refuses NaN and can fail on call ``fail_at``."""

    def __init__(self, fail_at: int | None = None, exc: type[BaseException] = RuntimeError):
        self.calls = 0
        self.rows = 0
        self.fail_at = fail_at
        self.exc = exc
        self._lock = threading.Lock()

    def __call__(self, table: pd.DataFrame) -> np.ndarray:
        with self._lock:
            self.calls += 1
            self.rows += len(table)
            n = self.calls
        assert list(table.columns) == FACTORS
        assert len(table) > 0, "empty blocks must not reach the model"
        assert np.isfinite(table.to_numpy()).all(), "a missing factor reached the model"
        if self.fail_at is not None and n >= self.fail_at:
            raise self.exc("model failed mid-way")
        return logistic(table)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- predict


def test_predict_dask_equals_numpy_and_stays_lazy():
    fn = Counting()
    lazy = predict_raster(make_stack(), fn, factors=FACTORS)
    assert fn.calls == 0
    assert lazy.chunks is not None
    assert lazy.name == "susceptibility"
    assert lazy.dtype == np.float32
    eager = predict_raster(make_stack(chunks=None), logistic, factors=FACTORS)
    assert eager.chunks is None
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert fn.calls > 1  # one call per non-empty block


def test_predict_missing_factors_stay_nan_and_never_reach_model():
    stack = make_stack()
    fn = Counting()
    prob = predict_raster(stack, fn, factors=FACTORS).values
    valid = np.logical_and.reduce([np.isfinite(stack[f].values) for f in FACTORS])
    assert np.isnan(prob[~valid]).all()
    assert np.isfinite(prob[valid]).all()
    assert ((prob[valid] >= 0) & (prob[valid] <= 1)).all()
    assert fn.rows == valid.sum()


def test_predict_skips_empty_blocks():
    stack = make_stack()
    stack["slope"][:, :16] = np.nan  # the whole first chunk column
    fn = Counting()
    predict_raster(stack, fn, factors=FACTORS).compute()
    # 2 chunk rows x 3 chunk columns, first column empty
    assert fn.calls == 4


def test_predict_georeference():
    stack = make_stack()
    prob = predict_raster(stack, logistic, factors=FACTORS)
    assert prob.rio.crs == stack.rio.crs
    assert prob.rio.transform() == stack.rio.transform()
    assert np.isnan(prob.rio.nodata)
    assert np.isnan(prob.attrs["_FillValue"])
    np.testing.assert_array_equal(prob.x, stack.x)


def test_predict_missing_factor_is_named():
    with pytest.raises(FactorMismatchError, match="'curvature'"):
        predict_raster(make_stack(), logistic, factors=["slope", "curvature"])


def test_predict_rejects_bad_model_output():
    prob = predict_raster(make_stack(), lambda t: np.full(len(t), 1.5), factors=FACTORS)
    with pytest.raises(ValueError, match="outside"):
        prob.compute()


# --------------------------------------------------------------------------- zones


def test_zones_cover_unit_interval_without_gaps():
    t = [0.1, 0.35, 0.6, 0.85]
    probs = np.array([0.0, 1.0, *t, np.nextafter(0.1, 0), np.nextafter(0.85, 1), np.nan])
    probs = np.concatenate([probs, np.random.default_rng(3).random(500)])
    da = xr.DataArray(probs.reshape(1, -1), dims=("y", "x"))
    zones, used = classify_zones(da, thresholds=t)
    z = zones.values.ravel()
    assert used == t
    assert zones.dtype == np.uint8
    assert (z[np.isfinite(probs)] >= 1).all() and (z[np.isfinite(probs)] <= 5).all()
    assert z[np.isnan(probs)].tolist() == [0]
    expected = np.digitize(probs[np.isfinite(probs)], t) + 1
    np.testing.assert_array_equal(z[np.isfinite(probs)], expected)
    # each threshold exactly belongs to the class above it
    assert z[:6].tolist() == [1, 5, 2, 3, 4, 5]
    assert z[6:8].tolist() == [1, 5]


def test_zones_quantiles_default_and_lazy_with_user_thresholds():
    prob = predict_raster(make_stack(), logistic, factors=FACTORS)
    zones, t = classify_zones(prob)
    valid = prob.values[np.isfinite(prob.values)]
    np.testing.assert_allclose(t, np.quantile(valid, [0.2, 0.4, 0.6, 0.8]), atol=2e-3)
    z = zones.values
    assert (z[np.isfinite(prob.values)] > 0).all()
    assert (z[np.isnan(prob.values)] == 0).all()
    shares = np.bincount(z[z > 0], minlength=6)[1:] / valid.size
    np.testing.assert_allclose(shares, 0.2, atol=0.02)
    assert zones.rio.crs == prob.rio.crs

    fn = Counting()
    lazy, _ = classify_zones(predict_raster(make_stack(), fn, factors=FACTORS),
                             thresholds=[0.2, 0.4, 0.6, 0.8])
    assert fn.calls == 0 and lazy.chunks is not None


def test_zones_quantiles_with_ties_are_strictly_increasing():
    probs = np.zeros((10, 10))
    probs[0, :5] = np.linspace(0.5, 0.9, 5)
    with pytest.warns(UserWarning, match="equal shares"):
        zones, t = classify_zones(xr.DataArray(probs, dims=("y", "x")))
    assert all(b > a for a, b in zip(t[:-1], t[1:], strict=True))
    assert (zones.values[probs == 0] == 1).all()  # the point mass is "very low"
    assert (zones.values[probs >= 0.5] == 5).all()


@pytest.mark.parametrize("bad", [
    [0.2, 0.4, 0.6],
    [0.2, 0.4, 0.6, 0.8, 0.9],
    [0.4, 0.2, 0.6, 0.8],
    [0.2, 0.2, 0.6, 0.8],
    [0.0, 0.4, 0.6, 0.8],
    [0.2, 0.4, 0.6, 1.0],
    [0.2, 0.4, np.nan, 0.8],
    ["a", 0.4, 0.6, 0.8],
])
def test_zone_thresholds_validation(bad):
    with pytest.raises(ValueError, match="threshold"):
        validate_thresholds(bad)
    with pytest.raises(ValueError):
        classify_zones(xr.DataArray(np.zeros((2, 2)), dims=("y", "x")), thresholds=bad)


def test_zone_statistics_sums():
    prob = predict_raster(make_stack(), logistic, factors=FACTORS)
    zones, _ = classify_zones(prob)
    rng = np.random.default_rng(5)
    rows = np.concatenate([rng.integers(0, 30, 60), [-1, 30]])  # two outside the raster
    cols = np.concatenate([rng.integers(0, 40, 60), [3, 3]])
    z = zones.values
    inside = (rows >= 0) & (rows < 30)
    n_valid_points = int((z[rows[inside], cols[inside]] > 0).sum())
    for zz in (zones, z):
        table = zone_statistics(zz, rows, cols)
        assert list(table.index) == [1, 2, 3, 4, 5]
        assert table["area_share"].sum() == pytest.approx(1.0)
        assert table["n_pixels"].sum() == (z > 0).sum()
        assert table["n_landslides"].sum() == n_valid_points
        assert table["landslide_share"].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(
            table["density_ratio"], table["landslide_share"] / table["area_share"])
        assert table["name"].tolist() == list(ZONE_NAMES.values())


# --------------------------------------------------------------------------- writers


@pytest.mark.parametrize("compute", [True, False])
def test_probability_cog(tmp_path, compute):
    stack = make_stack(500, 600, chunks=128)
    prob = predict_raster(stack, logistic, factors=FACTORS)
    path = tmp_path / "prob.tif"
    out = write_probability_cog(prob, path, compute=compute)
    if compute:
        assert out is None
    else:
        assert not path.exists()
        out.compute()
    with rasterio.open(path) as src:
        assert src.crs == stack.rio.crs
        assert src.transform == stack.rio.transform()
        assert src.shape == (500, 600)
        assert src.dtypes[0] == "float32"
        assert np.isnan(src.nodata)
        assert src.profile["tiled"] and src.block_shapes[0] == (512, 512)
        assert src.overviews(1) == [2]
        assert src.compression is not None
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        data = src.read(1)
    np.testing.assert_array_equal(data, prob.values)
    finite = data[np.isfinite(data)]
    assert ((finite >= 0) & (finite <= 1)).all()
    assert leftovers(tmp_path) == ["prob.tif"]


def test_value_cog_has_its_own_band_description_and_units(tmp_path):
    stack = make_stack(60, 80, chunks=32)
    values = predict_raster(stack, lambda t: t["slope"].to_numpy() - 20.0, factors=FACTORS,
                            value_range=None, name="shap_slope")
    path = tmp_path / "shap.tif"
    write_value_cog(values, path, description="SHAP contribution of slope (log-odds)",
                    units="log-odds", tags={"FACTOR": "slope"})
    with rasterio.open(path) as src:
        assert src.descriptions == ("SHAP contribution of slope (log-odds)",)
        assert src.units == ("log-odds",)
        assert src.tags()["FACTOR"] == "slope"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        np.testing.assert_array_equal(src.read(1), values.values)
    write_probability_cog(values.clip(0, 1), tmp_path / "p.tif")
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.descriptions == ("P(landslide)",)


def test_probability_cog_small_tiles_force_overviews(tmp_path):
    prob = predict_raster(make_stack(100, 120, chunks=64), logistic, factors=FACTORS)
    path = tmp_path / "sub" / "p.tif"
    write_probability_cog(prob, path, blocksize=128, overview_count=2)
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (128, 128)
        assert src.overviews(1) == [2, 4]
        np.testing.assert_array_equal(src.read(1), prob.values)


@pytest.mark.parametrize("chunks", [128, None])
def test_cog_streams_in_bands(tmp_path, monkeypatch, chunks):
    import lsm.io.raster_write as rw

    # One chunk (dask) or one 128-row tile band (numpy) per batch.
    monkeypatch.setattr(rw, "BAND_BYTES", 128 * 40 * 4)
    windows = []
    real = rw._blocks

    def spy(da, blocksize):
        for r0, c0, block in real(da, blocksize):
            windows.append((r0, c0, block.shape[0]))
            yield r0, c0, block

    monkeypatch.setattr(rw, "_blocks", spy)
    prob = predict_raster(make_stack(300, 40, chunks=chunks), logistic, factors=FACTORS)
    write_probability_cog(prob, tmp_path / "p.tif", blocksize=128)
    assert windows == [(0, 0, 128), (128, 0, 128), (256, 0, 44)]
    with rasterio.open(tmp_path / "p.tif") as src:
        np.testing.assert_array_equal(src.read(1), prob.values)


def test_cog_computes_bounded_batches_of_whole_chunks(tmp_path, monkeypatch):
    import dask

    import lsm.io.raster_write as rw

    # 3 chunks of 32 x 32 float32 per batch: never a band as wide as the raster
    monkeypatch.setattr(rw, "BAND_BYTES", 3 * 32 * 32 * 4)
    batches = []
    real = dask.compute

    def spy(*args, **kwargs):
        batches.append([a.shape for a in args])
        return real(*args, **kwargs)

    prob = predict_raster(make_stack(100, 120, chunks=32), logistic, factors=FACTORS)
    expected = prob.values
    monkeypatch.setattr(dask, "compute", spy)
    write_probability_cog(prob, tmp_path / "p.tif", blocksize=128)
    assert len(batches) > 1
    assert all(sum(r * c * 4 for r, c in b) <= rw.BAND_BYTES for b in batches)
    assert sum(len(b) for b in batches) == 4 * 4  # every chunk once
    with rasterio.open(tmp_path / "p.tif") as src:
        np.testing.assert_array_equal(src.read(1), expected)


def test_zones_geotiff(tmp_path):
    prob = predict_raster(make_stack(), logistic, factors=FACTORS)
    zones, _ = classify_zones(prob)
    path = tmp_path / "zones.tif"
    write_zones_geotiff(zones, path, names=ZONE_NAMES, colors=ZONE_COLORS)
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "uint8"
        assert src.nodata == 0
        assert src.crs == prob.rio.crs and src.transform == prob.rio.transform()
        cmap = src.colormap(1)
        for k, rgba in ZONE_COLORS.items():
            assert cmap[k] == rgba
        assert src.tags()["ZONE_5"] == "very high"
        data = src.read(1)
    valid = np.isfinite(prob.values)
    assert (data[valid] >= 1).all() and (data[valid] <= 5).all()
    assert (data[~valid] == 0).all()
    assert sorted(leftovers(tmp_path)) == ["zones.qml", "zones.tif", "zones.tif.aux.xml"]
    qml = (tmp_path / "zones.qml").read_text()
    assert 'type="paletted"' in qml and 'label="very high"' in qml
    assert "<Category>moderate</Category>" in (tmp_path / "zones.tif.aux.xml").read_text()


def test_writer_rejects_bad_blocksize(tmp_path):
    prob = predict_raster(make_stack(), logistic, factors=FACTORS)
    with pytest.raises(ValueError, match="blocksize"):
        write_probability_cog(prob, tmp_path / "p.tif", blocksize=100)
    assert leftovers(tmp_path) == []


def test_zones_geotiff_deferred(tmp_path):
    zones, _ = classify_zones(
        predict_raster(make_stack(), logistic, factors=FACTORS), thresholds=[.2, .4, .6, .8])
    job = write_zones_geotiff(zones, tmp_path / "z.tif", names=ZONE_NAMES,
                              colors=ZONE_COLORS, compute=False)
    assert leftovers(tmp_path) == []
    job.compute()
    with rasterio.open(tmp_path / "z.tif") as src:
        np.testing.assert_array_equal(src.read(1), zones.values)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("compute", [True, False])
def test_interrupted_write_leaves_nothing(tmp_path, exc, compute):
    stack = make_stack(64, 64, chunks=16)
    fn = Counting(fail_at=5, exc=exc)
    prob = predict_raster(stack, fn, factors=FACTORS)
    path = tmp_path / "prob.tif"
    with pytest.raises(exc, match="mid-way"):
        job = write_probability_cog(prob, path, compute=compute)
        if job is not None:
            job.compute()
    assert fn.calls >= 5
    assert leftovers(tmp_path) == []


def test_interrupted_zone_write_leaves_nothing(tmp_path):
    fn = Counting(fail_at=3, exc=KeyboardInterrupt)
    zones, _ = classify_zones(predict_raster(make_stack(), fn, factors=FACTORS),
                              thresholds=[0.2, 0.4, 0.6, 0.8])
    with pytest.raises(KeyboardInterrupt):
        write_zones_geotiff(zones, tmp_path / "z.tif", names=ZONE_NAMES, colors=ZONE_COLORS)
    assert leftovers(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "prob.tif"
    path.write_bytes(b"old")
    prob = predict_raster(make_stack(), Counting(fail_at=2), factors=FACTORS)
    with pytest.raises(RuntimeError):
        write_probability_cog(prob, path)
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["prob.tif"]


# --------------------------------------------------------------------------- quick looks


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quicklooks(tmp_path):
    import matplotlib.image as mpimg

    stack = make_stack(60, 80, chunks=32)
    prob = predict_raster(stack, logistic, factors=FACTORS)
    zones, _ = classify_zones(prob)
    pts = (stack.x.values[[5, 20, 40]], stack.y.values[[3, 30, 50]])
    p1 = quicklook_png(prob, tmp_path / "p.png", hillshade_from=stack["elevation"],
                       points=pts, title="probability")
    p2 = quicklook_png(zones, tmp_path / "z.png", kind="zones", points=pts, title="zones")
    # decimation path: at most 20 px a side
    p3 = quicklook_png(prob, tmp_path / "small.png", max_size=20,
                       hillshade_from=stack["elevation"])
    for p in (p1, p2, p3):
        assert _is_png(p)
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert leftovers(tmp_path) == ["p.png", "small.png", "z.png"]
    with pytest.raises(ValueError, match="kind"):
        quicklook_png(prob, tmp_path / "x.png", kind="heat")


def test_hillshade_faces_light():
    # A plane rising to the east faces west: lit from the west it is brighter.
    z = np.tile(np.arange(10.0), (5, 1)) * 10.0
    west = hillshade(z, 10.0, 10.0, azimuth=270.0)
    east = hillshade(z, 10.0, 10.0, azimuth=90.0)
    assert (west > east).all()
    flat = hillshade(np.zeros((4, 4)), 1.0, 1.0, altitude=30.0)
    np.testing.assert_allclose(flat, np.sin(np.radians(30.0)))
