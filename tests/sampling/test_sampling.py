"""Absences, folds, hold-outs, shots and value extraction."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import shapely
from affine import Affine
from shapely.geometry import Point, box

from lsm.config.spec import load_region
from lsm.errors import SamplingError
from lsm.sampling.folds import block_ids, default_block_size, random_folds, spatial_folds
from lsm.sampling.points import extract_values, pixel_index, polygon_pixels, sample_absences
from lsm.sampling.shots import draw_shots, holdout_mask
from lsm.workflows.region import load_region_data

X0, Y0, RES = 500_000.0, 5_000_000.0, 10.0
T = Affine(RES, 0.0, X0, 0.0, -RES, Y0)


def centres(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return shapely.points(X0 + RES * (cols + 0.5), Y0 - RES * (rows + 0.5))


def valid_grid(shape: tuple[int, int] = (50, 60)) -> np.ndarray:
    valid = np.ones(shape, dtype=bool)
    valid[:, :3] = False  # nodata edge
    valid[20:25, 30:40] = False  # a lake
    return valid


def point_landslides() -> list:
    rng = np.random.default_rng(7)
    r, c = rng.integers(5, 45, 15), rng.integers(8, 55, 15)
    return list(centres(r, c))


def polygon_landslides() -> list:
    return [box(X0 + 100, Y0 - 200, X0 + 160, Y0 - 120),
            box(X0 + 400, Y0 - 420, X0 + 430, Y0 - 300),
            Point(X0 + 250, Y0 - 250).buffer(35.0)]


# ---------------------------------------------------------------------------
# absences


@pytest.mark.parametrize("kind", ["points", "polygons"])
def test_absences_respect_buffer_and_validity(kind: str) -> None:
    valid = valid_grid()
    slides = point_landslides() if kind == "points" else polygon_landslides()
    rows, cols = sample_absences(valid, T, slides, n=300, min_distance=45.0, seed=3)
    assert rows.size == cols.size == 300
    assert valid[rows, cols].all()
    pts = centres(rows, cols)
    dist = np.array([[shapely.distance(p, s) for s in slides] for p in pts])
    assert dist.min() > 45.0
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 300  # no pixel twice


def test_absences_inside_polygons_excluded_without_buffer() -> None:
    valid = valid_grid()
    slides = polygon_landslides()
    rows, cols = sample_absences(valid, T, slides, n=2000, min_distance=0.0, seed=0)
    pts = centres(rows, cols)
    assert not any(shapely.intersects(p, s) for p in pts for s in slides)


def test_absences_skip_excluded_pixels() -> None:
    valid = np.ones((6, 8), dtype=bool)
    ex_r, ex_c = np.array([0, 1, 2]), np.array([0, 1, 2])
    rows, cols = sample_absences(valid, T, [], n=45, min_distance=0.0, seed=0,
                                 exclude=(ex_r, ex_c))
    taken = set(zip(rows.tolist(), cols.tolist()))
    assert len(taken) == 45
    assert not taken & {(0, 0), (1, 1), (2, 2)}


def test_absences_reproducible_by_seed() -> None:
    valid, slides = valid_grid(), point_landslides()
    a = sample_absences(valid, T, slides, n=100, min_distance=30.0, seed=11)
    b = sample_absences(valid, T, slides, n=100, min_distance=30.0, seed=11)
    c = sample_absences(valid, T, slides, n=100, min_distance=30.0, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_absences_impossible_buffer_is_an_error() -> None:
    valid = valid_grid()
    slides = [Point(X0 + 300, Y0 - 250)]
    with pytest.raises(SamplingError, match=r"only \d+ of 100 absences .*min_distance"):
        sample_absences(valid, T, slides, n=100, min_distance=5000.0, seed=0)
    with pytest.raises(SamplingError, match="no valid pixels"):
        sample_absences(np.zeros((6, 8), dtype=bool), T, slides, n=1, min_distance=0, seed=0)


# ---------------------------------------------------------------------------
# folds


def scattered(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 6000, n), rng.uniform(0, 4000, n)


def test_spatial_folds_never_split_blocks() -> None:
    x, y = scattered()
    folds = spatial_folds(x, y, n_folds=5, block_size=1000.0, seed=2)
    ids = block_ids(x, y, 1000.0)
    assert folds.min() == 0 and folds.max() == 4
    for b in np.unique(ids):
        assert len(np.unique(folds[ids == b])) == 1, f"block {b} split across folds"
    counts = np.bincount(folds, minlength=5)
    assert (counts > 0).all()
    assert counts.max() - counts.min() < 0.5 * counts.mean()  # about equal sizes


def test_spatial_folds_are_spatially_disjoint() -> None:
    x, y = scattered()
    bs = 1000.0
    folds = spatial_folds(x, y, n_folds=4, block_size=bs, seed=0)
    # the squares (edge bs, anchored at the lower-left point) holding each fold's points
    # never overlap: a test fold has no training point beside it in the same block
    x0, y0 = x.min(), y.min()
    areas = {}
    for k in range(4):
        sq = {(int((a - x0) // bs), int((b - y0) // bs))
              for a, b in zip(x[folds == k], y[folds == k])}
        areas[k] = shapely.union_all([box(x0 + i * bs, y0 + j * bs, x0 + (i + 1) * bs,
                                          y0 + (j + 1) * bs) for i, j in sq])
    for i in range(4):
        for j in range(i + 1, 4):
            assert areas[i].intersection(areas[j]).area == pytest.approx(0.0), (i, j)


def test_spatial_folds_seeded_and_default_block_size() -> None:
    x, y = scattered()
    a = spatial_folds(x, y, n_folds=3, seed=1)
    np.testing.assert_array_equal(a, spatial_folds(x, y, n_folds=3, seed=1))
    assert not np.array_equal(a, spatial_folds(x, y, n_folds=3, seed=5))
    assert default_block_size(x, y) == pytest.approx(np.ptp(x) / 6)
    assert default_block_size(np.zeros(3), np.zeros(3)) == 1.0


def test_random_folds_balanced_and_seeded() -> None:
    f = random_folds(103, n_folds=5, seed=0)
    assert np.bincount(f).tolist() in ([21, 21, 21, 20, 20],)
    np.testing.assert_array_equal(f, random_folds(103, n_folds=5, seed=0))
    assert not np.array_equal(f, random_folds(103, n_folds=5, seed=1))


def test_table_without_coordinates_gets_random_folds(tmp_path: Path, write_spec: Any) -> None:
    rng = np.random.default_rng(0)
    n = 120
    pd.DataFrame({"DEM": rng.uniform(0, 900, n), "geo": rng.integers(1, 4, n),
                  "y_label": (np.arange(n) % 4 == 0).astype(int)}).to_csv(
        tmp_path / "units.csv", index=False)
    path = write_spec(tmp_path / "units.yaml", {
        "name": "units",
        "samples": {"path": "units.csv", "label": "y_label"},
        "factors": {"elevation": {"column": "DEM"}, "lithology": {"column": "geo"}},
        "folds": {"n_folds": 4},
    })
    data = load_region_data(load_region(path), progress=False)
    assert data.split == "random"
    assert any("random" in note and "no coordinates" in note for note in data.notes)
    assert "x" not in data.table.columns
    assert sorted(data.table["fold"].unique()) == [0, 1, 2, 3]
    assert data.table["label"].sum() == 30
    assert data.stack is None


def test_table_with_coordinates_gets_spatial_folds(tmp_path: Path, write_spec: Any) -> None:
    x, y = scattered(200, seed=3)
    pd.DataFrame({"X": x, "Y": y, "DEM": x / 10, "label": (np.arange(200) % 2)}).to_csv(
        tmp_path / "pts.csv", index=False)
    path = write_spec(tmp_path / "pts.yaml", {
        "name": "pts", "samples": {"path": "pts.csv", "x": "X", "y": "Y"},
        "factors": {"elevation": {"column": "DEM"}}, "folds": {"block_size": 1500.0}})
    data = load_region_data(load_region(path), progress=False)
    assert data.split == "spatial" and not data.notes
    ids = block_ids(data.table["x"].to_numpy(), data.table["y"].to_numpy(), 1500.0)
    for b in np.unique(ids):
        assert data.table["fold"][ids == b].nunique() == 1


def test_fewer_blocks_or_rows_than_folds_is_an_error() -> None:
    x, y = scattered()
    with pytest.raises(SamplingError, match="1 spatial block.*fewer than the 5 folds"):
        spatial_folds(x, y, n_folds=5, block_size=10_000.0)
    with pytest.raises(SamplingError, match="3 rows cannot make 5 folds"):
        random_folds(3, n_folds=5)


def test_table_in_degrees_with_block_size_in_metres(tmp_path: Path, write_spec: Any) -> None:
    """block_size: 600 on lon/lat points is 600 degrees: warn, then a clear fold error."""
    x, y = scattered(200, seed=3)
    pd.DataFrame({"lon": 8.0 + x / 1e5, "lat": 46.0 + y / 1e5, "DEM": x / 10,
                  "label": np.arange(200) % 2}).to_csv(tmp_path / "pts.csv", index=False)
    spec = {"name": "pts", "samples": {"path": "pts.csv", "x": "lon", "y": "lat",
                                       "crs": "EPSG:4326"},
            "factors": {"elevation": {"column": "DEM"}}, "folds": {"block_size": 600.0}}
    path = write_spec(tmp_path / "pts.yaml", spec)
    with pytest.warns(UserWarning, match=r"folds\.block_size: 600 is read in degrees.*WGS 84"), \
            pytest.raises(SamplingError) as err:
        load_region_data(load_region(path), progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{path}: folds: the points fall into 1 spatial block")
    assert "(degrees: the CRS is geographic)" in msg and "\n" not in msg
    spec["folds"] = {"block_size": 0.01}  # in degrees: fine, and no warning
    path = write_spec(tmp_path / "ok.yaml", spec)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        data = load_region_data(load_region(path), progress=False)
    assert data.table["fold"].nunique() == 5 and not data.notes


def test_raster_region_in_degrees_warns_about_min_distance(tmp_path: Path, write_tif: Any,
                                                           write_spec: Any) -> None:
    import geopandas as gpd

    rng = np.random.default_rng(0)
    res, (x0, y0) = 0.001, (8.0, 46.0)
    write_tif(tmp_path / "dem.tif", rng.uniform(0, 900, (40, 48)).astype("float32"),
              crs="EPSG:4326", origin=(x0, y0), res=res)
    rows, cols = rng.integers(2, 38, 15), rng.integers(2, 46, 15)
    pts = [Point(x0 + res * (c + 0.5), y0 - res * (r + 0.5)) for r, c in zip(rows, cols)]
    gpd.GeoDataFrame(geometry=pts, crs="EPSG:4326").to_file(tmp_path / "pts.gpkg")
    path = write_spec(tmp_path / "geo.yaml", {
        "name": "geo", "factors": {"elevation": {"path": "dem.tif"}},
        "inventory": {"path": "pts.gpkg"}, "absences": {"min_distance": 25.0},
        "folds": {"n_folds": 3, "block_size": 0.01}})
    with pytest.warns(UserWarning, match=r"absences\.min_distance: 25 is read in degrees"), \
            pytest.raises(SamplingError, match="absences"):
        load_region_data(load_region(path), progress=False)


# ---------------------------------------------------------------------------
# hold-outs and shots


def labelled_table(with_xy: bool, n: int = 400) -> pd.DataFrame:
    x, y = scattered(n, seed=4)
    t = pd.DataFrame({"label": (np.arange(n) % 5 == 0).astype("int8")})
    if with_xy:
        t["x"], t["y"] = x, y
    return t


def test_holdout_spatial_takes_whole_blocks() -> None:
    t = labelled_table(True)
    test, kind = holdout_mask(t, test_fraction=0.3, seed=0, block_size=1000.0)
    assert kind == "spatial"
    assert 0.3 <= test.mean() < 0.6
    ids = block_ids(t["x"].to_numpy(), t["y"].to_numpy(), 1000.0)
    for b in np.unique(ids):
        assert len(np.unique(test[ids == b])) == 1
    assert t["label"][test].sum() > 0 and t["label"][~test].sum() > 0
    again, _ = holdout_mask(t, test_fraction=0.3, seed=0, block_size=1000.0)
    np.testing.assert_array_equal(test, again)


def test_holdout_random_without_coordinates_is_stratified() -> None:
    t = labelled_table(False)
    test, kind = holdout_mask(t, test_fraction=0.25, seed=1)
    assert kind == "random"
    assert test.sum() == 100
    assert t["label"][test].sum() == 20  # 25 % of the 80 landslides
    t_nan = labelled_table(True)
    t_nan.loc[3, "x"] = np.nan
    assert holdout_mask(t_nan, seed=0)[1] == "random"


def test_draw_shots() -> None:
    labels = np.array([1] * 8 + [0] * 30)
    idx = draw_shots(labels, 5, seed=0)
    assert idx.size == 10 and len(set(idx.tolist())) == 10
    assert labels[idx].sum() == 5
    np.testing.assert_array_equal(idx, draw_shots(labels, 5, seed=0))
    assert not np.array_equal(idx, draw_shots(labels, 5, seed=1))


def test_draw_shots_too_many_is_helpful() -> None:
    labels = np.array([1] * 8 + [0] * 30)
    with pytest.raises(SamplingError) as exc:
        draw_shots(labels, 9, seed=0)
    msg = str(exc.value)
    assert "--shots 9" in msg and "8 and 30" in msg and "--shots 8 or less" in msg


# ---------------------------------------------------------------------------
# extraction and inventories


def test_pixel_index_and_extract_values(tiny_region: dict[str, Any]) -> None:
    from lsm.stack.build import build_stack, stack_grid

    ds = build_stack(load_region(tiny_region["spec_path"]), progress=False)
    g = stack_grid(ds)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, g.height, 50), rng.integers(0, g.width, 50)
    xs, ys = g.transform.c + RES * (cols + 0.3), g.transform.f - RES * (rows + 0.9)
    r2, c2, inside = pixel_index(g.transform, xs, ys, g.width, g.height)
    np.testing.assert_array_equal(r2, rows)
    np.testing.assert_array_equal(c2, cols)
    assert inside.all()
    _, _, out = pixel_index(g.transform, np.array([X0 - 1.0, X0 + 5]), np.array([Y0 - 5, Y0 + 1]),
                            g.width, g.height)
    assert not out.any()
    got = extract_values(ds, rows, cols, ["elevation", "ndvi", "lithology"])
    full = ds.compute()
    for f in ("elevation", "ndvi", "lithology"):
        np.testing.assert_array_equal(got[f].to_numpy(), full[f].values[rows, cols].astype(
            "float64"))
    assert got["elevation"].isna().sum() == (cols == 0).sum()


def test_polygon_pixels_centres_inside() -> None:
    poly = box(X0 + 20, Y0 - 40, X0 + 50, Y0 - 10)  # 3 x 3 pixel centres
    rows, cols = polygon_pixels([poly], T, 10, 10)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(r, c) for r in (1, 2, 3)
                                                         for c in (2, 3, 4)]


def test_points_inventory_region(tiny_region: dict[str, Any]) -> None:
    spec = load_region(tiny_region["spec_path"])
    data = load_region_data(spec, progress=False)
    t = data.table
    assert (t["label"] == 1).sum() == 12
    assert (t["label"] == 0).sum() == 24  # ratio 2
    assert data.split == "spatial"
    assert set(t["lithology"].dropna()) <= {"granite", "sandstone", "shale"}
    assert t[["elevation", "lithology"]].notna().all().all()
    # absences are 25 m or more from every landslide point
    slides = tiny_region["points"]
    absent = shapely.points(t.loc[t.label == 0, "x"], t.loc[t.label == 0, "y"])
    assert min(shapely.distance(p, s) for p in absent for s in slides) > 25.0
    assert list(data.kinds) == ["elevation", "lithology", "ndvi"]
    assert data.stats["factors"]["lithology"]["frequencies"].keys() == {
        "granite", "sandstone", "shale"}


@pytest.mark.parametrize(("mode", "expected"), [("centroid", 5), ("all_pixels", 45)])
def test_polygon_inventory_modes(tiny_region: dict[str, Any], write_spec: Any, mode: str,
                                 expected: int) -> None:
    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"] = {"path": "polygons.gpkg", "polygons": mode}
    data["absences"] = {"count": 40, "min_distance": 15.0, "seed": 0}
    spec = load_region(write_spec(tiny_region["dir"] / f"{mode}.yaml", data))
    t = load_region_data(spec, progress=False).table
    assert (t["label"] == 1).sum() == expected
    assert (t["label"] == 0).sum() == 40
    polys = tiny_region["polygons"]
    pres = shapely.points(t.loc[t.label == 1, "x"], t.loc[t.label == 1, "y"])
    assert all(any(shapely.intersects(p, g) for g in polys) for p in pres)
    absent = shapely.points(t.loc[t.label == 0, "x"], t.loc[t.label == 0, "y"])
    assert min(shapely.distance(p, g) for p in absent for g in polys) > 15.0


def test_inventory_with_label_column_used_as_given(tiny_region: dict[str, Any],
                                                  write_spec: Any) -> None:
    rng = np.random.default_rng(1)
    r, c = rng.integers(2, 38, 20), rng.integers(2, 46, 20)
    lab = np.array(["TRUE", "FALSE"] * 10)
    pd.DataFrame({"east": X0 + RES * (c + 0.5), "north": Y0 - RES * (r + 0.5),
                  "slide": lab}).to_csv(tiny_region["dir"] / "labelled.csv", index=False)
    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"] = {"path": "labelled.csv", "x": "east", "y": "north",
                         "crs": "EPSG:32633", "label": "slide"}
    region = load_region_data(load_region(write_spec(tiny_region["dir"] / "lab.yaml", data)),
                              progress=False)
    t = region.table
    assert len(t) == 20
    assert (t["label"] == 1).sum() == 10
    np.testing.assert_array_equal(t["row"].to_numpy(), r)
    np.testing.assert_array_equal(t["label"].to_numpy(), (lab == "TRUE").astype(int))
    assert any("used as given" in n for n in region.notes)


def _labelled_inventory(tiny_region: dict[str, Any], column: str, values: np.ndarray,
                        fmt: str) -> dict[str, Any]:
    """A 20-point inventory with one extra ``column``; returns its spec's inventory entry."""
    import geopandas as gpd

    rng = np.random.default_rng(1)
    r, c = rng.integers(2, 38, 20), rng.integers(2, 46, 20)
    x, y = X0 + RES * (c + 0.5), Y0 - RES * (r + 0.5)
    if fmt == "csv":
        pd.DataFrame({"x": x, "y": y, column: values}).to_csv(tiny_region["dir"] / "inv.csv",
                                                              index=False)
        return {"path": "inv.csv", "x": "x", "y": "y", "crs": "EPSG:32633"}
    gpd.GeoDataFrame({column: values}, geometry=gpd.points_from_xy(x, y),
                     crs="EPSG:32633").to_file(tiny_region["dir"] / "inv.gpkg", engine="pyogrio")
    return {"path": "inv.gpkg"}


