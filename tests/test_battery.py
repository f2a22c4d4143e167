"""The hostile-input and fault battery, run through the CLI.

Every case asserts: the exit code; one clean error line that names the file, key or value
at fault; no Python traceback; no temp file or half-written output left; and no write
outside ``--out`` and the download cache (the file tree of the working folder is compared
before and after). Cases that must never run code (YAML tags, pickles in ``.npz``,
malicious torch files) also check that their marker file was not created.

The totals of this battery are in the closing note of issue 9; each case is one test id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
                              r"demo-target\.yaml: is a file"),
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


# ---------------------------------------------------------------------------
# artifacts


class _Evil:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _rehash(run: Path) -> None:
    """What an attacker who knows the format does: recompute both manifests (sha256 is an
    integrity check, not a signature), so only the loaders stand between file and code."""
    from lsm.io.artifacts import write_manifest
    from lsm.workflows.runs import _run_files

    for d in (run / "model").iterdir():
        files = [p for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"]
        write_manifest(d, files)
    write_manifest(run, _run_files(run))


def _flip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def _art_flipped_byte(run: Path, marker: Path) -> str:
    _flip(run / "model" / "xgb" / "model.ubj")
    return r"model\.ubj.*checksum"


def _art_truncated(run: Path, marker: Path) -> str:
    p = run / "model" / "lr" / "coef.json"
    p.write_bytes(p.read_bytes()[:40])
    return r"coef\.json.*checksum"


def _art_missing_run_manifest(run: Path, marker: Path) -> str:
    (run / "manifest.json").unlink()
    return r"src.*incomplete run"


def _art_missing_family_manifest(run: Path, marker: Path) -> str:
    (run / "model" / "lr" / "manifest.json").unlink()
    return r"lr/manifest\.json.*missing"


def _art_shifted_statistics(run: Path, marker: Path) -> str:
    meta = json.loads((run / "model.json").read_text())
    for st in meta["stats"].values():
        if isinstance(st, dict) and "mean" in st and "std" in st:
            st["mean"] = st["mean"] + 5 * st["std"]
    (run / "model.json").write_text(json.dumps(meta))
    return r"model\.json.*checksum"


def _art_emptied_manifest_replaced_coef(run: Path, marker: Path) -> str:
    (run / "model" / "lr" / "manifest.json").write_text('{"files": {}}')
    coef = json.loads((run / "model" / "lr" / "coef.json").read_text())
    (run / "model" / "lr" / "coef.json").write_text(json.dumps(coef).replace("0.", "0.9"))
    return r"model/lr/.*checksum"


def _art_model_from_another_run(run: Path, marker: Path) -> str:
    other = run.parent / "ft" / "model" / "lr"
    shutil.rmtree(run / "model" / "lr")
    shutil.copytree(other, run / "model" / "lr")
    return r"model/lr/.*(checksum|not part)"


def _art_unlisted_file(run: Path, marker: Path) -> str:
    (run / "model" / "xgb" / "extra.ubj").write_bytes(b"{}")
    return r"extra\.ubj.*not part"


def _art_pickle_in_npz(run: Path, marker: Path) -> str:
    import io

    arrays = dict(np.load(run / "model" / "rf" / "trees.npz"))
    arrays["threshold"] = np.array([_Evil(marker)], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # an object array: stored as a pickle
    (run / "model" / "rf" / "trees.npz").write_bytes(buf.getvalue())
    _rehash(run)
    return r"trees\.npz"


def _art_malicious_torch(run: Path, marker: Path) -> str:
    import torch

    torch.save({"weights": _Evil(marker)}, run / "model" / "mlp" / "mlp.pt")
    _rehash(run)
    return r"mlp\.pt"


def _art_garbage_ubjson(run: Path, marker: Path) -> str:
    (run / "model" / "xgb" / "model.ubj").write_bytes(os.urandom(4096))
    _rehash(run)
    return r"model\.ubj"


def _art_corrupt_ubjson_rehashed(run: Path, marker: Path) -> str:
    p = run / "model" / "xgb" / "model.ubj"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _rehash(run)
    return r"model\.ubj"


def _art_garbage_json_rehashed(run: Path, marker: Path) -> str:
    (run / "model" / "lr" / "coef.json").write_text('{"coef": [1, 2')
    _rehash(run)
    return r"coef\.json"


ARTIFACT_CASES = {
    "flipped-byte": ("xgb", _art_flipped_byte),
    "truncated": ("lr", _art_truncated),
    "missing-run-manifest": ("lr", _art_missing_run_manifest),
    "missing-family-manifest": ("lr", _art_missing_family_manifest),
    "model-json-statistics-shifted": ("lr", _art_shifted_statistics),
    "emptied-manifest-replaced-coef": ("lr", _art_emptied_manifest_replaced_coef),
    "model-folder-from-another-run": ("lr", _art_model_from_another_run),
    "unlisted-file": ("xgb", _art_unlisted_file),
    "pickle-in-npz": ("rf", _art_pickle_in_npz),
    "malicious-torch-pickle": ("mlp", _art_malicious_torch),
    "garbage-ubjson": ("xgb", _art_garbage_ubjson),
    "truncated-ubjson-rehashed": ("xgb", _art_corrupt_ubjson_rehashed),
    "garbage-json-rehashed": ("lr", _art_garbage_json_rehashed),
}


@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_bad_artifact(case: str, world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    family, attack = ARTIFACT_CASES[case]
    marker = world / MARKER
    names = attack(world / "runs" / "src", marker)
    o = cli(["predict", "--run", "runs/src", "--model", family, "--out", "maps", "-q"], world,
            capsys)
    assert_clean_error(o, names=names)
    assert not marker.exists(), "a pickle in a model file ran code"
    assert not (world / "maps").exists()


def test_untouched_run_predicts(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control of the artifact cases: the same command on the intact run works."""
    o = cli(["predict", "--run", "runs/src", "--model", "rf", "--out", "maps", "-q"], world,
            capsys, allowed=("maps/",))
    assert o.rc == 0, o.err
    assert list((world / "maps").glob("*_probability.tif"))
    assert not o.changed and not no_temp_files(world)


