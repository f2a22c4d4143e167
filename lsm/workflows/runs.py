"""Run folders: what ``fit`` and ``finetune`` write, and how a later step reads them.

Layout of a run folder::

    model.json            feature schema, normalisation + statistics, seed, versions,
                          data checksums, the chain of regions
    model/<family>/       one artifact folder per model family (with manifest.json)
    source_model/<family>/  a fine-tune's copies of the source models it started from
    metrics.json          cross-validation (fit) or four-arm comparison (finetune)
    training_table.parquet
    manifest.json         sha256 of all of the above: written last, checked on load

A run reads nothing outside its folder: every name it stores resolves through
:func:`lsm.io.paths.inside`, and its region is its stored spec with recorded data
checksums (:mod:`lsm.workflows.region_record`).
    report.md, figures/, maps/   (written by the mapping and report steps)

A run is written into a staging folder inside the run folder and moved into place
only when complete (:func:`write_run`); a run folder is claimed by one process at a
time (:func:`claim_run_dir`), so two commands on one ``--out`` never interleave.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from lsm.config.spec import check_name
from lsm.errors import ArtifactError
from lsm.io.artifacts import (
    MANIFEST,
    check_entries,
    manifest_entries,
    read_json,
    with_path,
    write_json,
    write_manifest,
)
from lsm.io.paths import inside
from lsm.stack.features import FeatureSchema
from lsm.workflows import owned

MODEL_JSON = "model.json"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("lsm", "numpy", "pandas", "scikit-learn", "xgboost-cpu", "xgboost", "torch",
                "xarray", "dask", "rasterio", "shap"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Run:
    """A loaded run folder."""

    path: Path
    meta: dict[str, Any]
    models: dict[str, Any]

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.meta["schema"])

    @property
    def norm(self) -> str:
        return str(self.meta["norm"])

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the region the models were last trained in."""
        return self.meta["stats"]

    @property
    def region(self) -> str:
        return str(self.meta["region"])

    def training_table(self) -> pd.DataFrame:
        p = self.path / "training_table.parquet"
        if not p.exists():
            raise ArtifactError(f"{p}: missing; cannot re-train the source models")
        return pd.read_parquet(p)


def load_run(path: Path, *, families: list[str] | None = None) -> Run:
    """Read ``model.json`` and the model artifacts of a run folder.

    The run-level ``manifest.json`` must list ``model.json``, ``metrics.json`` and every
    file under ``model/``, each with its sha256: a changed normalisation statistic, a
    swapped model folder or a run whose writing was interrupted is refused.
    """
    from lsm.models.base import load_model

    path = Path(path)
    if not path.is_dir():
        if path.exists():
            raise ArtifactError(f"{path}: not a run folder (it is a file)")
        raise ArtifactError(f"{path}: no such run folder (run 'lsm fit' first)")
    complete_pending(path)
    verify_run(path)
    meta = read_json(path / MODEL_JSON)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path / MODEL_JSON}: not an lsm run file of format {FORMAT_VERSION}")
    if "region" in meta:  # names the next run's folder and map files
        try:
            check_name(str(meta["region"]))
        except ValueError as err:
            raise ArtifactError(f"{path / MODEL_JSON}: region: {err}") from None
    from lsm.workflows.run_values import check_run_meta, check_run_models

    schema = check_run_meta(meta, path / MODEL_JSON)
    have = list(meta["families"])
    wanted = families or have
    missing = [f for f in wanted if f not in have]
    if missing:
        raise ArtifactError(f"{path}: run has no model(s) {missing} (it has {', '.join(have)})")
    # each folder names its own family (a generic transfer stage is a delivered model)
    models = {f: load_model(inside(path, f"model/{f}", what=f"{MODEL_JSON} families"))
              for f in wanted}
    check_run_models(path, schema, models)
    return Run(path, meta, models)


#: Files of a run that its manifest must cover (besides every file under ``model/``).
RUN_FILES = (MODEL_JSON, "metrics.json")
#: Folders whose every file the run manifest covers: the run's models and the source
#: models a fine-tune keeps (so that it never reads its source run again).
MODEL_DIRS = ("model", "source_model")
# the names of lsm's bookkeeping are owned.py's (one place for the lock, staging, old sets)
_STAGING, _OLD, _LOCK = owned.STAGING, owned.OLD, owned.LOCK


def _run_files(path: Path) -> list[Path]:
    files = [path / f for f in (*RUN_FILES, "training_table.parquet") if (path / f).exists()]
    for sub in MODEL_DIRS:
        if (path / sub).is_dir():
            files += [p for p in sorted((path / sub).rglob("*")) if p.is_file()]
    return files


