"""Run folders: what ``load_run`` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsm.errors import ArtifactError
from lsm.io.artifacts import write_manifest
from lsm.workflows.runs import FORMAT_VERSION, load_run


def _run_folder(path: Path, meta: dict) -> Path:
    """A minimal run folder with a run manifest (no families)."""
    (path / "model.json").write_text(json.dumps(meta))
    (path / "metrics.json").write_text("{}")
    (path / "model" / "x").mkdir(parents=True)
    (path / "model" / "x" / "meta.json").write_text("{}")
    write_manifest(path, [path / "model.json", path / "metrics.json",
                          path / "model" / "x" / "meta.json"])
    return path


@pytest.mark.parametrize("region", ["../../../../X", "a/b", ".."])
def test_run_region_that_would_leave_its_folder_is_refused(region: str, tmp_path: Path) -> None:
    """A run's region names the next run's folder and its map files."""
    _run_folder(tmp_path, {"format": FORMAT_VERSION, "region": region, "families": []})
    with pytest.raises(ArtifactError, match=r"model\.json: region: .*single file name"):
        load_run(tmp_path)


def test_plain_run_region_loads(tmp_path: Path) -> None:
    """A plain region name passes its check; this minimal run is then refused for what it
    lacks (every value of model.json is checked: tests/battery/test_tampered_values.py)."""
    _run_folder(tmp_path, {"format": FORMAT_VERSION, "region": "demo-source",
                           "families": []})
    with pytest.raises(ArtifactError, match=r"model\.json: kind: None is not one of"):
        load_run(tmp_path)
