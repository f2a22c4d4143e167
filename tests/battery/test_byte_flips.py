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

from lsm.errors import ArtifactError


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