def verify_run(path: Path) -> None:
    """Raise :class:`ArtifactError` unless ``path``'s run manifest covers and matches it.

    Checked: the manifest exists; it lists ``model.json``, ``metrics.json`` and at least
    one model folder's files; every listed file exists with its recorded sha256; and no
    file under ``model/`` is unlisted (a file added or swapped in after the run).
    """
    path = Path(path)
    man = path / MANIFEST
    if not man.exists():
        from lsm.workflows.owned import JOURNAL

        if (path / JOURNAL).exists():
            raise ArtifactError(f"{path}: an interrupted lsm command left its commit half "
                                "done and it cannot be completed here (read-only folder?); "
                                "run that command again")
        if (path / MODEL_JSON).exists():
            raise ArtifactError(f"{path}: incomplete run ({MANIFEST} missing: the run was "
                                "interrupted while being written, or written by an older "
                                "lsm); run it again")
        raise ArtifactError(f"{path}: not a run folder ({MODEL_JSON} missing; run 'lsm fit' "
                            "first)")
    entries = manifest_entries(man)
    for required in RUN_FILES:
        if required not in entries:
            raise ArtifactError(f"{man}: does not cover {required}; refusing the run")
    if not any(k.startswith("model/") for k in entries):
        raise ArtifactError(f"{man}: lists no model files; refusing the run")
    check_entries(path, entries, changed="changed after the run was written")
    listed = set(entries)
    # runs of older lsm wrote source_model/ after their manifest: not part of the run then
    # (lsm.workflows.extras.kept_source_models reads it only when the manifest covers it)
    legacy = not any(k.startswith(f"{MODEL_DIRS[1]}/") for k in entries)
    extra = [p for p in _run_files(path) if p.relative_to(path).as_posix() not in listed
             and not (legacy and p.relative_to(path).parts[0] == MODEL_DIRS[1])]
    if extra:
        raise ArtifactError(f"{extra[0]}: not part of the run written in {path} (unlisted "
                            f"in {MANIFEST}); refusing to load it")


# Run folders this process holds (path -> open lock file), so that a command which writes
# a run and then its maps, in one process, takes the lock once; and those it created.
_HELD: dict[str, Any] = {}
_CREATED: set[str] = set()


