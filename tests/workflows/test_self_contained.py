"""Runs are self-contained: whatever folder lsm runs in and wherever the run lies, a map of
"the run's region" comes from the region the run was trained in, or is refused with one
line; nothing outside a run is read when it is loaded (issue 15, classes 2 and 8).

The world: a user's spec ``proj/mine.yaml`` whose region is named ``demo-target`` (the
name of a built-in region with other data) over the demo source data, fitted from
``proj/`` with relative paths; a decoy ``mine.yaml`` of the same name over other data in
another folder. Cases draw working folders, run locations (original, copied), relative or
absolute ``--run`` and ``--region`` choices from a seeded generator.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from lsm.cli import main
from lsm.errors import ArtifactError

NAME = "demo-target"  # the user's region name: also a built-in region (other data)


def _spec(src: Path, dst: Path, *, name: str = NAME, data: str = "source",
          absolute: Path | None = None) -> Path:
    """``src`` (a demo spec) renamed, reading ``data/`` (relative) or ``absolute/``."""
    spec = yaml.safe_load(src.read_text())
    spec["name"] = name
    base = str(absolute) if absolute is not None else data
    for f in spec["factors"].values():
        f["path"] = f"{base}/{Path(f['path']).name}"
    spec["inventory"]["path"] = f"{base}/{Path(spec['inventory']['path']).name}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(spec, sort_keys=False))
    return dst


def _probability(folder: Path) -> np.ndarray:
    import rasterio

    (tif,) = sorted(Path(folder).glob("*_probability.tif"))
    with rasterio.open(tif) as src:
        return src.read(1, masked=True).filled(np.nan)


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:") or "Error:" in ln]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("selfc")
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(root / "cache"))
    mp.setenv("LSM_DEMO_DIR", str(root / "builtin-demo"))  # the built-in demo-target
    shutil.copytree(demo_dir, root / "builtin-demo")
    proj = root / "proj"
    shutil.copytree(demo_dir / "source", proj / "source")
    _spec(demo_dir / "demo-source.yaml", proj / "mine.yaml")
    # a decoy: same file name and region name, other data, in another folder
    decoy = root / "decoy"
    shutil.copytree(demo_dir / "target", decoy / "target")
    _spec(demo_dir / "demo-target.yaml", decoy / "mine.yaml", data="target")
    # the same region (same data, same settings) in a spec elsewhere, by absolute paths
    same = _spec(demo_dir / "demo-source.yaml", root / "elsewhere" / "same.yaml",
                 absolute=proj / "source")
    try:
        mp.chdir(proj)
        assert main(["fit", "--source", "mine.yaml", "--out", "runs/mine", "--model", "lr",
                     "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
        # the reference map: made where the run was trained, from its own spec
        assert main(["predict", "--run", "runs/mine", "--out", str(root / "ref"), "-q",
                     "--uncertainty", "0"]) == 0
    finally:
        mp.undo()
    yield {"root": root, "proj": proj, "run": proj / "runs" / "mine", "decoy": decoy,
           "same": same, "ref": _probability(root / "ref")}


CWDS = ("root", "proj", "decoy", "run")
WHERE = ("original", "copy")
NAMING = ("absolute", "relative")
REGIONS = (None, "builtin", "same", "decoy")
#: Seeded draws from every combination (the whole product would take minutes).
CASES = random.Random(15).sample(list(itertools.product(CWDS, WHERE, NAMING, REGIONS)), 10)


@pytest.mark.parametrize(("cwd", "where", "naming", "region"), CASES)
def test_a_map_comes_from_the_runs_own_region_or_is_refused(
        world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], cwd: str, where: str, naming: str,
        region: str | None) -> None:
    root = world["root"]
    monkeypatch.setenv("LSM_CACHE", str(root / "cache"))
    monkeypatch.setenv("LSM_DEMO_DIR", str(root / "builtin-demo"))
    run = world["run"]
    if where == "copy":
        run = tmp_path / "moved" / "mine"
        shutil.copytree(world["run"], run, ignore=shutil.ignore_patterns(".lsm.lock"))
    folder = {"root": root, "proj": world["proj"], "decoy": world["decoy"], "run": run}[cwd]
    monkeypatch.chdir(folder)
    run_arg = str(run) if naming == "absolute" else os.path.relpath(run, folder)
    out = tmp_path / "maps"
    argv = ["predict", "--run", run_arg, "--out", str(out), "-q", "--uncertainty", "0"]
    if region is not None:
        argv += ["--region", {"builtin": NAME, "same": str(world["same"]),
                              "decoy": str(world["decoy"] / "mine.yaml")}[region]]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    if region in (None, "same"):
        assert rc == 0, err[-600:]
        np.testing.assert_array_equal(_probability(out), world["ref"])
    else:  # the name stands for other data: one line, nothing mapped
        assert rc != 0
        lines = _error_lines(err)
        assert len(lines) == 1 and NAME in lines[0] and "Traceback" not in err, err[-600:]
        assert not list(out.glob("*_probability.tif"))


def test_changed_data_of_the_runs_region_is_refused(world: dict[str, Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The spec's folder still exists, but a factor file was replaced after training."""
    proj = tmp_path / "proj"
    shutil.copytree(world["proj"] / "source", proj / "source")
    shutil.copy(world["proj"] / "mine.yaml", proj / "mine.yaml")
    monkeypatch.setenv("LSM_DEMO_DIR", str(world["root"] / "builtin-demo"))
    monkeypatch.chdir(proj)
    assert main(["fit", "--source", "mine.yaml", "--out", "runs/mine", "--model", "lr",
                 "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    import rasterio

    tif = proj / "source" / "rainfall.tif"
    with rasterio.open(tif, "r+") as dst:
        a = dst.read(1)
        dst.write(a[::-1].copy(), 1)
    capsys.readouterr()
    rc = main(["predict", "--run", "runs/mine", "-q", "--uncertainty", "0"])
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert rc != 0 and len(lines) == 1 and "rainfall" in lines[0], err[-600:]
    assert not (proj / "runs" / "mine" / "maps").exists()


def test_pooled_run_marks_its_training_landslides_seen(demo_dir: Path, tmp_path: Path) -> None:
    """A map of a pooled run over one of its regions: the landslides of that region it was
    trained on are 'seen' (success rate), not unseen (a prediction rate)."""
    out = tmp_path / "pooled"
    assert main(["fit", "--source", f"{demo_dir / 'demo-source.yaml'},"
                 f"{demo_dir / 'demo-target.yaml'}", "--model", "lr", "--out", str(out),
                 "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    maps = tmp_path / "maps"
    assert main(["predict", "--run", str(out), "--region", str(demo_dir / "demo-target.yaml"),
                 "--out", str(maps), "-q", "--uncertainty", "0"]) == 0
    res = json.loads(next(maps.glob("*_zones.json")).read_text())
    import pandas as pd

    table = pd.read_parquet(out / "training_table.parquet")
    n_train = int(((table["region"] == "demo-target") & (table["label"] == 1)).sum())
    assert n_train > 0
    assert res["n_seen_landslides"] == n_train and res["n_unseen_landslides"] == 0
    assert res["prediction_rate_auc"] is None and res["success_rate_auc"] is not None


def _record_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path opened through Python's ``open`` (pathlib and numpy included)."""
    import builtins

    seen: list[str] = []
    real = io.open

    def spy(file: Any, *a: Any, **k: Any) -> Any:
        if isinstance(file, (str, os.PathLike)):
            seen.append(os.path.abspath(os.fspath(file)))
        return real(file, *a, **k)

    monkeypatch.setattr(io, "open", spy)
    monkeypatch.setattr(builtins, "open", spy)
    return seen


def test_explain_compares_with_the_source_the_run_was_tuned_from(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shift figure of a fine-tune run compares with its own source models, not with a
    ``runs/src`` of the current folder; its source run may be gone."""
    monkeypatch.setenv("LSM_DEMO_DIR", str(tmp_path / "builtin-demo"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--out", "runs/src",
                 "--model", "lr", "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                 "runs/src", "--model", "lr", "--shots", "10", "--repeats", "1", "--out",
                 "runs/ft", "--no-explain", "--no-predict", "-q"]) == 0
    ft = work / "runs" / "ft"
    assert main(["explain", "--run", "runs/ft", "-q"]) == 0
    ref = json.loads((ft / "shap.json").read_text())
    fams = [f for f, e in ref.items() if "source_importance" in e]
    assert fams, ref.keys()
    # the source run is gone; another folder holds a different runs/src
    shutil.rmtree(work / "runs" / "src")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["fit", "--source", str(demo_dir / "demo-target.yaml"), "--out", "runs/src",
                 "--model", "lr", "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    opened = _record_opens(monkeypatch)
    assert main(["explain", "--run", str(ft), "-q"]) == 0
    monkeypatch.undo()
    got = json.loads((ft / "shap.json").read_text())
    for f in fams:
        assert got[f]["source_importance"] == pytest.approx(ref[f]["source_importance"])
    outside = [p for p in opened if p.startswith(str(other / "runs")) or
               p.startswith(str(work / "runs" / "src"))]
    assert not outside, outside[:3]


# ---------------------------------------------------------------------------
# stored paths that lead out of a run or model folder


def _delivered(tmp_path: Path) -> tuple[Path, Any]:
    import pandas as pd

    from lsm.models.delivered import DeliveredModel
    from lsm.models.lr import LogisticModel

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(size=80) > 0).astype(int).to_numpy()
    lr = LogisticModel().fit(X, y)
    model = DeliveredModel.assemble(strategy="recal(lr)", members={"source": lr},
                                    weights={"source": 1.0}, intercept=0.0, n_features=3,
                                    feature_names=list(X.columns))
    d = tmp_path / "delivered"
    model.save(d)
    return d, X


def _resign(folder: Path) -> None:
    """What an attacker who knows the format does: recompute the folder's manifest over
    every file it can reach (through links too)."""
    from lsm.io.artifacts import write_manifest

    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    for link in [p for p in folder.rglob("*") if p.is_symlink() and p.is_dir()]:
        files += [p for p in sorted(link.rglob("*")) if p.is_file()]
    write_manifest(folder, files)


HOSTILE = ("../outside", "{abs}", "x/../../../outside", "..", "members", "", "./source",
           "source/../../../outside")


@pytest.mark.parametrize("name", [*HOSTILE, "<symlink>", "<unlisted>"])
def test_delivered_member_paths_stay_inside_the_model(tmp_path: Path, name: str) -> None:
    from lsm.io.artifacts import read_json, write_json
    from lsm.models.base import load_model

    d, X = _delivered(tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(d / "members" / "source", outside)  # a valid member, outside the folder
    head = read_json(d / "head.json")
    if name == "<symlink>":
        shutil.rmtree(d / "members" / "source")
        (d / "members" / "source").symlink_to(outside, target_is_directory=True)
    elif name == "<unlisted>":  # dropped in beside the members, not in the manifest
        shutil.copytree(outside, d / "members" / "extra")
        head["members"]["extra"] = head["members"].pop("source")
        head["weights"]["extra"] = head["weights"].pop("source")
    else:
        bad = name.format(abs=outside)
        head["members"][bad] = head["members"].pop("source")
        head["weights"][bad] = head["weights"].pop("source")
    write_json(d / "head.json", head)
    if name != "<unlisted>":
        _resign(d)
    else:
        from lsm.io.artifacts import manifest_entries, write_manifest

        listed = manifest_entries(d / "manifest.json")
        write_manifest(d, [d / k for k in listed])  # head.json's new checksum only
    with pytest.raises(ArtifactError, match=re.escape(str(d))) as info:
        load_model(d)
    assert "\n" not in str(info.value)


def test_a_plain_delivered_model_still_loads(tmp_path: Path) -> None:
    from lsm.models.base import load_model

    d, X = _delivered(tmp_path)
    back = load_model(d)
    assert back.predict_proba(X).shape == (80, 2)


def test_run_entries_that_lead_outside_are_refused(world: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """A run manifest entry or a model family of ``model.json`` naming a file or folder
    outside the run, even a valid one with matching checksums, is refused."""
    from lsm.io.artifacts import manifest_entries, read_json, write_json, write_manifest
    from lsm.workflows.runs import load_run

    base = tmp_path / "runs" / "mine"
    shutil.copytree(world["run"], base, ignore=shutil.ignore_patterns(".lsm.lock"))
    shutil.copytree(base / "model" / "lr", tmp_path / "runs" / "lr")  # outside the run

    def resign(run: Path, extra: list[str] = ()) -> None:
        listed = [k for k in manifest_entries(run / "manifest.json")]
        write_manifest(run, [run / k for k in [*listed, *extra]])

    # 1. model.json names a family folder outside the run
    run = tmp_path / "a" / "mine"
    shutil.copytree(base, run)
    shutil.copytree(tmp_path / "runs" / "lr", tmp_path / "a" / "lr")
    meta = read_json(run / "model.json")
    meta["families"] = ["../../lr"]
    write_json(run / "model.json", meta)
    resign(run)
    with pytest.raises(ArtifactError, match="outside|inside|run's model folder"):
        load_run(run)
    # 2. the manifest lists a file outside the run (its checksum matches)
    run = tmp_path / "b" / "mine"
    shutil.copytree(base, run)
    (tmp_path / "b" / "secret.txt").write_text("not the run's")
    resign(run, ["../secret.txt"])
    with pytest.raises(ArtifactError, match="outside|inside"):
        load_run(run)
    # 3. a model folder that is a link to a folder outside the run
    run = tmp_path / "c" / "mine"
    shutil.copytree(base, run)
    shutil.rmtree(run / "model" / "lr")
    (run / "model" / "lr").symlink_to(tmp_path / "runs" / "lr", target_is_directory=True)
    resign(run)
    with pytest.raises(ArtifactError, match="outside"):
        load_run(run)
    load_run(base)  # the untouched copy loads


# ---------------------------------------------------------------------------
# the mechanism: one helper resolves every stored name


def test_inside_never_returns_a_path_outside_its_folder(tmp_path: Path) -> None:
    """Random stored names (plain, '..', '.', empty parts, absolute, links in and out):
    :func:`inside` returns a path that resolves inside the folder, or refuses."""
    from lsm.io.paths import inside

    root = tmp_path / "run"
    (root / "model" / "lr").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "out-link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "in-link").symlink_to(root / "model", target_is_directory=True)
    parts = ["model", "lr", "..", ".", "", "out-link", "in-link", "x", str(tmp_path), "\\"]
    rng = random.Random(8)
    refused = 0
    for _ in range(400):
        rel = "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4)))
        try:
            p = inside(root, rel)
        except ArtifactError as err:
            refused += 1
            assert "\n" not in str(err)
            continue
        assert p.resolve().is_relative_to(root.resolve()), rel
    assert 0 < refused < 400
    assert inside(root, "in-link/lr") == root / "in-link" / "lr"


def test_a_finetune_counts_landslides_its_sources_trained_on_as_seen(
        demo_dir: Path, tmp_path: Path) -> None:
    """A fine-tune mapped over a region its (pooled) source was trained on, its own target
    included: every landslide there was seen by the source models."""
    from lsm.config.spec import load_region
    from lsm.workflows.predict import _seen_landslides
    from lsm.workflows.runs import Run

    spec = load_region(demo_dir / "demo-target.yaml")
    rows, cols = np.arange(5), np.arange(5)
    meta = {"kind": "finetune", "region": "demo-target", "delivered": "delivered",
            "chain": ["demo-source+demo-target", "demo-target"],
            "source_regions": ["demo-source", "demo-target"], "shots": "all"}
    for family in ("delivered", "lr"):
        assert _seen_landslides(Run(tmp_path, meta, {}), family, spec, rows, cols).all()
    # a region the run never saw: nothing is seen
    other = load_region(demo_dir / "demo-source.yaml").model_copy(update={"name": "other"})
    assert not _seen_landslides(Run(tmp_path, meta, {}), "lr", other, rows, cols).any()
