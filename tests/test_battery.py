"""The hostile-input and fault battery, run through the CLI.

Every case asserts: the exit code; one clean error line that names the file, key or value
at fault; no Python traceback; no temp file or half-written output left; and no write
outside ``--out`` and the download cache (the file tree of the working folder is compared
before and after). Cases that must never run code (YAML tags, pickles in ``.npz``,
malicious torch files) also check that their marker file was not created.

The totals of this battery are in the closing note of issue 9; each case is one test id.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lsm.cli import main

# ---------------------------------------------------------------------------
# the world every case runs in


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A folder with the demo regions, one fitted source run (all four families, no maps)
    and one fine-tuned run with maps. Cases copy it (``world``) before attacking it."""
    root = tmp_path_factory.mktemp("battery-base")
    shutil.copytree(demo_dir, root / "demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("battery-cache")))
    try:
        rc = main(["fit", "--source", str(root / "demo" / "demo-source.yaml"), "--model",
                   "rf,lr,xgb,mlp", "--out", str(root / "runs" / "src"), "--no-cv",
                   "--no-explain", "--no-predict", "-q"])
        assert rc == 0
        rc = main(["finetune", "--target", str(root / "demo" / "demo-target.yaml"), "--from",
                   str(root / "runs" / "src"), "--model", "lr", "--shots", "15",
                   "--repeats", "2", "--out", str(root / "runs" / "ft"), "--no-explain",
                   "-q"])
        assert rc == 0
    finally:
        mp.undo()
    return root


@pytest.fixture
def world(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of ``base`` as the working folder."""
    w = tmp_path / "world"
    shutil.copytree(base, w)
    monkeypatch.chdir(w)
    return w


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (lock files excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".lsm.lock":
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    changed: list[str] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.lower().startswith(("error", "usage",
                                                                             "try "))
                or "Error:" in ln or "Invalid value" in ln]


def cli(argv: list[str], world: Path, capsys: pytest.CaptureFixture[str], *,
        allowed: tuple[str, ...] = ()) -> Outcome:
    """Run ``lsm argv`` in ``world``; return the outcome and the files it changed outside
    the ``allowed`` prefixes."""
    before = tree(world)
    capsys.readouterr()
    rc = main(argv)
    cap = capsys.readouterr()
    after = tree(world)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    outside = [k for k in changed if not any(k.startswith(a) for a in allowed)]
    return Outcome(rc, cap.out, cap.err, outside)


def assert_clean_error(o: Outcome, *, names: str, rc: int | tuple[int, ...] = (1, 2)) -> None:
    """A non-zero exit ``rc``, one error line naming ``names`` (a regex), no traceback,
    nothing written, no temp files."""
    rcs = (rc,) if isinstance(rc, int) else rc
    assert o.rc in rcs, (o.rc, o.err[-800:])
    assert "Traceback" not in o.err and "Traceback" not in o.out
    errs = [ln for ln in o.err.splitlines() if ln.startswith("error:") or "Error:" in ln]
    assert len(errs) == 1, o.err[-800:]
    assert re.search(names, errs[0]), (names, errs[0])
    assert not o.changed, o.changed


def no_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.startswith(".staging-")
            or p.name.startswith(".replaced-")]


# ---------------------------------------------------------------------------
# specs


def _target_spec(world: Path) -> dict[str, Any]:
    return yaml.safe_load((world / "demo" / "demo-target.yaml").read_text())


def _spec_case(text: str | bytes | None) -> Callable[[Path], Path]:
    def make(world: Path) -> Path:
        p = world / "demo" / "bad.yaml"
        if text is None:
            return p  # missing
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    return make


MARKER = "PWNED-by-battery"


def _tag_yaml(world: Path) -> Path:
    marker = world / MARKER
    p = world / "demo" / "bad.yaml"
    p.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n"
                 "crs: EPSG:32617\n")
    return p


def _unknown_key(world: Path) -> Path:
    d = _target_spec(world)
    d["resolutoin"] = 25.0
    return _write(world, d)


def _wrong_type(world: Path) -> Path:
    d = _target_spec(world)
    d["resolution"] = "ten metres"
    return _write(world, d)


def _traversal(world: Path) -> Path:
    d = _target_spec(world)
    d["name"] = "../../../../escaped"
    return _write(world, d)


def _duplicate_factor(world: Path) -> Path:
    text = (world / "demo" / "demo-target.yaml").read_text()
    text = text.replace("factors:\n  elevation:\n    path: target/elevation.tif\n",
                        "factors:\n  elevation:\n    path: target/elevation.tif\n"
                        "  elevation:\n    path: target/rainfall.tif\n")
    assert text.count("  elevation:\n") == 2
    p = world / "demo" / "bad.yaml"
    p.write_text(text)
    return p


def _duplicate_name(world: Path) -> Path:
    text = (world / "demo" / "demo-target.yaml").read_text()
    p = world / "demo" / "bad.yaml"
    p.write_text(text.replace("name: demo-target\n", "name: demo-target\nname: other\n"))
    return p


def _write(world: Path, d: dict[str, Any], name: str = "bad.yaml") -> Path:
    p = world / "demo" / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


SPEC_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "malformed-yaml": (_spec_case("name: [unclosed\ncrs: x\n"), r"bad\.yaml"),
    "yaml-tag": (_tag_yaml, r"bad\.yaml"),
    "unknown-key": (_unknown_key, r"resolutoin"),
    "wrong-type": (_wrong_type, r"resolution"),
    "missing-file": (_spec_case(None), r"bad\.yaml"),
    "empty-file": (_spec_case(""), r"bad\.yaml"),
    "binary-garbage": (_spec_case(bytes(range(256)) * 4), r"bad\.yaml"),
    "path-traversal-name": (_traversal, r"name"),
    "duplicate-factor": (_duplicate_factor, r"bad\.yaml.*duplicate.*elevation"),
    "duplicate-name": (_duplicate_name, r"bad\.yaml.*duplicate.*name"),
}


@pytest.mark.parametrize("command", ["stack", "finetune"])
@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_spec(case: str, command: str, world: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    make, names = SPEC_CASES[case]
    spec = make(world)
    argv = (["stack", "--region", str(spec), "-q"] if command == "stack" else
            ["finetune", "--target", str(spec), "--from", "runs/src", "--out", "runs/new",
             "-q"])
    o = cli(argv, world, capsys)
    assert_clean_error(o, names=names)
    assert not (world / MARKER).exists() and not Path(MARKER).exists()
    assert not (world.parent / "escaped").exists()
    assert not (world / "runs" / "new").exists()


# ---------------------------------------------------------------------------
# rasters


def _raster_case(kind: str) -> Callable[[Path], Path]:
    def make(world: Path) -> Path:
        import rasterio

        src = world / "demo" / "target" / "elevation.tif"
        bad = world / "demo" / "target" / "bad.tif"
        with rasterio.open(src) as r:
            a, prof = r.read(1), r.profile
        if kind == "no-crs":
            prof.pop("crs")
            with rasterio.open(bad, "w", **prof) as w:
                w.write(a, 1)
        elif kind == "no-overlap":
            t = prof["transform"]
            prof["transform"] = rasterio.Affine(t.a, t.b, t.c + 1e6, t.d, t.e, t.f)
            with rasterio.open(bad, "w", **prof) as w:
                w.write(a, 1)
        elif kind == "all-nodata":
            with rasterio.open(bad, "w", **prof) as w:
                w.write(np.full_like(a, prof["nodata"] if prof["nodata"] is not None
                                     else -9999), 1)
        elif kind == "truncated":
            data = src.read_bytes()
            bad.write_bytes(data[: len(data) // 3])
        elif kind == "bit-rot":
            data = bytearray(src.read_bytes())
            for i in range(len(data) // 2, len(data), 97):
                data[i] ^= 0xFF
            bad.write_bytes(bytes(data))
        d = _target_spec(world)
        d["factors"]["elevation"]["path"] = "target/bad.tif"
        return _write(world, d)

    return make


RASTER_CASES = {
    "no-crs": (_raster_case("no-crs"), r"bad\.tif.*(CRS|crs)"),
    "no-overlap": (_raster_case("no-overlap"), r"overlap.*bad\.tif"),
    "all-nodata": (_raster_case("all-nodata"), r"bad\.tif|elevation"),
    "truncated": (_raster_case("truncated"), r"bad\.tif"),
    "bit-rot": (_raster_case("bit-rot"), r"bad\.tif"),
}


@pytest.mark.parametrize("case", list(RASTER_CASES))
def test_bad_raster(case: str, world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, names = RASTER_CASES[case]
    spec = make(world)
    o = cli(["stack", "--region", str(spec), "-q"], world, capsys)
    assert_clean_error(o, names=names)


def test_grid_too_large_is_refused_before_allocating(world: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A spec asking for a 180,000 x 180,000 grid (resolution 0.05 over a 9 km extent
    would need far more than this machine has): one line, before any allocation."""
    import psutil

    d = _target_spec(world)
    d["resolution"] = 0.01  # 5 km extent -> 500,000 x 500,000 px
    spec = _write(world, d)
    rss0 = psutil.Process().memory_info().rss
    o = cli(["stack", "--region", str(spec), "-q"], world, capsys)
    assert_clean_error(o, names=r"bad\.yaml: resolution: the grid would be 500,000 x 500,000 "
                                r"px.*too large")
    assert psutil.Process().memory_info().rss - rss0 < 500 * 2**20


# ---------------------------------------------------------------------------
# inventories


def _inventory_case(kind: str) -> Callable[[Path], Path]:
    def make(world: Path) -> Path:
        import geopandas as gpd
        from shapely.geometry import Point

        src = world / "demo" / "target" / "landslides.gpkg"
        gdf = gpd.read_file(src, layer="landslides")
        bad = world / "demo" / "target" / "bad.gpkg"
        if kind == "empty":
            gdf = gdf.iloc[:0]
        elif kind == "outside":
            gdf = gdf.set_geometry([Point(p.x + 1e6, p.y) for p in gdf.geometry])
        elif kind == "nan-coords":
            gdf = gdf.set_geometry([Point(np.nan, np.nan) for _ in gdf.geometry])
        gdf.to_file(bad, layer="landslides", engine="pyogrio")
        d = _target_spec(world)
        d["inventory"]["path"] = "target/bad.gpkg"
        return _write(world, d)

    return make


INVENTORY_CASES = {
    "empty": (_inventory_case("empty"), r"bad\.(gpkg|yaml).*(no|empty)"),
    "all-outside-grid": (_inventory_case("outside"), r"bad\.(gpkg|yaml).*(outside|no )"),
    "nan-coordinates": (_inventory_case("nan-coords"), r"bad\.(gpkg|yaml).*"),
}


@pytest.mark.parametrize("case", list(INVENTORY_CASES))
def test_bad_inventory(case: str, world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, names = INVENTORY_CASES[case]
    spec = make(world)
    o = cli(["stack", "--region", str(spec), "-q"], world, capsys)
    assert_clean_error(o, names=names)


# ---------------------------------------------------------------------------
# tables


def _table(world: Path, rows: list[dict[str, Any]] | None, *, text: str | None = None,
           xy: bool = True) -> Path:
    """A table region of ``rows`` (default: 60 good rows) at ``demo/table.csv``."""
    import pandas as pd

    csv = world / "demo" / "table.csv"
    if text is not None:
        csv.write_text(text)
    else:
        pd.DataFrame(rows).to_csv(csv, index=False)
    spec: dict[str, Any] = {
        "name": "battery-table", "crs": "EPSG:32617",
        "samples": {"path": "table.csv", "label": "landslide"},
        "factors": {"slope": {"column": "slope"}, "ndvi": {"column": "ndvi"}},
        "folds": {"n_folds": 3, "block_size": 500.0}}
    if xy:
        spec["samples"].update(x="x", y="y")
    return _write(world, spec, "table.yaml")


def _good_rows(n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"x": 500_000 + 100.0 * (i % 10) * 3, "y": 3_900_000 + 100.0 * (i // 10) * 3,
             "slope": float(rng.uniform(0, 45)), "ndvi": float(rng.uniform(-0.2, 0.9)),
             "landslide": int(i % 2)} for i in range(n)]


def _rows(change: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    rows = _good_rows()
    change(rows)
    return rows


def _set(i: int, key: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def f(rows: list[dict[str, Any]]) -> None:
        rows[i][key] = value
    return f


def _one_class(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        r["landslide"] = 1


TABLE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "one-class": (lambda w: _table(w, _rows(_one_class)), r"table\.(csv|yaml).*(class|0)"),
    "header-only": (lambda w: _table(w, None, text="x,y,slope,ndvi,landslide\n"),
                    r"table\.(csv|yaml).*(no row|empty|rows)"),
    "inf-value": (lambda w: _table(w, _rows(_set(3, "slope", float("inf")))),
                  r"table\.(csv|yaml).*slope.*(inf|finite)"),
    "string-in-numeric": (lambda w: _table(w, _rows(_set(5, "slope", "steep"))),
                          r"table\.(csv|yaml).*slope.*steep"),
    "decimal-comma": (lambda w: _table(w, _rows(_set(5, "ndvi", "12,5"))),
                      r"table\.(csv|yaml).*ndvi.*12,5"),
    "nan-coordinates": (lambda w: _table(w, _rows(_set(2, "x", float("nan")))),
                        r"table\.(csv|yaml).*(x|coordinate)"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_table(case: str, world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, names = TABLE_CASES[case]
    spec = make(world)
    o = cli(["stack", "--region", str(spec), "-q"], world, capsys)
    assert_clean_error(o, names=names)


def test_good_table_is_accepted(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control of the table cases: the unmodified table stacks with spatial folds."""
    spec = _table(world, _good_rows())
    o = cli(["stack", "--region", str(spec), "-q"], world, capsys)
    assert o.rc == 0, o.err
    assert "spatial" in o.out + o.err


# ---------------------------------------------------------------------------
# numeric CLI options

OPTION_CASES: dict[str, tuple[list[str], str]] = {
    "shots-zero": (["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
                    "--shots", "0", "--out", "runs/x"], r"--shots"),
    "shots-negative": (["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
                        "--shots", "-5", "--out", "runs/x"], r"--shots"),
    "shots-word": (["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
                    "--shots", "many", "--out", "runs/x"], r"--shots"),
    "shots-huge": (["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
                    "--shots", "100000", "--out", "runs/x"], r"100000|shots"),
    "repeats-zero": (["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
                      "--repeats", "0", "--out", "runs/x"], r"repeats"),
    "finetune-prevalence-1.5": (["finetune", "--target", "demo/demo-target.yaml", "--from",
                                 "runs/src", "--prevalence", "1.5", "--out", "runs/x"],
                                r"prevalence"),
    "predict-prevalence-0": (["predict", "--run", "runs/ft", "--prevalence", "0"],
                             r"prevalence"),
    "predict-prevalence-1.5": (["predict", "--run", "runs/ft", "--prevalence", "1.5"],
                               r"prevalence"),
    "predict-prevalence-neg": (["predict", "--run", "runs/ft", "--prevalence", "-0.2"],
                               r"prevalence"),
    "predict-prevalence-nan": (["predict", "--run", "runs/ft", "--prevalence", "nan"],
                               r"prevalence"),
    "thresholds-unsorted": (["predict", "--run", "runs/ft", "--thresholds", "0.6,0.2"],
                            r"thresholds"),
    "thresholds-out-of-range": (["predict", "--run", "runs/ft", "--thresholds", "0.2,1.4"],
                                r"thresholds"),
    "explain-top-negative": (["explain", "--run", "runs/ft", "--top", "-1"], r"--top"),
    "explain-top-zero": (["explain", "--run", "runs/ft", "--top", "0"], r"--top"),
    "seed-negative": (["fit", "--source", "demo/demo-source.yaml", "--seed", "-1", "--out",
                       "runs/x"], r"--seed"),
    "unknown-model": (["predict", "--run", "runs/ft", "--model", "svm"], r"svm"),
    "fit-unknown-model": (["fit", "--source", "demo/demo-source.yaml", "--model", "svm",
                           "--out", "runs/x"], r"svm"),
    "missing-run": (["predict", "--run", "runs/none"], r"runs/none"),
    "missing-spec": (["fit", "--source", "demo/none.yaml", "--out", "runs/x"],
                     r"demo/none\.yaml"),
    "out-is-a-file": (["fit", "--source", "demo/demo-source.yaml", "--model", "lr",
                       "--no-cv", "--out", "demo/demo-target.yaml"],
                      r"demo-target\.yaml.*(file|folder)"),
    "predict-out-is-a-file": (["predict", "--run", "runs/ft", "--out",
                               "demo/demo-target.yaml"],
                              r"is a file.*demo-target\.yaml"),
    "data-dir-missing": (["stack", "--region", "demo/demo-target.yaml", "--data-dir",
                          "nowhere"], r"nowhere"),
    "bad-norm": (["fit", "--source", "demo/demo-source.yaml", "--norm", "zscore", "--out",
                  "runs/x"], r"zscore|norm"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_value(case: str, world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, names = OPTION_CASES[case]
    o = cli([*argv, "-q"], world, capsys)
    assert_clean_error(o, names=names)
    assert not (world / "runs" / "x").exists()
