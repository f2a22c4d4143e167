"""What lsm owns in a folder it writes, and how it replaces a set of its files at once.

Every folder lsm writes into (a run, a maps ``--out``, a tune or pipeline folder) carries
a ledger, ``.lsm-owned.json``: the kind of folder and every file lsm placed there
(paths relative to the folder). lsm moves aside, replaces or deletes only files the ledger
lists; a user's ``maps/survey.tif`` or ``figures/photo.png`` beside them is never
touched, and a file lsm would write over that it does not own is refused.

A set of files that belongs together (a run's models, metrics and manifest; one map set:
probability, zones, uncertainty, quick-looks and ``*_zones.json``; SHAP figures) is
written into a staging folder inside the folder (:class:`Staged`) and committed as one
unit: a journal (``.lsm-commit.json``) names the files the new set replaces and the files
it brings; then the old ones move aside and the new ones in. A kill at any point leaves
either the previous set (no journal yet: the staging folder is junk) or a journal that the
next lsm command claiming the folder completes (:func:`recover`), so the folder is all
old or all new. Files are added to the ledger before they land (write-ahead), so a kill
never leaves a file of lsm's that lsm no longer knows it owns.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lsm.errors import ArtifactError
from lsm.io import artifacts

LEDGER = ".lsm-owned.json"
JOURNAL = ".lsm-commit.json"
STAGING = ".staging-"
OLD = ".replaced-"
LOCK = ".lsm.lock"
#: Kinds of folder lsm writes; a command refuses an ``--out`` that holds another kind.
KINDS = ("fit", "finetune", "tune", "pipeline", "maps")
#: lsm's own bookkeeping in a folder (never user data, never listed in the ledger).
INTERNAL = (LEDGER, JOURNAL, LOCK)

#: Folders (resolved, as str) this process holds, with the kind each is claimed as (None:
#: as it is): files written into them are recorded in their ledgers.
HELD: dict[str, str | None] = {}


def _internal(rel: str) -> bool:
    parts = rel.split("/")
    return rel in INTERNAL or any(p.startswith((STAGING, OLD)) or ".tmp-" in p
                                  for p in parts)


def read_ledger(root: Path) -> dict[str, Any] | None:
    """The ledger of ``root`` ({"kind", "files"}), or None when it has none."""
    p = Path(root) / LEDGER
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ArtifactError(f"{p}: unreadable lsm ledger; remove it only if no lsm output "
                            "in this folder matters") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise ArtifactError(f"{p}: malformed lsm ledger (no 'files' list)")
    return {"kind": doc.get("kind"), "files": list(files)}


def _write_ledger(root: Path, kind: str | None, files: Iterable[str]) -> None:
    doc = {"format": 1, "kind": kind, "files": sorted(set(files))}
    _place_bytes(Path(root) / LEDGER, json.dumps(doc, indent=1).encode("utf-8"))


def _place_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temp file and a rename, without the ownership hook."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _legacy_kind(root: Path) -> str | None:
    """The kind of an lsm folder written before ledgers existed (None: not lsm's)."""
    root = Path(root)
    if (root / "model.json").is_file():
        try:
            kind = json.loads((root / "model.json").read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if kind in ("fit", "finetune") else None
    if (root / "pipeline.json").is_file():
        return "pipeline"
    if (root / "study.db").is_file() and any(root.glob("tune_*.json")):
        return "tune"
    if any(root.glob("*_zones.json")):
        return "maps"
    return None


def _legacy_files(root: Path) -> set[str]:
    """What an lsm folder without a ledger can be shown to own: the files its manifest
    lists and the names lsm writes (never a whole folder)."""
    root = Path(root)
    files: set[str] = set()
    man = root / artifacts.MANIFEST
    if man.is_file():
        try:
            files |= set(json.loads(man.read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError, AttributeError):
            pass
        files.add(artifacts.MANIFEST)
    for name in ("model.json", "metrics.json", "training_table.parquet", "outputs.json",
                 "shap.json", "report.md", "report.html", "test_predictions.parquet",
                 "delivered_rows.parquet", "pipeline.json", "study.db", "best_params.yaml",
                 "results.csv", "results.parquet", "summary.csv", "summary.md"):
        if (root / name).is_file():
            files.add(name)
    pipeline = (root / "pipeline.json").is_file()
    files |= {p.relative_to(root).as_posix() for p in root.glob("figures/*.png")
              if pipeline or p.name.startswith(("roc", "reliability", "arms", "shap_"))}
    for pattern in ("source_model/**/*", "model/**/*", "maps/*_zones.json", "*_zones.json",
                    "tune_*.json"):
        files |= {p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file()}
    for zj in [*root.glob("maps/*_zones.json"), *root.glob("*_zones.json")]:
        stem = zj.name[: -len("_zones.json")]
        files |= {p.relative_to(root).as_posix() for p in zj.parent.glob(f"{stem}_*")
                  if p.is_file() and "_shap_" not in p.name}
    return files


def folder_kind(root: Path) -> str | None:
    """The kind of lsm folder ``root`` is (see :data:`KINDS`), or None if not lsm's."""
    led = read_ledger(root)
    if led is not None and led["kind"]:
        return str(led["kind"])
    return _legacy_kind(root)


def owned_files(root: Path) -> set[str]:
    """Relative paths of the files lsm wrote in ``root``."""
    led = read_ledger(root)
    return set(led["files"]) if led is not None else _legacy_files(root)


def user_entries(root: Path) -> list[str]:
    """Names in ``root`` that are not lsm's bookkeeping (files or folders)."""
    return sorted(p.name for p in Path(root).iterdir() if not _internal(p.name))


def check_out(root: Path, kind: str) -> None:
    """Refuse to write a ``kind`` folder into ``root`` unless it is new, empty, or an lsm
    folder of the same kind (one-line :class:`ArtifactError`)."""
    root = Path(root)
    if not root.is_dir() or not user_entries(root):
        return
    have = folder_kind(root)
    if have is None:
        raise ArtifactError(f"{root}: not empty and not an lsm {kind} folder (it holds "
                            f"{', '.join(user_entries(root)[:3])}); lsm never writes over "
                            "files it did not write: choose a new or empty folder (--out)")
    if have != kind:
        what = "run" if have in ("fit", "finetune") else "folder"
        raise ArtifactError(f"{root}: holds an lsm {have} {what}, not a {kind} one; choose "
                            "another folder (--out)")


def set_kind(root: Path, kind: str) -> None:
    """Mark ``root`` as a ``kind`` folder (its ledger), keeping what it lists."""
    led = read_ledger(root)
    if led is not None and led["kind"] == kind:
        return
    files = led["files"] if led is not None else _legacy_files(root)
    _write_ledger(root, kind, files)


def record(root: Path, rels: Iterable[str]) -> None:
    """Add ``rels`` to the ledger of ``root`` (before those files land)."""
    rels = set(rels)
    led = read_ledger(root)
    have = set(led["files"]) if led is not None else _legacy_files(root)
    if rels <= have and led is not None:
        return
    kind = led["kind"] if led is not None else _legacy_kind(root)
    _write_ledger(root, kind or HELD.get(str(Path(root).resolve())), have | rels)


def holder_of(path: Path) -> Path | None:
    """The innermost folder this process holds that contains ``path``."""
    p = Path(os.path.abspath(path))
    best: Path | None = None
    for key in HELD:
        k = Path(key)
        if p != k and p.is_relative_to(k) and (best is None or k.is_relative_to(best)):
            best = k
    return best


def before_place(path: Path) -> None:
    """Hook of every atomic write (:func:`lsm.io.artifacts.atomic_path`): a file about to
    land in a held folder is recorded as lsm's; one the user put there is refused."""
    root = holder_of(path)
    if root is None:
        return
    path = Path(os.path.abspath(path))
    rel = path.relative_to(root).as_posix()
    if _internal(rel):
        return
    led = read_ledger(root)
    if led is not None and rel in led["files"]:
        return
    if path.exists() and rel not in (led["files"] if led is not None else _legacy_files(root)):
        raise ArtifactError(f"{path}: exists and was not written by lsm; refusing to replace "
                            "it (move it away or choose another --out)")
    record(root, [rel])


artifacts.BEFORE_PLACE.append(before_place)


class Staged:
    """A staging folder inside ``root`` whose files are committed together.

    Write the set's files under :meth:`path` (relative names as in ``root``); then
    :meth:`commit` replaces the owned files that ``replaces`` selects by them, as one
    unit. Without a commit (an error, Ctrl-C) the staging folder is removed and ``root``
    is unchanged.
    """

    def __init__(self, root: Path, *, kind: str | None = None) -> None:
        self.root = Path(root)
        self.kind = kind
        self.dir = self.root / f"{STAGING}{os.getpid()}-{time.monotonic_ns()}"
        self.dir.mkdir(parents=True)

    def path(self, rel: str | os.PathLike[str]) -> Path:
        return self.dir / rel

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.dir).as_posix() for p in self.dir.rglob("*")
                      if p.is_file() or p.is_symlink())

    def commit(self, replaces: Callable[[str], bool], *, last: Iterable[str] = ()) -> None:
        """Move aside every owned file of ``root`` that ``replaces(rel)`` selects and move
        the staged files in (``last`` after the others, e.g. the manifest)."""
        last = list(last)
        new = self.files()
        order = [f for f in new if f not in last] + [f for f in last if f in new]
        owned = owned_files(self.root)
        aside = [rel for rel in sorted(owned) if replaces(rel) and
                 (self.root / rel).is_file()]
        clash = [rel for rel in order if rel not in owned and
                 (self.root / rel).exists()]
        if clash:
            raise ArtifactError(f"{self.root / clash[0]}: exists and was not written by lsm; "
                                "refusing to replace it (move it away or choose another "
                                "--out)")
        man = artifacts.MANIFEST
        aside.sort(key=lambda rel: rel != man)  # the old manifest first: the run is refused
        old = self.root / f"{OLD}{os.getpid()}-{time.monotonic_ns()}"
        journal = {"stage": self.dir.name, "old": old.name, "aside": aside, "in": order,
                   "kind": self.kind}
        record(self.root, order)  # write-ahead: the new names are lsm's before they land
        _place_bytes(self.root / JOURNAL, json.dumps(journal).encode("utf-8"))
        finish(self.root, journal)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def finish(root: Path, journal: dict[str, Any]) -> None:
    """Carry out (or complete, after a kill) the commit ``journal`` describes. Every step
    checks what is already done, so running it again is harmless."""
    root = Path(root)
    stage, old = root / journal["stage"], root / journal["old"]
    incoming = set(journal["in"])
    for rel in journal["aside"]:
        src, dst = root / rel, old / rel
        if rel in incoming and not (stage / rel).exists():
            continue  # the new file is already in place
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    for rel in journal["in"]:
        src = stage / rel
        if src.exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, root / rel)
    led = read_ledger(root)
    have = set(led["files"]) if led is not None else set()
    gone = set(journal["aside"]) - incoming
    kind = journal.get("kind") or (led["kind"] if led is not None else None) or \
        HELD.get(str(root.resolve()))
    _write_ledger(root, kind, (have - gone) | incoming)
    (root / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)
    for rel in sorted(gone, key=lambda r: -r.count("/")):  # folders the old set emptied
        d = (root / rel).parent
        while d != root and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


