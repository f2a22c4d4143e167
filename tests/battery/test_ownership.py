"""lsm deletes or replaces only files it wrote; a folder it does not own is refused.

Cases: a non-empty ``--out`` that is not an lsm run (or not one of the same kind) is
refused with one line and left untouched; ``--out`` equal to ``--from`` or inside it is
refused; a folder another process holds is refused by ``explain`` too; a table region's
second ``predict`` replaces its whole set (Parquet, CSV, GeoPackage with the spec's CRS,
``zones.json``); and random user files in random places of an lsm folder survive every
writing command unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lsm.cli import main


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name != ".lsm.lock"}


def _table_region(folder: Path, name: str, *, n: int, seed: int, crs_at_top: bool) -> Path:
    rng = np.random.default_rng(seed)
    slope, rain = rng.uniform(0, 45, n), rng.normal(1500, 300, n)
    z = 0.12 * (slope - 22) + 0.004 * (rain - 1500)
    pd.DataFrame({"slp": slope, "rain": rain,
                  "landslide": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int),
                  "X": 600_000 + rng.uniform(0, 5000, n),
                  "Y": 4_000_000 + rng.uniform(0, 5000, n)}).to_csv(folder / f"{name}.csv",
                                                                   index=False)
    samples = {"path": {"path": f"{name}.csv"}, "label": "landslide", "x": "X", "y": "Y"}
    spec: dict = {"name": name, "samples": samples,
                  "factors": {"slope": {"column": "slp"}, "rainfall": {"column": "rain"}},
                  "folds": {"n_folds": 3, "block_size": 1000}}
    if crs_at_top:
        spec["crs"] = "EPSG:32650"
    else:
        samples["crs"] = "EPSG:32650"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("own-base")
    shutil.copytree(demo_dir, root / "demo")
    _table_region(root, "tab", n=300, seed=3, crs_at_top=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("own-cache")))
    mp.chdir(root)
    try:
        for argv in (
            ["fit", "--source", "demo/demo-source.yaml", "--model", "lr", "--no-cv",
             "--out", "runs/src", "-q"],
            ["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
             "--model", "lr", "--shots", "10", "--repeats", "1", "--no-explain",
             "--no-predict", "--out", "runs/ft", "-q"],
            ["fit", "--source", "tab.yaml", "--model", "lr", "--no-cv", "--no-explain",
             "--out", "runs/tab", "-q"],
        ):
            assert main(argv) == 0, argv
    finally:
        mp.undo()
    return root


def _one_error(capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-800:]
    assert re.search(pattern, " ".join(err.split())), (pattern, err[-800:])


FIT = ["fit", "--source", "demo/demo-source.yaml", "--model", "lr", "--no-cv", "-q"]


def test_fit_into_a_folder_that_is_not_a_run_is_refused(world: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """The issue's case: the user's report.md, figures/photo.png and maps/survey.tif."""
    proj = world / "project"
    for rel in ("report.md", "figures/photo.png", "maps/survey.tif"):
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(rel)
    before = tree(proj)
    capsys.readouterr()
    assert main([*FIT, "--out", "project"]) == 2
    _one_error(capsys, r"project: not empty and not an lsm fit folder")
    assert tree(proj) == before


@pytest.mark.parametrize("argv, out, pattern", [
    (FIT, "runs/ft", r"runs/ft: holds an lsm finetune run, not a fit one"),
    (["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src", "--model", "lr",
      "--shots", "10", "--repeats", "1", "-q"], "runs/tab",
     r"runs/tab: holds an lsm fit run, not a finetune one"),
    (["predict", "--run", "runs/src", "-q"], "runs/ft",
     r"runs/ft: holds an lsm finetune run, not a maps one"),
    (["tune", "--source", "demo/demo-source.yaml", "--model", "lr", "--trials", "1", "-q"],
     "runs/src", r"runs/src: holds an lsm fit run, not a tune one"),
])
def test_out_of_another_kind_is_refused(argv: list[str], out: str, pattern: str,
                                        world: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(world)
    capsys.readouterr()
    assert main([*argv, "--out", out]) == 2
    _one_error(capsys, pattern)
    assert tree(world) == before


@pytest.mark.parametrize("out, pattern", [
    ("runs/src", r"runs/src: is the run given by --from"),
    ("runs/src/", r"runs/src/?: is the run given by --from"),
    ("runs/src/sub", r"runs/src/sub: is inside the run given by --from"),
    ("runs/../runs/src/model", r"is inside the run given by --from"),
])
def test_finetune_out_in_its_source_run_is_refused(out: str, pattern: str, world: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: --out equal to --from turned the fit run into a fine-tune run."""
    before = tree(world)
    capsys.readouterr()
    rc = main(["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
               "--model", "lr", "--shots", "10", "--repeats", "1", "--out", out, "-q"])
    assert rc == 2
    _one_error(capsys, pattern)
    assert tree(world) == before


@contextlib.contextmanager
def _held(folder: Path) -> Iterator[int]:
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


