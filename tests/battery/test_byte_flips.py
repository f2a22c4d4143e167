"""Every byte of every file a run's manifest covers is protected: one flipped byte, at a
seeded random offset of each covered file (model.json, metrics.json, the training table,
every model file, the fine-tune's kept source models and extras), makes the run refuse to
load with one line naming that file. Nothing is re-signed here: this is the checksum
layer alone (tests/battery/test_tampered_values.py tampers values and re-signs)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from lsm.cli import main
from lsm.errors import ArtifactError


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("flip-base")
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("flip-cache")))
    try:
        assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model",
                     "lr,xgb", "--out", str(root / "src"), "--no-cv", "--no-explain",
                     "--no-predict", "-q"]) == 0
        assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                     str(root / "src"), "--model", "lr", "--shots", "15", "--repeats", "2",
                     "--out", str(root / "ft"), "--no-explain", "--no-predict", "-q"]) == 0
    finally:
        mp.undo()
    return root


@pytest.mark.parametrize("which", ["src", "ft"])
def test_every_covered_file_refuses_a_flipped_byte(which: str, runs: Path,
                                                   tmp_path: Path) -> None:
    from lsm.io.artifacts import manifest_entries
    from lsm.workflows.runs import load_run

    base = runs / which
    covered = sorted(manifest_entries(base / "manifest.json"))
    assert any(k.startswith("model/") for k in covered) and "model.json" in covered
    if which == "ft":
        assert any(k.startswith("source_model/") for k in covered)
    rng = random.Random(f"flip-{which}")
    for i, rel in enumerate(covered):
        run = tmp_path / f"{i}" / "run"
        shutil.copytree(base, run, ignore=shutil.ignore_patterns(".lsm.lock"))
        p = run / rel
        data = bytearray(p.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(data))
        with pytest.raises(ArtifactError) as err:
            load_run(run)
        msg = str(err.value)
        assert "\n" not in msg and rel.split("/")[-1] in msg, (rel, at, msg)
