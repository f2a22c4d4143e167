"""Shared runs of the battery: built once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lsm.cli import main


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """A fit run (all four families) and a fine-tune run (lr + delivered), no maps."""
    root = tmp_path_factory.mktemp("tamper-base")
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("tamper-cache")))
    try:
        assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model",
                     "rf,lr,xgb,mlp", "--out", str(root / "src"), "--no-cv", "--no-explain",
                     "--no-predict", "-q"]) == 0
        assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                     str(root / "src"), "--model", "lr", "--shots", "15", "--repeats", "2",
                     "--out", str(root / "ft"), "--no-explain", "--no-predict", "-q"]) == 0
    finally:
        mp.undo()
    return root


@pytest.fixture
def world(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the requesting module's ``base`` as the working folder."""
    w = tmp_path / "world"
    shutil.copytree(base, w)
    monkeypatch.chdir(w)
    monkeypatch.setenv("LSM_CACHE", str(tmp_path / "cache"))
    return w