def recover(root: Path) -> bool:
    """Complete a commit a killed process left in ``root`` (True if there was one).
    Call it only on a folder this process holds."""
    p = Path(root) / JOURNAL
    if not p.is_file():
        return False
    try:
        journal = json.loads(p.read_text(encoding="utf-8"))
        ok = isinstance(journal, dict) and {"stage", "old", "aside", "in"} <= set(journal)
    except (OSError, ValueError):
        ok = False
    if not ok or not (Path(root) / journal["stage"]).is_dir() and journal["in"] and \
            not all((Path(root) / r).exists() for r in journal["in"]):
        raise ArtifactError(f"{p}: damaged commit journal of an interrupted lsm command; "
                            "run the command again into a new folder")
    finish(root, journal)
    return True


def foreign_files(folder: Path, *, top: Path) -> list[Path]:
    """Files under ``folder`` that no lsm ledger lists: for each file, the ledgers of its
    folder and of every folder above it up to ``top`` are asked (a step folder's files
    may be listed by the pipeline folder's ledger or by a run's own)."""
    folder, top = Path(folder), Path(top)
    ledgers: dict[Path, set[str]] = {}

    def owned(root: Path) -> set[str]:
        if root not in ledgers:
            ledgers[root] = owned_files(root) if (root / LEDGER).is_file() else set()
        return ledgers[root]

    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        ok = False
        a = p.parent
        while True:
            rel = p.relative_to(a).as_posix()
            if _internal(rel) or rel in owned(a):
                ok = True
                break
            if a == top or a == a.parent or top not in a.parents:
                break
            a = a.parent
        if not ok:
            out.append(p)
    return out


def remove_owned_tree(folder: Path, *, top: Path) -> None:
    """Delete ``folder``, which lsm wrote, unless it holds a file no ledger up to ``top``
    lists (a user's file: one-line :class:`ArtifactError`, nothing deleted)."""
    folder = Path(folder)
    if not folder.exists():
        return
    foreign = foreign_files(folder, top=top)
    if foreign:
        raise ArtifactError(f"{foreign[0]}: not written by lsm; refusing to delete "
                            f"{folder} to redo it (move the file elsewhere)")
    shutil.rmtree(folder)
