"""Find the local file behind a spec's :class:`~lsm.config.spec.FileRef`.

Order of places looked at, first match wins:

1. ``path``: a local file, relative to the spec (checked against ``sha256``
   when the spec gives one);
2. a data directory (``LSM_DATA_DIR`` or ``--data-dir``) holding the file under
   its ``name`` (or one of its ``local_copies``), checked against the sha256;
3. the download cache (``LSM_CACHE``, default the platform cache dir), where a
   file is kept once downloaded; a cached file is re-checked before use;
4. a download from ``url`` with pooch (progress bar, sha256 check).  A file
   whose checksum differs is refused and not kept; a stale cached file is
   replaced only once a good download is complete.

Names (``name``, ``local_copies``) are relative paths that stay inside the
data directory or the cache: nothing is read, written or deleted elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsm.config.spec import FileRef, check_relative_path
from lsm.errors import ChecksumError, DataError, SpecError
from lsm.io.artifacts import sha256_file

ENV_DATA_DIR = "LSM_DATA_DIR"
ENV_CACHE = "LSM_CACHE"


def data_dir() -> Path | None:
    """The local data directory from ``LSM_DATA_DIR``, if set."""
    v = os.environ.get(ENV_DATA_DIR)
    return Path(v).expanduser() if v else None


def cache_dir() -> Path:
    """Download cache: ``LSM_CACHE`` or the platform's user cache dir for ``lsm``."""
    v = os.environ.get(ENV_CACHE)
    if v:
        return Path(v).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lsm")) / "downloads"


def _check(path: Path, sha256: str, where: str) -> Path:
    digest = sha256_file(path)
    if digest != sha256:
        raise ChecksumError(
            f"{path}: sha256 {digest[:12]}... does not match {sha256[:12]}... declared by {where}"
        )
    return path


def resolve_file(ref: FileRef, *, base_dir: Path, where: str, progress: bool = True) -> Path:
    """Return a local, checked path for ``ref``; download it if needed.

    Parameters
    ----------
    ref
        The file reference from a spec.
    base_dir
        Folder of the spec file (relative paths are relative to it).
    where
        ``"<spec file>: <key>"``, used in error messages.
    """
    if ref.path is not None:
        p = Path(ref.path).expanduser()
        p = p if p.is_absolute() else Path(base_dir) / p
        if not p.exists():
            raise SpecError(f"{where}: file not found: {p}")
        return _check(p, ref.sha256, where) if ref.sha256 else p

    assert ref.url is not None and ref.sha256 is not None
    ddir = data_dir()
    if ddir is not None:
        cand = _below(ddir, ref.cache_name, where)
        if cand.exists():
            return _check(cand, ref.sha256, where)
        for copy in ref.local_copies:
            cand = _below(ddir, copy.name, where)
            if cand.exists():
                return _check(cand, copy.sha256, where)
    cached = _below(cache_dir(), ref.cache_name, where)
    if cached.is_file() and sha256_file(cached) == ref.sha256:
        return cached
    # stale or corrupt: pooch downloads to a temp file and replaces it only when it checks out
    return download(ref.url, ref.sha256, cached, where=where, progress=progress)


def _below(folder: Path, name: str, where: str) -> Path:
    """``folder / name``, refusing a name that would leave ``folder`` (``..``, absolute)."""
    try:
        check_relative_path(name)
    except ValueError as err:
        raise SpecError(f"{where}: name: {err}") from None
    return folder / name


def download(url: str, sha256: str, dest: Path, *, where: str, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with pooch, refusing a wrong checksum."""
    import pooch

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        fname = pooch.retrieve(
            url, known_hash=f"sha256:{sha256}", fname=dest.name, path=dest.parent,
            progressbar=progress,
        )
    except ValueError as err:
        if "hash" in str(err).lower():
            raise ChecksumError(
                f"{where}: download from {url} does not match its sha256 {sha256[:12]}...; "
                "refused (the file was not kept)"
            ) from None
        raise DataError(f"{where}: cannot download {url}: {err}") from None
    except Exception as err:  # requests' connection / HTTP errors
        raise DataError(
            f"{where}: cannot download {url} ({type(err).__name__}: {err}); offline? set "
            f"{ENV_DATA_DIR} to a folder that holds {Path(dest).name}"
        ) from None
    return Path(fname)
