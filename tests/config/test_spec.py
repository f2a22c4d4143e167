"""Region spec validation: every mistake is one line naming the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from lsm.config.spec import (
    builtin_regions,
    builtin_spec_dir,
    dump_region,
    load_region,
    parse_region,
)
from lsm.errors import SpecError

SHA = "a" * 64


def raster_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "r",
        "factors": {"elevation": {"path": "elevation.tif"}},
        "inventory": {"path": "points.gpkg"},
    }
    spec.update(extra)
    return spec


def table_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "samples": {"path": "samples.csv"},
        "factors": {"elevation": {"column": "dem"}},
    }
    spec.update(extra)
    return spec


def spec_error(tmp_path: Path, data: dict[str, Any]) -> str:
    """Load ``data`` from a YAML file and return the one-line SpecError message."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(SpecError) as exc:
        load_region(path)
    msg = str(exc.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    assert msg.startswith(f"{path}: "), msg
    return msg


def test_valid_minimal_spec_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raster_spec()), encoding="utf-8")
    spec = load_region(path)
    assert spec.factor_names == ["elevation"]
    assert spec.base_dir == tmp_path.resolve()
    assert spec.source_file == path
    assert not spec.is_table


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d.update(factor=d.pop("factors")), "factor", ["unknown key 'factor'",
                                                                "did you mean 'factors'"]),
        (lambda d: d["factors"]["elevation"].update(slop=1), "factors.elevation.slop",
         ["unknown key 'slop'"]),
        (lambda d: d.pop("name"), "name", ["required key is missing"]),
        (lambda d: d["inventory"].pop("path"), "inventory.path", ["required key is missing"]),
        (lambda d: d.update(crs="EPSG:99999"), "crs", ["unknown CRS", "EPSG:99999"]),
        (lambda d: d["factors"]["elevation"].update(path="https://example.org/e.tif"),
         "factors.elevation.path", ["sha256"]),
        (lambda d: d["factors"]["elevation"].update(path={"url": "https://example.org/e.tif"}),
         "factors.elevation.path", ["needs its 'sha256'"]),
        (lambda d: d["factors"]["elevation"].update(
            path={"url": "https://example.org/e.tif", "sha256": "xyz"}),
         "factors.elevation.path.sha256", ["not a sha256", "xyz"]),
        (lambda d: d["factors"]["elevation"].update(
            path={"url": "https://example.org/e.tif", "sha256": SHA,
                  "local_copies": [{"name": "e.csv", "sha256": "1234"}]}),
         "factors.elevation.path.local_copies.0.sha256", ["not a sha256"]),
        (lambda d: d.update(samples={"path": "s.csv"}), "<top>",
         ["exactly one of 'inventory'", "'samples'"]),
        (lambda d: d.pop("inventory"), "<top>", ["exactly one of 'inventory'", "'samples'"]),
        (lambda d: d["factors"].update(wetness={"path": "w.tif"}), "factors.wetness",
         ["needs 'kind'", "canonical"]),
        (lambda d: d.update(derive={"dem": "dem", "factors": ["slope"]}), "derive.dem",
         ["'dem' is not in 'factors'"]),
        (lambda d: d.update(derive={"factors": ["ndvi"]}), "derive.factors",
         ["cannot derive", "ndvi"]),
        (lambda d: d["factors"]["elevation"].update(column="dem"), "factors.elevation",
         ["takes 'path', not 'column'"]),
        (lambda d: d.update(aoi={"bounds": [10, 10, 0, 20]}), "aoi", ["empty"]),
        (lambda d: d.update(resolution=-5), "resolution", ["greater than 0"]),
    ],
    ids=["typo-top", "typo-factor", "missing-name", "missing-inventory-path", "bad-crs",
         "url-string", "url-no-sha", "bad-sha", "bad-local-copy-sha", "both", "neither",
         "noncanonical-no-kind", "derive-missing-dem", "derive-unknown", "raster-column",
         "empty-aoi", "negative-resolution"],
)
def test_raster_spec_errors_are_one_line(tmp_path: Path, mutate: Any, key: str,
                                         words: list[str]) -> None:
    data = copy.deepcopy(raster_spec())
    mutate(data)
    msg = spec_error(tmp_path, data)
    assert f": {key}: " in msg, msg
    for w in words:
        assert w in msg, msg