# ---------------------------------------------------------------------------
# faults: disk full, read-only folders, concurrent runs, SIGINT and SIGKILL


@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    """``small_fs(size)`` mounts a tmpfs of ``size`` (e.g. "8m") and returns its path;
    unmounted after the test. Skips where mounting is not allowed (not root, no tmpfs)."""
    mounts: list[Path] = []

    def make(size: str, name: str = "fs") -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode})")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(fs: Path, leave: int) -> None:
    """Fill ``fs`` until about ``leave`` bytes are free."""
    free = shutil.disk_usage(fs).free
    if free > leave:
        with open(fs / "ballast.bin", "wb") as fh:
            fh.truncate(0)
            chunk = b"\0" * (1 << 16)
            todo = free - leave
            while todo > 0:
                fh.write(chunk[: min(len(chunk), todo)])
                todo -= len(chunk)


def _read_map(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def test_disk_full_keeps_the_previous_map(world: Path, small_fs: Any,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """predict replacing an existing map on a nearly full disk: one line 'no space left
    on device: PATH', exit 1, the previous map intact and readable, no temp files."""
    fs = small_fs("24m")
    out = fs / "maps"
    o = cli(["predict", "--run", "runs/src", "--model", "lr", "--out", str(out), "-q"], world,
            capsys)
    assert o.rc == 0, o.err
    prob = next(out.glob("*_probability.tif"))
    good = _read_map(prob)
    before = tree(out)
    _fill(fs, 60_000)
    # the same maps again, at another prevalence: every file would change
    o = cli(["predict", "--run", "runs/src", "--model", "lr", "--prevalence", "0.1", "--out",
             str(out), "-q"], world, capsys)
    assert_clean_error(o, names=r"no space left on device: .*maps", rc=1)
    np.testing.assert_array_equal(_read_map(prob), good)
    after = tree(out)
    assert {k: after.get(k) for k in before} == before, "a failed write changed a file"
    assert not no_temp_files(out)


def test_disk_full_during_fit_leaves_no_run(world: Path, small_fs: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fs = small_fs("4m")
    _fill(fs, 150_000)
    o = cli(["fit", "--source", "demo/demo-source.yaml", "--model", "xgb", "--no-cv",
             "--no-explain", "--no-predict", "--out", str(fs / "run"), "-q"], world, capsys)
    assert_clean_error(o, names=r"no space left on device: .*run", rc=1)
    left = [p for p in fs.rglob("*") if p.name not in ("ballast.bin",)]
    assert left == [] or [p.name for p in left] == ["run"] and not any(
        (fs / "run").iterdir()), left


@pytest.mark.parametrize("command", ["predict", "fit"])
def test_read_only_out_is_one_line(command: str, world: Path, small_fs: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    fs = small_fs("4m")
    (fs / "ro").mkdir()
    r = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    out = fs / "ro" / "new"
    argv = (["predict", "--run", "runs/src", "--model", "lr", "--out", str(out), "-q"]
            if command == "predict" else
            ["fit", "--source", "demo/demo-source.yaml", "--model", "lr", "--no-cv", "--out",
             str(out), "-q"])
    o = cli(argv, world, capsys)
    assert_clean_error(o, names=r"read-only file system: .*ro/new", rc=1)


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[int]:
    """Another process holds ``folder`` (as a running lsm command does); yields its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from lsm.workflows.runs import claim_run_dir\n"
         "claim_run_dir(sys.argv[1]); print('held', flush=True); time.sleep(60)",
         str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_concurrent_run_on_one_out_is_refused(world: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Another process holds runs/src (as a running fit or predict does): a second command
    on it stops at once with one line naming the folder and the other process."""
    with _held(world / "runs" / "src") as pid:
        o = cli(["fit", "--source", "demo/demo-source.yaml", "--model", "lr", "--no-cv",
                 "--out", "runs/src", "-q"], world, capsys)
        assert_clean_error(o, names=rf"runs/src: in use by another lsm process \(pid "
                                    rf"{pid}\)")
        o = cli(["predict", "--run", "runs/src", "--model", "lr", "-q"], world, capsys)
        assert_clean_error(o, names=r"runs/src: in use by another lsm process")
    # once the other process is gone the folder is free again
    o = cli(["predict", "--run", "runs/src", "--model", "lr", "-q"], world, capsys,
            allowed=("runs/src/",))
    assert o.rc == 0, o.err


def test_concurrent_lsm_run_on_one_out_is_refused(world: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (world / "pipe").mkdir()
    with _held(world / "pipe"):
        o = cli(["run", str(Path(__file__).parents[1] / "pipelines" / "demo.yaml"), "--out",
                 "pipe", "-q"], world, capsys)
        assert_clean_error(o, names=r"pipe: in use by another lsm process")


def _lsm(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lsm.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(pred: Callable[[], bool], proc: subprocess.Popen[str], timeout: float) -> bool:
    """Poll ``pred`` until true, the process ends, or ``timeout`` (a safety net, not a
    timing assert)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_signal_during_predict_then_rerun(sig: signal.Signals, world: Path) -> None:
    """A signal while the map is being written: SIGINT exits 130 with 'interrupted' and
    leaves no temp file; SIGKILL may leave one, which the next run removes. Either way the
    previous map stays readable and the rerun writes the same map as an undisturbed run."""
    base = ["predict", "--run", "runs/src", "--model", "xgb", "--out", "maps", "-q"]
    first = _lsm(base, world)
    assert first.wait() == 0, first.stderr.read() if first.stderr else ""
    prob = next((world / "maps").glob("*_probability.tif"))
    good = _read_map(prob)

    proc = _lsm(base, world)
    # the map set is written in a staging folder inside maps/ (committed as one unit)
    _wait_for(lambda: any(".tmp-" in p.name for p in (world / "maps").rglob("*")), proc, 120)
    os.killpg(proc.pid, sig)
    rc = proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err
    if sig == signal.SIGINT:
        assert rc in (130, 0), err  # 0: it finished before the signal landed
        if rc == 130:
            assert "interrupted" in err
            assert not no_temp_files(world / "maps"), "SIGINT left temp files"
    else:
        assert rc == -signal.SIGKILL
    np.testing.assert_array_equal(_read_map(prob), good)  # old or complete new: never half

    rerun = _lsm(base, world)
    assert rerun.wait() == 0, rerun.stderr.read() if rerun.stderr else ""
    assert not no_temp_files(world / "maps"), "stale temp files survived the rerun"
    np.testing.assert_array_equal(_read_map(prob), good)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_signal_during_lsm_run_then_resume(sig: signal.Signals, world: Path) -> None:
    """SIGINT or SIGKILL while a pipeline runs: SIGINT exits 130 saying 'interrupted';
    either way the rerun reuses the finished steps, redoes the interrupted one, and
    leaves no temp or staging file."""
    pipe = world / "tiny.yaml"
    pipe.write_text(yaml.safe_dump({
        "name": "tiny",
        "studies": [{"kind": "shots", "source": "demo/demo-source.yaml",
                     "targets": ["demo/demo-target.yaml"], "models": ["lr"],
                     "shots": [5, 10], "repeats": 1}]}))
    args = ["run", str(pipe), "--out", "pipe", "-q"]
    proc = _lsm(args, world)
    first_step = lambda: any((world / "pipe" / "steps").glob("*/step.json")) \
        if (world / "pipe" / "steps").exists() else False  # noqa: E731
    _wait_for(first_step, proc, 600)
    os.killpg(proc.pid, sig)
    rc = proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err
    if sig == signal.SIGINT and rc != 0:
        assert rc == 130 and "interrupted" in err, (rc, err[-1000:])
    done_before = {p.parent.name for p in (world / "pipe" / "steps").glob("*/step.json")}

    rerun = _lsm(args, world)
    out, err = rerun.communicate()
    assert rerun.returncode == 0, err[-2000:]
    meta = json.loads((world / "pipe" / "pipeline.json").read_text())
    status = {s["name"]: s["status"] for s in meta["steps"]}
    assert all(status[name] == "reused" for name in done_before), (done_before, status)
    assert all(st in ("ran", "reused") for st in status.values()), status
    assert not no_temp_files(world / "pipe")


# ---------------------------------------------------------------------------
# help texts


@pytest.mark.parametrize("command", ["fit", "finetune", "predict", "explain", "run", "stack"])
def test_help_has_no_type_noise(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "<bool>" not in text
    assert "--help" in text


def test_unknown_family_names_the_option_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--model", "svm"]) == 2
    err = capsys.readouterr().err
    assert "'svm'" in err and err.count("--model") == 1 + err.count("lsm fit --help")


def test_regions_descriptions_end_on_a_word(capsys: pytest.CaptureFixture[str]) -> None:
    from lsm.config.spec import builtin_regions, builtin_spec_dir, load_yaml

    assert main(["regions"]) == 0
    raw = capsys.readouterr().out
    text = " ".join(raw.split())
    for name in builtin_regions():
        p = builtin_spec_dir() / f"{name}.yaml"
        if not p.exists():
            continue
        words = str(load_yaml(p).get("description", "")).split()
        shown = " ".join(words[:6])
        assert shown[:40] in text
    # a cut description ends with a whole word and an ellipsis, never half a word
    cut = [ln for ln in raw.splitlines() if "…" in ln]
    assert cut, "expected at least one long description to be shortened"
    assert all(" …" in ln for ln in cut), cut