def release_claims(*, failed: bool = False) -> list[Path]:
    """At the end of a command: release every run folder this process holds. After a
    failure (``failed``), also remove those it created that hold nothing but lsm's
    bookkeeping (lock, ledger), so that a refused command leaves no empty run folder."""
    removed = []
    for key, fh in list(_HELD.items()):
        fh.close()
        del _HELD[key]
        owned.HELD.pop(key, None)
        p = Path(key)
        if failed and key in _CREATED and p.is_dir() and \
                {c.name for c in p.iterdir()} <= {_LOCK, owned.LEDGER} and \
                not owned.owned_files(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    _CREATED.clear()
    return removed


_DEPTH = [0]


def holds_run_folders(func: Any) -> Any:
    """Decorator of a top-level command (API or CLI): the run folders it claims are
    released when the outermost such call returns (and removed if it failed before
    writing anything into a folder it created)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _DEPTH[0] += 1
        failed = True
        try:
            out = func(*args, **kwargs)
            failed = False
            return out
        finally:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                release_claims(failed=failed)

    return wrapper


def abandon_claims() -> list[Path]:
    """:func:`release_claims` after a failed command."""
    return release_claims(failed=True)


def claim_run_dir(path: Path, *, kind: str | None = None) -> Path:
    """Create ``path`` if needed and hold it for this process until it exits.

    Another process holding it is a one-line :class:`~lsm.errors.RunBusyError`. A commit
    a killed lsm process left half done is completed (:func:`lsm.workflows.owned.recover`);
    other leftovers of a killed run (staging folders, replaced runs, ``.tmp-*`` files of
    atomic writes) are removed. A file where the folder should be is a one-line error too.
    With ``kind`` (see :data:`lsm.workflows.owned.KINDS`), a non-empty folder that is not
    an lsm folder of that kind is refused (:func:`lsm.workflows.owned.check_out`).
    """
    import fcntl

    from lsm.errors import RunBusyError
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path}: is a file; give a folder for the run (--out)")
    key = str(path.resolve())
    if key in _HELD:
        return path
    if not path.exists():
        _CREATED.add(key)
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / _LOCK, "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RunBusyError(f"{path}: in use by another lsm process (pid {pid}); wait for "
                               "it to finish or choose another --out") from None
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _HELD[key] = fh
    owned.HELD[key] = kind
    clean_stale(path)
    if kind is not None:
        owned.check_out(path, kind)
    return path


def complete_pending(path: Path) -> bool:
    """Complete the journaled commit a killed lsm command left in ``path`` (True if there
    was one), holding the folder's lock meanwhile; a folder another process holds is a
    one-line :class:`~lsm.errors.RunBusyError` (its commit is in progress), one that
    cannot be written is left as it is (:func:`verify_run` then refuses it)."""
    import fcntl

    from lsm.errors import RunBusyError
    path = Path(path)
    if not (path / owned.JOURNAL).exists():
        return False
    if str(path.resolve()) in _HELD:
        return owned.recover(path)
    try:
        fh = open(path / _LOCK, "a+")  # noqa: SIM115 - closed below
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunBusyError(f"{path}: in use by another lsm process (it is replacing the "
                               "run); wait for it to finish") from None
        return owned.recover(path)
    finally:
        fh.close()


def refuse_out_in_run(out: Path, run: Path, *, option: str) -> None:
    """A command that reads the run ``run`` and writes another run to ``out``: ``out``
    equal to ``run`` or inside it would overwrite what it reads (one-line error)."""
    o, r = Path(out).resolve(), Path(run).resolve()
    if o == r:
        raise ArtifactError(f"{out}: is the run given by {option} ({run}); writing there "
                            "would replace it: choose another --out")
    if o.is_relative_to(r):
        raise ArtifactError(f"{out}: is inside the run given by {option} ({run}); choose "
                            "an --out outside it")


def clean_stale(path: Path) -> list[Path]:
    """Remove what killed runs leave in ``path``: staging folders, replaced runs and the
    ``.<name>.tmp-*`` files of interrupted atomic writes (at any depth). Call it only on a
    folder this process holds (:func:`claim_run_dir`)."""
    from lsm.workflows.owned import recover

    removed = []
    path = Path(path)
    recover(path)  # a commit the killed process had begun: complete it (all new)
    for p in list(path.glob(f"{_STAGING}*")) + list(path.glob(f"{_OLD}*")):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    # the folder itself and the ones lsm writes into (not a user's whole tree)
    for d in (path, *(path / s for s in ("maps", "figures", "model", "source_model"))):
        if d.is_dir():
            for p in d.glob(".*.tmp-*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def write_run(path: Path, *, models: dict[str, Any], table: pd.DataFrame,
              metrics: dict[str, Any], meta: dict[str, Any], extras: Any = None,
              source_models: dict[str, Any] | None = None) -> Path:
    """Write a whole run (models, training table, metrics, ``model.json``, manifest, and
    ``extras``: an object whose ``write(folder)`` adds the run's extra files).

    Everything goes to a staging folder inside ``path`` first; the manifest is written
    last; then every file the previous run in ``path`` wrote (its ledger: models, maps,
    figures, report, ...) moves aside and the new ones move in, as one journaled commit
    (:class:`lsm.workflows.owned.Staged`). Files lsm did not write stay where they are. A
    kill at any point leaves the previous run, or a commit the next lsm command on the
    folder completes; :func:`load_run` refuses the folder in between: never a mix that
    loads.

    ``source_models`` (a fine-tune's): saved under ``source_model/<family>/``, covered by
    the manifest like the run's own models.
    """
    from lsm.workflows.owned import Staged

    kind = meta.get("kind")
    path = claim_run_dir(path, kind=kind)
    stage = Staged(path, kind=kind)
    try:
        save_models(stage.dir, models)
        if source_models:
            save_models(stage.dir, source_models, folder=MODEL_DIRS[1])
        table.to_parquet(stage.path("training_table.parquet"))
        write_json(stage.path("metrics.json"), metrics)
        write_run_meta(stage.dir, meta)
        if extras is not None:
            extras.write(stage.dir)
        write_manifest(stage.dir, _run_files(stage.dir))
        # the new run replaces everything the old one wrote (maps and report included)
        stage.commit(lambda rel: True, last=[MANIFEST])
    except BaseException as exc:
        named = with_path(exc, path)  # disk full while staging: name the run folder
        if named is not None:
            raise named from exc
        raise
    finally:
        stage.discard()
    return path


def save_models(path: Path, models: dict[str, Any], *, folder: str = "model") -> None:
    for fam, model in models.items():
        d = Path(path) / folder / fam
        d.mkdir(parents=True, exist_ok=True)
        model.save(d)


def write_run_meta(path: Path, meta: dict[str, Any]) -> Path:
    meta = {"format": FORMAT_VERSION, "created": now_iso(), "versions": package_versions(),
            **meta}
    return write_json(Path(path) / MODEL_JSON, meta)


def latest_run(base: Path) -> Path | None:
    """``base`` itself if it is a run, else its newest sub-run (by model.json mtime)."""
    base = Path(base)
    if (base / MODEL_JSON).exists():
        return base
    cands = sorted(base.glob(f"*/{MODEL_JSON}"), key=lambda p: p.stat().st_mtime)
    return cands[-1].parent if cands else None