def _url(**kw: Any) -> dict[str, Any]:
    return {"url": "https://example.org/data/e.tif", "sha256": SHA, **kw}


@pytest.mark.parametrize(
    ("mutate", "key", "words"),
    [
        (lambda d: d.update(name="../../../../X"), "name", ["'../../../../X'", "single file"]),
        (lambda d: d.update(name="a/b"), "name", ["single file"]),
        (lambda d: d.update(name="a\\b"), "name", ["single file"]),
        (lambda d: d.update(name=".."), "name", ["single file"]),
        (lambda d: d.update(name=" "), "name", ["must not be empty"]),
        (lambda d: d["factors"]["elevation"].update(path=_url(name="../victim/important.txt")),
         "factors.elevation.path.name", ["'../victim/important.txt'", "inside the folder"]),
        (lambda d: d["factors"]["elevation"].update(path=_url(name="/etc/passwd")),
         "factors.elevation.path.name", ["inside the folder"]),
        (lambda d: d["factors"]["elevation"].update(path=_url(name="a//b.tif")),
         "factors.elevation.path.name", ["inside the folder"]),
        (lambda d: d["factors"]["elevation"].update(path=_url(
            local_copies=[{"name": "x/../../y.csv", "sha256": SHA}])),
         "factors.elevation.path.local_copies.0.name", ["inside the folder"]),
        (lambda d: d["inventory"].update(path={"url": "https://example.org/..", "sha256": SHA}),
         "inventory.path", ["'..' cannot name the downloaded file"]),
    ],
    ids=["region-up", "region-slash", "region-backslash", "region-dotdot", "region-empty",
         "file-up", "file-absolute", "file-empty-part", "copy-up", "url-dotdot"],
)
def test_names_that_leave_their_folder_are_refused(tmp_path: Path, mutate: Any, key: str,
                                                   words: list[str]) -> None:
    data = copy.deepcopy(raster_spec())
    mutate(data)
    msg = spec_error(tmp_path, data)
    assert f": {key}: " in msg, msg
    for w in words:
        assert w in msg, msg


def test_nested_file_names_stay_allowed() -> None:
    spec = parse_region(raster_spec(name="my-region_2", inventory={
        "path": _url(name="jiangxi/yushan/points.gpkg",
                     local_copies=[{"name": "jiangxi/yushan/p.csv", "sha256": SHA}])}))
    assert spec.inventory is not None and spec.inventory.path.cache_name == \
        "jiangxi/yushan/points.gpkg"


def test_table_factor_with_path_is_an_error(tmp_path: Path) -> None:
    data = table_spec()
    data["factors"]["slope"] = {"path": "slope.tif"}
    msg = spec_error(tmp_path, data)
    assert ": factors.slope: " in msg
    assert "takes 'column', not 'path'" in msg


def test_table_factor_without_column_is_an_error(tmp_path: Path) -> None:
    data = table_spec()
    data["factors"]["slope"] = {"scale": 2.0}
    msg = spec_error(tmp_path, data)
    assert "factors.slope: a table region needs 'column'" in msg


def test_table_region_cannot_derive(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, table_spec(derive={"dem": "elevation"}))
    assert ": derive: " in msg and "raster region" in msg


def test_noncanonical_factor_with_kind_is_fine() -> None:
    data = raster_spec()
    data["factors"]["wetness"] = {"path": "w.tif", "kind": "continuous"}
    spec = parse_region(data)
    assert spec.kind_of("wetness") == "continuous"
    assert spec.kind_of("elevation") == "continuous"


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"list.yaml: a region spec must be a YAML mapping"):
        load_region(path)
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"broken.yaml: line \d+: not valid YAML") as exc:
        load_region(path)
    assert "\n" not in str(exc.value)


