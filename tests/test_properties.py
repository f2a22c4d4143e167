"""Property tests (Hypothesis) where the algebra is clear.

- alignment keeps the values at coincident pixels;
- absences never fall inside the buffer around landslides;
- spatial folds never share a block;
- normalisation round-trips;
- a prediction does not depend on the chunk size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import CRS, RES, X0, Y0, _write_spec, _write_tif
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=12, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@SLOW
@given(dx=st.integers(-6, 6), dy=st.integers(-6, 6), w=st.integers(8, 20),
       h=st.integers(8, 20), seed=st.integers(0, 2**16))
def test_alignment_keeps_values_at_coincident_pixels(tmp_path_factory: pytest.TempPathFactory,
                                                     dx: int, dy: int, w: int, h: int,
                                                     seed: int) -> None:
    """A second factor on the same resolution, shifted by whole pixels: on the reference
    grid its values at the pixels both cover are exactly its own values."""
    from lsm.config.spec import load_region
    from lsm.stack.build import build_stack

    d = tmp_path_factory.mktemp("align")
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0, 100, (h, w)).astype("float32")
    other = rng.uniform(0, 100, (h + 4, w + 4)).astype("float32")
    _write_tif(d / "ref.tif", ref, nodata=-9999.0)
    ox, oy = X0 + dx * RES, Y0 - dy * RES
    _write_tif(d / "other.tif", other, origin=(ox, oy), nodata=-9999.0)
    spec = _write_spec(d / "r.yaml", {
        "name": "align", "crs": CRS,
        "factors": {"elevation": {"path": "ref.tif"}, "ndvi": {"path": "other.tif"}},
        "inventory": {"path": "none.gpkg"}, "chunks": 16})
    ds = build_stack(load_region(spec))
    got = ds["ndvi"].compute().to_numpy()
    assert got.shape == ref.shape
    for r in range(h):
        for c in range(w):
            ro, co = r - dy, c - dx  # the same ground pixel in the other raster
            if 0 <= ro < other.shape[0] and 0 <= co < other.shape[1]:
                assert got[r, c] == other[ro, co]
            else:
                assert np.isnan(got[r, c])
    np.testing.assert_array_equal(ds["elevation"].compute().to_numpy(), ref)


@FAST
@given(seed=st.integers(0, 2**16), n_ls=st.integers(1, 8),
       dist=st.floats(0.0, 60.0), n=st.integers(1, 40))
def test_absences_never_fall_inside_the_buffer(seed: int, n_ls: int, dist: float,
                                               n: int) -> None:
    import shapely
    from rasterio.transform import from_origin

    from lsm.errors import SamplingError
    from lsm.sampling.points import sample_absences

    rng = np.random.default_rng(seed)
    shape = (40, 40)
    valid = rng.uniform(size=shape) > 0.2
    t = from_origin(X0, Y0, RES, RES)
    ls = [shapely.Point(X0 + rng.uniform(0, 400), Y0 - rng.uniform(0, 400)) for _ in
          range(n_ls)]
    try:
        rows, cols = sample_absences(valid, t, ls, n=n, min_distance=dist, seed=seed)
    except SamplingError:
        return  # the buffer left too few pixels: refused, not violated
    assert len(rows) == n and valid[rows, cols].all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == n  # no repeats
    pts = shapely.points(X0 + RES * (cols + 0.5), Y0 - RES * (rows + 0.5))
    for g in ls:
        d = shapely.distance(pts, g)
        assert (d > dist).all() if dist > 0 else (d > 0).all()


@FAST
@given(seed=st.integers(0, 2**16), n=st.integers(20, 300), k=st.integers(2, 6),
       block=st.floats(50.0, 400.0))
def test_spatial_folds_never_share_a_block(seed: int, n: int, k: int, block: float) -> None:
    from lsm.errors import SamplingError
    from lsm.sampling.folds import block_ids, spatial_folds

    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2000, n)
    y = rng.uniform(0, 2000, n)
    try:
        folds = spatial_folds(x, y, n_folds=k, block_size=block, seed=seed)
    except SamplingError:
        assert len(np.unique(block_ids(x, y, block))) < k
        return
    assert set(np.unique(folds)) == set(range(k))  # as many folds as asked
    ids = block_ids(x, y, block)
    for b in np.unique(ids):
        assert len(np.unique(folds[ids == b])) == 1


def test_spatial_folds_refuse_missing_coordinates() -> None:
    from lsm.errors import SamplingError
    from lsm.sampling.folds import spatial_folds

    x = np.arange(50.0) * 100
    y = np.arange(50.0) * 100
    x[7] = np.nan
    with pytest.raises(SamplingError, match="row 7"):
        spatial_folds(x, y, n_folds=5, block_size=300)


@FAST
@given(values=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=3, max_size=60),
       norm=st.sampled_from(["target", "source", "none"]))
def test_normalisation_round_trips(values: list[float], norm: str) -> None:
    from lsm.stack.features import FeatureSchema, continuous_center_scale, design_matrix
    from lsm.stack.stats import table_statistics

    v = np.asarray(values)
    table = pd.DataFrame({"elevation": v})
    stats = table_statistics(table, {"elevation": "continuous"})
    schema = FeatureSchema.from_table(table, {"elevation": "continuous"})
    X = design_matrix(table, schema, norm=norm, region_stats=stats, source_stats=stats)
    mean, std = continuous_center_scale("elevation", norm=norm, region_stats=stats,
                                        source_stats=stats)
    back = X["elevation"].to_numpy() * std + mean
    np.testing.assert_allclose(back, v, rtol=1e-9, atol=1e-6 * max(1.0, np.abs(v).max()))


@SLOW
@given(chunk=st.integers(3, 40), seed=st.integers(0, 2**16))
def test_prediction_does_not_depend_on_chunk_size(chunk: int, seed: int) -> None:
    import xarray as xr

    from lsm.mapping.predict import predict_raster

    rng = np.random.default_rng(seed)
    h, w = 37, 41
    a = rng.normal(size=(h, w)).astype("float32")
    b = rng.normal(size=(h, w)).astype("float32")
    a[rng.uniform(size=(h, w)) < 0.1] = np.nan
    ds = xr.Dataset({"a": (("y", "x"), a), "b": (("y", "x"), b)},
                    coords={"y": Y0 - RES * (np.arange(h) + 0.5),
                            "x": X0 + RES * (np.arange(w) + 0.5)})
    ds = ds.rio.write_crs(CRS)

    def fn(t: pd.DataFrame) -> np.ndarray:
        z = 0.7 * t["a"].to_numpy() - 0.3 * t["b"].to_numpy()
        return 1 / (1 + np.exp(-z))

    ref = predict_raster(ds, fn, factors=["a", "b"]).to_numpy()
    got = predict_raster(ds.chunk({"y": chunk, "x": chunk}), fn,
                         factors=["a", "b"]).compute().to_numpy()
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(ref[np.isnan(a)]).all() and np.isfinite(ref[~np.isnan(a)]).all()
