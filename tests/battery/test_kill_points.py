"""A SIGKILL at any point of a writing command leaves its folder all old or all new.

The harness runs each command once, in-process, with every filesystem mutation inside the
command's folder intercepted (``os.replace``, ``os.rename``, ``os.unlink``/``remove``,
``os.rmdir``, ``os.mkdir``, ``shutil.rmtree`` and ``open`` for writing). Before each
mutation the folder is copied: the copy is exactly what a SIGKILL at that point leaves on
disk (a killed process does nothing more; its memory does not matter). So one run gives
every kill point of the command, not a sample, at the cost of a folder copy each. A few
real SIGKILLs of a subprocess at a drawn mutation check that the copies model real kills.

Each kill state is then checked as a user would meet it:

- before any recovery: if the run loads, it is the old run or the new one (its manifest is
  one of the two), never a mix;
- after the next lsm command claims the folder (which completes a journaled commit and
  removes staging leftovers): no staging or temp file is left; every user file is
  unchanged; lsm's files are exactly the old ones, or a subset of the new ones in which
  every run loads and every map set matches its ``*_zones.json``; and lsm's ledger lists
  every file of lsm's in the folder.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from lsm.cli import main

#: lsm's bookkeeping in a folder: not part of the old/new comparison.
INTERNAL = {".lsm.lock", ".lsm-owned.json", ".lsm-commit.json"}
USER_FILES = {"user_notes.txt": b"my notes", "maps/user_survey.tif": b"survey",
              "figures/user_photo.png": b"photo", "user_dir/data.csv": b"a,b\n1,2\n"}
MIN_KILLS = 50


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` but lsm's bookkeeping."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in INTERNAL:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _junk(t: dict[str, str]) -> list[str]:
    return [k for k in t if any(part.startswith((".staging-", ".replaced-")) or ".tmp-" in part
                                for part in k.split("/"))]


# ---------------------------------------------------------------------------
# the harness


class KillPoints:
    """Copy ``root`` before every filesystem mutation inside it (see the module doc)."""

    def __init__(self, root: Path, snaps: Path) -> None:
        self.root = str(Path(root).resolve())
        self.snaps = Path(snaps)
        self.n = 0
        self.busy = False
        self.points: list[tuple[int, str, Path]] = []

    def _inside(self, p: Any) -> bool:
        if isinstance(p, int) or p is None:
            return False
        try:
            s = os.path.abspath(os.fspath(p))
        except TypeError:
            return False
        return s == self.root or s.startswith(self.root + os.sep)

    def hit(self, what: str, *paths: Any) -> None:
        if self.busy or not any(self._inside(p) for p in paths):
            return
        self.busy = True
        try:
            self.n += 1
            dest = self.snaps / f"{self.n:05d}"
            if os.path.isdir(self.root):
                shutil.copytree(self.root, dest, symlinks=True)
            else:
                dest.mkdir(parents=True)
            self.points.append((self.n, f"{what} {os.fspath(paths[0])}", dest))
        finally:
            self.busy = False

    @contextmanager
    def armed(self) -> Iterator[KillPoints]:
        saved: dict[tuple[Any, str], Any] = {}

        def patch(mod: Any, name: str, wrap: Callable[[Any], Any]) -> None:
            saved[(mod, name)] = getattr(mod, name)
            setattr(mod, name, wrap(getattr(mod, name)))

        def two(fn: Any, what: str) -> Any:
            def w(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
                self.hit(what, src, dst)
                return fn(src, dst, *a, **k)
            return w

        def one(fn: Any, what: str) -> Any:
            def w(path: Any, *a: Any, **k: Any) -> Any:
                if not k.get("dir_fd"):
                    self.hit(what, path)
                return fn(path, *a, **k)
            return w

        def opener(fn: Any) -> Any:
            def w(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
                m = k.get("mode", mode)
                if isinstance(m, str) and any(c in m for c in "wax+"):
                    self.hit(f"open({m})", file)
                return fn(file, mode, *a, **k)
            return w

        patch(os, "replace", lambda f: two(f, "replace"))
        patch(os, "rename", lambda f: two(f, "rename"))
        patch(os, "unlink", lambda f: one(f, "unlink"))
        patch(os, "remove", lambda f: one(f, "remove"))
        patch(os, "rmdir", lambda f: one(f, "rmdir"))
        patch(os, "mkdir", lambda f: one(f, "mkdir"))
        patch(shutil, "rmtree", lambda f: one(f, "rmtree"))
        original_open = builtins.open
        patch(builtins, "open", opener)
        io.open = builtins.open  # pathlib opens through io.open
        try:
            yield self
        finally:
            for (mod, name), fn in saved.items():
                setattr(mod, name, fn)
            io.open = original_open


def recover(folder: Path) -> None:
    """What the next lsm command on ``folder`` does first: claim it (completing a
    journaled commit, removing leftovers), here released again at once."""
    from lsm.workflows.runs import claim_run_dir, release_claims

    claim_run_dir(folder)
    release_claims()


def check_kill_state(snap: Path, old: dict[str, str], new: dict[str, str],
                     old_all: dict[str, str], *, where: str) -> str:
    """Assert the kill state ``snap`` is all old or all new; return which."""
    from lsm.errors import LsmError
    from lsm.workflows.owned import owned_files
    from lsm.workflows.predict import check_map_set
    from lsm.workflows.runs import load_run

    # before recovery: a run that loads is the old or the new one
    if (snap / "model.json").exists():
        try:
            load_run(snap)
        except LsmError:
            pass
        else:
            man = tree(snap).get("manifest.json")
            assert man in (old.get("manifest.json"), new.get("manifest.json")), \
                f"{where}: a run that loads with a manifest of neither run"
    recover(snap)
    t = tree(snap)
    assert not _junk(t), f"{where}: leftovers after recovery: {_junk(t)}"
    for rel in USER_FILES:
        assert t.get(rel) == old_all[rel], f"{where}: user file {rel} changed or deleted"
    mine = {k: v for k, v in t.items() if k not in USER_FILES}
    if mine == old:
        return "old"
    mixed = sorted(k for k, v in mine.items() if new.get(k) != v)
    assert not mixed, (f"{where}: files of neither the new set: "
                       f"{[(k, 'old' if old.get(k) == mine[k] else '?') for k in mixed]}")
    if "manifest.json" in mine:
        load_run(snap)
    for zj in snap.rglob("*_zones.json"):
        if zj.relative_to(snap).as_posix() in mine:
            check_map_set(zj)
    unlisted = sorted(set(mine) - owned_files(snap))
    assert not unlisted, f"{where}: lsm files its ledger does not list: {unlisted}"
    return "new"


# ---------------------------------------------------------------------------
# the world: demo regions, a fit run and a fine-tune run with maps, a table run


def _table_region(folder: Path, name: str, *, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    slope, rain = rng.uniform(0, 45, n), rng.normal(1500, 300, n)
    z = 0.12 * (slope - 22) + 0.004 * (rain - 1500)
    df = pd.DataFrame({"slp": slope, "rain": rain,
                       "landslide": (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int),
                       "X": 600_000 + rng.uniform(0, 5000, n),
                       "Y": 4_000_000 + rng.uniform(0, 5000, n)})
    df.to_csv(folder / f"{name}.csv", index=False)
    spec = {"name": name, "samples": {"path": {"path": f"{name}.csv"}, "label": "landslide",
                                      "x": "X", "y": "Y", "crs": "EPSG:32650"},
            "factors": {"slope": {"column": "slp"}, "rainfall": {"column": "rain"}},
            "folds": {"n_folds": 3, "block_size": 1000}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("kill-base")
    shutil.copytree(demo_dir, root / "demo")
    _table_region(root, "tab", n=300, seed=3)
    mp = pytest.MonkeyPatch()
    mp.setenv("LSM_CACHE", str(tmp_path_factory.mktemp("kill-cache")))
    mp.chdir(root)
    try:
        for argv in (
            ["fit", "--source", "demo/demo-source.yaml", "--model", "lr", "--no-cv",
             "--out", "runs/src", "-q"],
            ["finetune", "--target", "demo/demo-target.yaml", "--from", "runs/src",
             "--model", "lr", "--shots", "10", "--repeats", "1", "--no-explain",
             "--out", "runs/ft", "-q"],
            ["fit", "--source", "tab.yaml", "--model", "lr", "--no-cv", "--no-explain",
             "--out", "runs/tab", "-q"],
            ["predict", "--run", "runs/src", "--out", "mapsout", "-q"],
        ):
            assert main(argv) == 0, argv
    finally:
        mp.undo()
    return root


def _plant_user_files(folder: Path) -> None:
    for rel, data in USER_FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)


#: name -> (folder written, argv, preparation of the old state)
COMMANDS: dict[str, tuple[str, list[str], Callable[[Path], None] | None]] = {
    "fit": ("runs/src", ["fit", "--source", "demo/demo-source.yaml", "--model", "xgb",
                         "--no-cv", "--seed", "1", "--out", "runs/src", "-q"], None),
    "finetune": ("runs/ft", ["finetune", "--target", "demo/demo-target.yaml", "--from",
                             "runs/src", "--model", "lr", "--shots", "12", "--repeats", "1",
                             "--out", "runs/ft", "-q"], None),
    "predict": ("runs/src", ["predict", "--run", "runs/src", "--prevalence", "0.1",
                             "--uncertainty", "2", "-q"], None),
    "predict-out": ("mapsout", ["predict", "--run", "runs/src", "--prevalence", "0.2",
                                "--uncertainty", "2", "--out", "mapsout", "-q"], None),
    "predict-table": ("runs/tab", ["predict", "--run", "runs/tab", "--prevalence", "0.2",
                                   "--uncertainty", "2", "-q"], None),
    "explain": ("runs/src", ["explain", "--run", "runs/src", "--shap-maps", "--top", "3",
                             "-q"], None),
}


def _old_shap_differs(folder: Path) -> None:
    """Make the previous SHAP outputs differ from what explain writes (lsm's own files,
    as an earlier lsm version would have written them)."""
    for p in [*folder.glob("figures/shap_*"), folder / "shap.json"]:
        p.write_bytes(p.read_bytes() + b" ")


COMMANDS["explain"] = (*COMMANDS["explain"][:2], _old_shap_differs)


def _run_with_kill_points(world: Path, name: str, tmp_path: Path
                          ) -> tuple[KillPoints, dict[str, str], dict[str, str],
                                     dict[str, str]]:
    folder_rel, argv, prepare = COMMANDS[name]
    folder = world / folder_rel
    if prepare is not None:
        prepare(folder)
    _plant_user_files(folder)
    old_all = tree(folder)
    old = {k: v for k, v in old_all.items() if k not in USER_FILES}
    kp = KillPoints(folder, tmp_path / "snaps")
    with kp.armed():
        rc = main(argv)
    assert rc == 0, name
    new_all = tree(folder)
    for rel in USER_FILES:
        assert new_all[rel] == old_all[rel], f"{name}: user file {rel} changed"
    new = {k: v for k, v in new_all.items() if k not in USER_FILES}
    assert new != old
    return kp, old, new, old_all


@pytest.mark.parametrize("name", list(COMMANDS))
def test_killed_at_every_mutation_leaves_all_old_or_all_new(name: str, world: Path,
                                                            tmp_path: Path) -> None:
    kp, old, new, old_all = _run_with_kill_points(world, name, tmp_path)
    assert kp.n >= MIN_KILLS, f"{name}: only {kp.n} kill points"
    seen = {"old": 0, "new": 0}
    for n, what, snap in kp.points:
        seen[check_kill_state(snap, old, new, old_all, where=f"{name} killed before #{n} "
                                                              f"({what})")] += 1
    print(f"{name}: {kp.n} kill points, {seen['old']} all old, {seen['new']} all new")
    # both outcomes occur: the kill points span the whole command
    assert seen["old"] > 0 and seen["new"] > 0, seen


# ---------------------------------------------------------------------------
# real SIGKILLs: a subprocess killed at a drawn mutation agrees with the copies

_KILLER = r"""
import os, sys, shutil
root = os.path.abspath(sys.argv[1]); at = int(sys.argv[2]); argv = sys.argv[3:]
n = [0]
def inside(p):
    try:
        s = os.path.abspath(os.fspath(p))
    except TypeError:
        return False
    return s == root or s.startswith(root + os.sep)