@pytest.mark.parametrize(("column", "fmt"), [("label", "gpkg"), ("Landslide", "csv"),
                                             ("class", "gpkg"), ("presence", "csv")])
def test_obvious_label_column_is_used_with_a_warning(tiny_region: dict[str, Any],
                                                     write_spec: Any, column: str,
                                                     fmt: str) -> None:
    """A 0/1 'label' column without inventory.label: the zeros are not landslides."""
    values = np.arange(20) % 2
    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"] = _labelled_inventory(tiny_region, column, values, fmt)
    spec = load_region(write_spec(tiny_region["dir"] / "auto.yaml", data))
    with pytest.warns(UserWarning, match=rf"inventory\.label: not set, .*'{column}'.*10 zeros"):
        region = load_region_data(spec, progress=False)
    t = region.table
    assert len(t) == 20 and (t["label"] == 1).sum() == 10  # used as given, no absences
    np.testing.assert_array_equal(t["label"].to_numpy(), values)
    assert any("used as labels" in n for n in region.notes)


def test_label_false_takes_every_row_as_a_landslide(tiny_region: dict[str, Any],
                                                    write_spec: Any) -> None:
    import warnings

    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"] = {**_labelled_inventory(tiny_region, "label", np.arange(20) % 2,
                                               "gpkg"), "label": False}
    spec = load_region(write_spec(tiny_region["dir"] / "off.yaml", data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        t = load_region_data(spec, progress=False).table
    assert (t["label"] == 1).sum() == 20 and (t["label"] == 0).sum() == 40  # ratio 2


@pytest.mark.parametrize(("column", "values"), [
    ("class", np.arange(20) % 3 + 1),   # a landslide type, not a 0/1 label
    ("label", np.ones(20, dtype=int)),  # all landslides: absences are still drawn
    ("size", np.arange(20) % 2),        # not a label's name
])
def test_other_columns_are_not_taken_for_labels(tiny_region: dict[str, Any], write_spec: Any,
                                                column: str, values: np.ndarray) -> None:
    import warnings

    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"] = _labelled_inventory(tiny_region, column, values, "gpkg")
    spec = load_region(write_spec(tiny_region["dir"] / "plain.yaml", data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        t = load_region_data(spec, progress=False).table
    assert (t["label"] == 1).sum() == 20 and (t["label"] == 0).sum() == 40


def test_no_landslide_on_valid_pixels_is_an_error(tiny_region: dict[str, Any],
                                                  write_spec: Any) -> None:
    import geopandas as gpd

    gpd.GeoDataFrame(geometry=[Point(X0 + 5, Y0 - 55)], crs="EPSG:32633").to_file(
        tiny_region["dir"] / "edge.gpkg", engine="pyogrio")  # on the nodata column
    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"] = {"path": "edge.gpkg"}
    spec = load_region(write_spec(tiny_region["dir"] / "edge.yaml", data))
    with pytest.raises(SamplingError, match="no landslide falls on a valid pixel"):
        load_region_data(spec, progress=False)