def test_explain_claims_the_run(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """explain writes into the run: while a fit holds it, explain stops with one line and
    writes nothing (no SHAP figures of models the finished run will not contain)."""
    before = tree(world / "runs" / "src")
    with _held(world / "runs" / "src") as pid:
        capsys.readouterr()
        assert main(["explain", "--run", "runs/src", "-q"]) == 2
        _one_error(capsys, rf"runs/src: in use by another lsm process \(pid {pid}\)")
    assert tree(world / "runs" / "src") == before
    assert main(["explain", "--run", "runs/src", "-q"]) == 0


def test_refit_keeps_user_files_and_drops_the_old_runs_outputs(world: Path) -> None:
    """The old run's maps, figures and report go with it; the user's files stay."""
    run = world / "runs" / "src"
    user = {"maps/survey.tif": b"s", "figures/photo.png": b"p", "notes.md": b"n",
            "mine/deep/file.txt": b"f"}
    for rel, data in user.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    old_maps = sorted(p.name for p in (run / "maps").glob("demo-source_lr_*"))
    assert old_maps
    assert main([*FIT[:4], "xgb", "--no-cv", "--no-predict", "--no-explain", "--out",
                 "runs/src", "-q"]) == 0
    for rel, data in user.items():
        assert (run / rel).read_bytes() == data
    assert not list((run / "maps").glob("demo-source_lr_*")), "old maps beside new models"
    assert not (run / "report.md").exists() and not list((run / "figures").glob("shap_*"))
    assert not (run / "model" / "lr").exists()


def test_a_user_file_where_lsm_would_write_is_refused(world: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """A file lsm did not write, at a path lsm writes (here a figure), is never replaced."""
    run = world / "runs" / "src"
    (run / "figures" / "shap_importance_lr.png").unlink()
    import json

    led = json.loads((run / ".lsm-owned.json").read_text())
    led["files"].remove("figures/shap_importance_lr.png")
    (run / ".lsm-owned.json").write_text(json.dumps(led))
    (run / "figures" / "shap_importance_lr.png").write_bytes(b"the user's own figure")
    capsys.readouterr()
    assert main(["explain", "--run", "runs/src", "-q"]) != 0
    _one_error(capsys, r"shap_importance_lr\.png: exists and was not written by lsm")
    assert (run / "figures" / "shap_importance_lr.png").read_bytes() == b"the user's own figure"


def test_table_predict_replaces_its_whole_set_and_the_gpkg_has_the_crs(world: Path) -> None:
    """The issue's case: a second predict with other options rewrote the Parquet but left
    the GeoPackage and zones.json of the first. Now each set is one unit whose
    zones.json records every file's checksum; the GeoPackage carries the spec's CRS."""
    import geopandas as gpd

    from lsm.workflows.predict import check_map_set

    maps = world / "runs" / "tab" / "maps"
    assert main(["predict", "--run", "runs/tab", "--uncertainty", "2", "-q"]) == 0
    first = tree(maps)
    assert main(["predict", "--run", "runs/tab", "--prevalence", "0.2", "--uncertainty",
                 "0", "-q"]) == 0
    second = tree(maps)
    doc = check_map_set(maps / "tab_lr_zones.json")
    assert set(doc["set_files"]) == {"tab_lr_units.parquet", "tab_lr_units.csv",
                                     "tab_lr_units.gpkg"}
    for name in doc["set_files"]:
        assert first[name] != second[name], name
    table = pd.read_parquet(maps / "tab_lr_units.parquet")
    assert "uncertainty" not in table
    gdf = gpd.read_file(maps / "tab_lr_units.gpkg")
    assert "uncertainty" not in gdf and gdf.crs is not None and gdf.crs.to_epsg() == 32650


def test_a_map_set_that_does_not_match_its_zones_json_is_refused(world: Path) -> None:
    from lsm.errors import ArtifactError
    from lsm.workflows.predict import check_map_set

    assert main(["predict", "--run", "runs/tab", "-q"]) == 0
    maps = world / "runs" / "tab" / "maps"
    check_map_set(maps / "tab_lr_zones.json")
    (maps / "tab_lr_units.csv").write_text("unit,probability\n0,0.5\n")
    with pytest.raises(ArtifactError, match=r"tab_lr_units\.csv: not the file"):
        check_map_set(maps / "tab_lr_zones.json")


# ---------------------------------------------------------------------------
# random user files in random layouts: never deleted or changed

_PLACES = ["", "maps/", "figures/", "mine/", "mine/deep/", "maps/sub/", "figures/old/"]
_COMMANDS = [
    ["fit", "--source", "demo/demo-source.yaml", "--model", "lr", "--no-cv", "--no-explain",
     "--seed", "2", "--out", "runs/src", "-q"],
    ["predict", "--run", "runs/src", "--prevalence", "0.3", "-q"],
    ["predict", "--run", "runs/src", "--out", "runs/src/maps2", "-q"],
    ["predict", "--run", "runs/src", "--out", "elsewhere", "-q"],
    ["explain", "--run", "runs/src", "-q"],
    ["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src", "--model", "lr",
     "--shots", "10", "--repeats", "1", "--no-explain", "--no-predict", "--out", "runs/ft",
     "-q"],
]


@pytest.mark.parametrize("seed", range(8))
def test_random_user_files_survive_every_command(seed: int, world: Path) -> None:
    """User files (random names, random folders of runs/src, runs/ft and a maps --out)
    then a random sequence of writing commands: every user file is unchanged, and a
    command either succeeds or is refused with one line."""
    rng = random.Random(seed)
    user: dict[Path, bytes] = {}
    targets = [world / "runs" / "src", world / "runs" / "ft", world / "elsewhere"]
    for _ in range(rng.randint(3, 8)):
        folder = rng.choice(targets)
        ext = rng.choice([".tif", ".png", ".txt", ""])
        name = f"{rng.choice(_PLACES)}user_{rng.randrange(10**6)}{ext}"
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(0, 64))
        p.write_bytes(data)
        user[p] = data
    for argv in rng.sample(_COMMANDS, 3):
        rc = main(argv)
        assert rc in (0, 2), (argv, rc)
        for p, data in user.items():
            assert p.is_file() and p.read_bytes() == data, (argv, p)
