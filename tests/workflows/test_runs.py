"""Run folders: what ``load_run`` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsm.errors import ArtifactError
from lsm.workflows.runs import FORMAT_VERSION, load_run


@pytest.mark.parametrize("region", ["../../../../X", "a/b", ".."])
def test_run_region_that_would_leave_its_folder_is_refused(region: str, tmp_path: Path) -> None:
    """A run's region names the next run's folder and its map files."""
    (tmp_path / "model.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "region": region, "families": []}))
    with pytest.raises(ArtifactError, match=r"model\.json: region: .*single file name"):
        load_run(tmp_path)


def test_plain_run_region_loads(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps(
        {"format": FORMAT_VERSION, "region": "demo-source", "families": []}))
    assert load_run(tmp_path).region == "demo-source"