def test_unknown_region_name_lists_builtins() -> None:
    with pytest.raises(SpecError) as exc:
        load_region("atlantis")
    msg = str(exc.value)
    assert "'atlantis'" in msg and "hongkong" in msg and "demo-target" in msg
    assert "\n" not in msg
    with pytest.raises(SpecError, match="no such region spec file"):
        load_region("nowhere/atlantis.yaml")


# ---------------------------------------------------------------------------
# errors that appear when files are opened


def test_missing_file_names_key_and_path(tmp_path: Path, tiny_region: dict[str, Any],
                                         write_spec: Any) -> None:
    from lsm.stack.build import build_stack

    data = copy.deepcopy(tiny_region["spec"])
    data["factors"]["ndvi"]["path"] = "gone/ndvi.tif"
    path = write_spec(tiny_region["dir"] / "missing.yaml", data)
    with pytest.raises(SpecError) as exc:
        build_stack(load_region(path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: factors.ndvi.path: file not found"), msg
    assert str(tiny_region["dir"] / "gone" / "ndvi.tif") in msg


def test_missing_inventory_file(tiny_region: dict[str, Any], write_spec: Any) -> None:
    from lsm.workflows.region import load_region_data

    data = copy.deepcopy(tiny_region["spec"])
    data["inventory"]["path"] = "nope.gpkg"
    path = write_spec(tiny_region["dir"] / "noinv.yaml", data)
    with pytest.raises(SpecError, match=r"inventory.path: file not found: .*nope.gpkg"):
        load_region_data(load_region(path), progress=False)


@pytest.fixture
def two_band(tmp_path: Path, write_tif: Any) -> Path:
    import numpy as np

    arr = np.stack([np.full((6, 8), 1.0), np.full((6, 8), 2.0)]).astype("float32")
    return write_tif(tmp_path / "bands.tif", arr, descriptions=["elev", "slope"])


def test_band_by_description_and_index(tmp_path: Path, two_band: Path, write_spec: Any) -> None:
    import numpy as np

    from lsm.stack.build import build_stack

    data = raster_spec()
    data["factors"] = {"elevation": {"path": "bands.tif", "band": "elev"},
                       "slope": {"path": "bands.tif", "band": 2}}
    ds = build_stack(load_region(write_spec(tmp_path / "ok.yaml", data)), progress=False)
    assert np.all(ds.elevation.values == 1.0)
    assert np.all(ds.slope.values == 2.0)
    assert ds.slope.attrs["band"] == 2


@pytest.mark.parametrize(("band", "words"), [
    (3, ["band 3 does not exist in bands.tif", "2 band(s)"]),
    ("aspect", ["band 'aspect' not in bands.tif", "bands: elev, slope"]),
])
def test_missing_band_is_an_error(tmp_path: Path, two_band: Path, write_spec: Any, band: Any,
                                  words: list[str]) -> None:
    from lsm.stack.build import build_stack

    data = raster_spec()
    data["factors"] = {"elevation": {"path": "bands.tif", "band": band}}
    path = write_spec(tmp_path / "band.yaml", data)
    with pytest.raises(SpecError) as exc:
        build_stack(load_region(path), progress=False)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: factors.elevation.band: "), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


# ---------------------------------------------------------------------------
# round trip and built-ins


def test_dump_parse_round_trip(tiny_region: dict[str, Any]) -> None:
    spec = load_region(tiny_region["spec_path"])
    text = dump_region(spec)
    again = parse_region(yaml.safe_load(text), base_dir=spec.base_dir)
    again.source_file = spec.source_file
    assert again == spec
    assert again.factors["lithology"].categories == {"1": "granite", "2": "sandstone",
                                                     "3": "shale"}
    assert "base_dir" not in text and "source_file" not in text


def test_round_trip_with_urls_and_derive() -> None:
    data = raster_spec(
        crs="EPSG:32633", resolution=30,
        derive={"dem": "elevation", "factors": ["slope", "twi"]},
        aoi={"bounds": [0, 0, 100, 100]},
    )
    data["factors"]["ndvi"] = {"path": {"url": "https://example.org/n.tif", "sha256": SHA.upper(),
                                        "local_copies": [{"name": "n2.tif", "sha256": SHA}]},
                               "replace": {0.000001: 0}, "valid_range": [-1, 1]}
    spec = parse_region(data)
    assert spec.factors["ndvi"].path.sha256 == SHA  # normalised to lower case
    again = parse_region(yaml.safe_load(dump_region(spec)))
    assert again == spec
    assert again.factor_names == ["elevation", "ndvi", "slope", "twi"]


@pytest.mark.parametrize("name", [n for n in builtin_regions() if not n.startswith("demo")])
def test_builtin_specs_parse(name: str) -> None:
    spec = load_region(name)
    assert spec.name == name
    assert spec.source_file == builtin_spec_dir() / f"{name}.yaml"
    refs = spec.file_refs()
    assert refs, "a built-in spec names no file"
    for key, ref in refs.items():
        assert ref.url and ref.url.startswith("https://"), key
        assert ref.sha256 and len(ref.sha256) == 64, key
    again = parse_region(yaml.safe_load(dump_region(spec)), base_dir=spec.base_dir)
    again.source_file = spec.source_file
    assert again == spec


def test_builtin_regions_listed() -> None:
    names = builtin_regions()
    for n in ("hongkong", "ecuador", "jiangxi-yongxin", "jiangxi-yushan", "demo-source",
              "demo-target"):
        assert n in names


# ---------------------------------------------------------------------------
# CLI


def test_cli_bad_spec_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lsm.cli import main

    data = raster_spec()
    data["factors"]["elevation"]["slop"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    rc = main(["stack", "--region", str(path), "-q"])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error:" in err and str(path) in err
    assert "factors.elevation.slop: unknown key 'slop'" in err


def test_cli_missing_file_one_line_error(tiny_region: dict[str, Any], write_spec: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from lsm.cli import main

    data = copy.deepcopy(tiny_region["spec"])
    data["factors"]["elevation"]["path"] = "missing.tif"
    path = write_spec(tiny_region["dir"] / "m.yaml", data)
    rc = main(["stack", "--region", str(path), "-q"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "factors.elevation.path: file not found" in err


@pytest.mark.parametrize("name", ["my_region.yaml", "my_points.yaml"])
def test_example_specs_parse(name: str) -> None:
    from pathlib import Path

    from lsm.config.spec import load_yaml, parse_region

    path = Path(__file__).resolve().parents[2] / "examples" / name
    spec = parse_region(load_yaml(path), source=str(path))
    assert spec.factors


def test_inventory_label_false_round_trips_and_true_is_refused(tmp_path: Path) -> None:
    spec = parse_region(raster_spec(inventory={"path": "points.gpkg", "label": False}))
    assert spec.inventory is not None and spec.inventory.label is False
    assert parse_region(yaml.safe_load(dump_region(spec))).inventory.label is False
    msg = spec_error(tmp_path, raster_spec(inventory={"path": "points.gpkg", "label": True}))
    assert ": inventory.label: " in msg


def test_a_misspelt_region_name_gets_a_suggestion() -> None:
    import pytest

    from lsm.config.spec import resolve_region_path
    from lsm.errors import SpecError

    with pytest.raises(SpecError, match="did you mean 'hongkong'"):
        resolve_region_path("hongkon")
    with pytest.raises(SpecError) as err:
        resolve_region_path("zzzz")
    assert "did you mean" not in str(err.value)
