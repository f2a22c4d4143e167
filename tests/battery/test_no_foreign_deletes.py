"""lsm never deletes a file it did not write, in the places that replace whole folders:
a pipeline step redone and the demo generator's folders (found after the ownership
ledger landed: both removed a folder wholesale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lsm.errors import ArtifactError


def _ledger(root: Path, files: list[str], kind: str = "pipeline") -> None:
    (root / ".lsm-owned.json").write_text(json.dumps({"format": 1, "kind": kind,
                                                      "files": files}))


def test_a_step_folder_with_a_user_file_is_never_deleted(tmp_path: Path) -> None:
    from lsm.workflows.owned import foreign_files, remove_owned_tree

    top = tmp_path / "pipe"
    step = top / "steps" / "fit-a"
    (step / "model" / "lr").mkdir(parents=True)
    (step / "model" / "lr" / "coef.json").write_text("{}")
    (step / "step.json").write_text("{}")
    _ledger(top, ["steps/fit-a/step.json"])           # the pipeline's own record
    _ledger(step, ["model/lr/coef.json"], kind="fit")  # the run's own ledger
    (step / "notes.txt").write_text("mine")
    assert foreign_files(step, top=top) == [step / "notes.txt"]
    with pytest.raises(ArtifactError, match="notes.txt: not written by lsm"):
        remove_owned_tree(step, top=top)
    assert (step / "notes.txt").read_text() == "mine"
    assert (step / "model" / "lr" / "coef.json").exists()
    (step / "notes.txt").unlink()
    remove_owned_tree(step, top=top)
    assert not step.exists()


def test_a_file_listed_by_no_ledger_above_the_top_is_foreign(tmp_path: Path) -> None:
    from lsm.workflows.owned import foreign_files

    outer = tmp_path / "outer"
    top = outer / "pipe"
    step = top / "steps" / "s"
    step.mkdir(parents=True)
    (step / "a.txt").write_text("x")
    _ledger(outer, ["pipe/steps/s/a.txt"])  # a ledger above the top does not count
    assert foreign_files(step, top=top) == [step / "a.txt"]


def test_the_demo_never_replaces_a_user_folder_of_the_same_name(tmp_path: Path) -> None:
    from lsm.datasets.demo import ensure_demo

    out = tmp_path / "project"
    (out / "source").mkdir(parents=True)
    (out / "source" / "survey.tif").write_bytes(b"user data")
    (out / "readme.txt").write_text("the user's")
    with pytest.raises(ArtifactError, match="source: exists and was not written by lsm"):
        ensure_demo(out)
    assert (out / "source" / "survey.tif").read_bytes() == b"user data"
    assert sorted(p.name for p in out.iterdir()) == ["readme.txt", "source"]