def hit(*paths):
    if any(not isinstance(p, int) and p is not None and inside(p) for p in paths):
        n[0] += 1
        if n[0] == at:
            os.kill(os.getpid(), 9)
def two(fn):
    return lambda s, d, *a, **k: (hit(s, d), fn(s, d, *a, **k))[1]
def one(fn):
    return lambda p, *a, **k: (None if k.get("dir_fd") else hit(p), fn(p, *a, **k))[1]
os.replace, os.rename = two(os.replace), two(os.rename)
os.unlink, os.remove, os.rmdir = one(os.unlink), one(os.remove), one(os.rmdir)
os.mkdir = one(os.mkdir)
shutil.rmtree = one(shutil.rmtree)
import builtins, io
_open = builtins.open
def opener(file, mode="r", *a, **k):
    m = k.get("mode", mode)
    if isinstance(m, str) and any(c in m for c in "wax+") and not isinstance(file, int):
        hit(file)
    return _open(file, mode, *a, **k)
builtins.open = io.open = opener
from lsm.cli import main
sys.exit(main(argv))
"""


@pytest.mark.parametrize("name", ["fit", "predict"])
def test_real_sigkill_agrees_with_the_copies(name: str, world: Path, tmp_path: Path) -> None:
    """Three real SIGKILLs at drawn mutations: the folder left is all old or all new
    (the new set of an undisturbed run in a twin folder, up to what differs run to run:
    ``created`` in model.json and so the manifest and report)."""
    twin = tmp_path / "twin"
    shutil.copytree(world, twin, symlinks=True)
    kp, old, new, old_all = _run_with_kill_points(world, name, tmp_path)
    folder_rel, argv, _ = COMMANDS[name]
    rng = random.Random(15)
    for at in sorted(rng.sample(range(1, kp.n + 1), 3)):
        w = tmp_path / f"real-{at}"
        shutil.copytree(twin, w, symlinks=True)
        _plant_user_files(w / folder_rel)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        r = subprocess.run([sys.executable, "-c", _KILLER, str(w / folder_rel), str(at),
                            *argv], cwd=w, env=env, capture_output=True, text=True)
        assert r.returncode == -9, (at, r.returncode, r.stderr[-1500:])
        state = w / folder_rel
        recover(state)
        t = tree(state)
        assert not _junk(t), _junk(t)
        assert all(t.get(k) == v for k, v in old_all.items() if k in USER_FILES)
        mine = {k: v for k, v in t.items() if k not in USER_FILES}
        if mine == old:
            continue
        # a new set: every run loads, map sets match, and no file is an old-only leftover
        from lsm.workflows.predict import check_map_set
        from lsm.workflows.runs import load_run

        if "manifest.json" in mine:
            load_run(state)
        for zj in state.rglob("*_zones.json"):
            check_map_set(zj)
        stale = [k for k, v in mine.items() if old.get(k) == v and new.get(k) != v]
        assert not stale, (at, stale)
