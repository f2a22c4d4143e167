"""The four real regions, read from the shared data folder (skipped when it is absent).

The files are found through ``LSM_DATA_DIR`` = ``../shared/data`` beside the repo, so
these tests check the built-in specs, their checksums and the cleaning rules against
the real files, offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsm.config.spec import load_region
from lsm.sampling.folds import block_ids
from lsm.workflows.region import RegionData, load_region_data

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real data not available: {SHARED_DATA} does not exist (clone beside ../shared)",
)


def _load(name: str) -> RegionData:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSM_DATA_DIR", str(SHARED_DATA))
        return load_region_data(load_region(name), progress=False)


@pytest.fixture(scope="module")
def hongkong() -> RegionData:
    return _load("hongkong")


@pytest.fixture(scope="module")
def ecuador() -> RegionData:
    return _load("ecuador")


def test_hongkong_counts_and_split(hongkong: RegionData) -> None:
    t = hongkong.table
    assert len(t) == 17093
    assert int(t["label"].sum()) == 8459
    assert hongkong.split == "spatial"
    assert hongkong.stack is None
    assert t["fold"].nunique() == 5
    ids = block_ids(t["x"].to_numpy(), t["y"].to_numpy(), 5000.0)
    per_block = t.groupby(ids)["fold"].nunique()
    assert (per_block == 1).all()
    assert t["x"].between(800_000, 870_000).all() and t["y"].between(800_000, 850_000).all()


def test_hongkong_cleaning_rules(hongkong: RegionData) -> None:
    t = hongkong.table
    assert not (t["aspect"] == -1).any()
    assert t["aspect"].isna().sum() == 2179  # -1 (flat) -> missing
    assert not np.isclose(t["slope"], 0.000001, rtol=0, atol=1e-9).any()
    assert (t["slope"] == 0).sum() >= 2179  # placeholder -> 0
    assert t["ndvi"].max() <= 1.0 and t["ndvi"].min() >= -1.0  # stored x 10000
    assert t["ndvi"].max() == pytest.approx(0.86)
    assert t["insar_velocity"].isna().sum() == 6459  # placeholder -> missing
    assert t["elevation"].notna().all()
    assert set(t["landuse"].dropna()) == {"1", "2", "3"}
    assert hongkong.kinds["aspect"] == "circular"
    assert hongkong.kinds["landuse"] == "categorical"
    assert "insar_velocity" not in hongkong.spec.transfer_factor_names
    s = hongkong.stats["factors"]
    assert s["slope"]["count"] == 17093
    assert s["ndvi"]["max"] == pytest.approx(0.86)
    assert s["aspect"]["flat_share"] == pytest.approx(2179 / 17093)


def test_ecuador_grid_and_points(ecuador: RegionData) -> None:
    ds = ecuador.stack
    assert ds is not None
    assert ds.sizes["x"] == 383 and ds.sizes["y"] == 415
    assert ds.rio.crs.to_epsg() == 32717
    assert ds.rio.resolution() == pytest.approx((10.0, -10.0))
    t = ecuador.table
    assert len(t) == 350
    assert int(t["label"].sum()) == 175
    assert ecuador.split == "spatial"
    assert any("used as given" in n for n in ecuador.notes)


def test_ecuador_factors_and_derived(ecuador: RegionData) -> None:
    import dask.array as dka

    ds = ecuador.stack
    assert ds is not None
    for f in ("aspect", "curvature", "twi"):
        assert f in ds.data_vars, f
        assert isinstance(ds[f].data, dka.Array), f
        assert f in ecuador.table.columns
    assert list(ecuador.kinds) == ["slope", "plan_curvature", "profile_curvature", "elevation",
                                   "log10_carea", "aspect", "curvature", "twi"]
    t = ecuador.table
    assert t["slope"].between(0, 90).all()
    assert t["elevation"].between(1500, 3500).all()
    assert t["twi"].notna().mean() > 0.95
    a = t["aspect"].dropna()
    assert a.between(0, 360).all() and len(a) > 300
    s = ecuador.stats["factors"]
    assert s["elevation"]["min"] > 1500 and s["elevation"]["max"] < 3500
    assert s["slope"]["count"] > 150_000


def test_ecuador_sample_values_match_source_table(ecuador: RegionData) -> None:
    import pandas as pd

    src = pd.read_csv(SHARED_DATA / "ecuador" / "lsl_points.csv")
    t = ecuador.table
    # every point falls on a valid pixel, so the table keeps the inventory's order; the
    # CSV export carries the raster values at the points, which the stack must reproduce
    assert len(t) == len(src)
    # table coordinates are the centres of the pixels the points fall in (10 m pixels)
    assert np.abs(t["x"] - src["x"]).max() <= 5.0
    assert np.abs(t["y"] - src["y"]).max() <= 5.0
    np.testing.assert_array_equal(t["label"], src["lslpts"].astype(int))
    for ours, theirs in [("elevation", "elev"), ("slope", "slope"), ("plan_curvature", "cplan"),
                         ("profile_curvature", "cprof"), ("log10_carea", "log10_carea")]:
        np.testing.assert_allclose(t[ours], src[theirs], rtol=1e-5, atol=1e-6, err_msg=ours)


@pytest.mark.parametrize(("name", "rows", "slides"), [
    ("jiangxi-yushan", 7598, 175),
    ("jiangxi-yongxin", 10041, 282),
])
def test_jiangxi_tables(name: str, rows: int, slides: int) -> None:
    data = _load(name)
    t = data.table
    assert len(t) == rows
    assert int(t["label"].sum()) == slides
    assert data.split == "random"
    assert any("random" in n for n in data.notes)
    assert "x" not in t.columns and "y" not in t.columns
    assert len(data.kinds) == 16
    assert data.kinds["soil"] == "categorical"
    assert t["fold"].nunique() == 5
    # rainfall 0 marks "no data"
    assert not (t["rainfall"] == 0).any()
    assert set(data.checksums) == {"samples.path", "samples.label.path"}


def test_cli_stack_ecuador(capsys: pytest.CaptureFixture[str]) -> None:
    from lsm.cli import main

    rc = main(["stack", "--region", "ecuador", "--data-dir", str(SHARED_DATA), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "383 x 415 px at 10" in out
    assert "EPSG:32717" in out
    assert "350 points" in out and "175 landslides" in out
    for f in ("slope", "elevation", "twi", "aspect"):
        assert f in out
