"""Model artifacts on disk: JSON, ``.npz`` arrays and a checksum manifest.

Nothing here unpickles: JSON is parsed, ``.npz`` files are read with
``allow_pickle=False``.  Each model folder carries ``manifest.json`` with the
sha256 of every file in it; :func:`verify_manifest` refuses a folder whose
files were changed, truncated or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lsm.errors import ArtifactError

MANIFEST = "manifest.json"

#: Called with the final path before every atomic write lands (the workflows register
#: their ownership ledger here: :mod:`lsm.workflows.owned`); a hook may refuse by raising.
BEFORE_PLACE: list[Any] = []


def before_place(path: str | os.PathLike[str]) -> None:
    """Run the :data:`BEFORE_PLACE` hooks for a file about to land at ``path``."""
    for hook in BEFORE_PLACE:
        hook(Path(path))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def chmod_default(path: str | os.PathLike[str]) -> None:
    """Give a temp file the permissions a plain ``open()`` would (mkstemp uses 0600)."""
    # Read the umask rather than set it: os.umask() is process-wide and racy.
    mask = 0o022
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    os.chmod(path, 0o666 & ~mask)


def with_path(exc: BaseException, path: str | os.PathLike[str]) -> BaseException | None:
    """An ``OSError`` naming ``path`` for a failed write of ``path``, or None to re-raise
    ``exc`` as it is.

    Python's and GDAL's write errors often name no file (``[Errno 28] No space left on
    device``); the user needs to know which output could not be written. A GDAL error
    whose text says the disk is full becomes ``OSError(ENOSPC)`` too.
    """
    import errno
    import shutil

    if isinstance(exc, OSError) and exc.filename:
        return None
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        text = str(e).lower()
        if getattr(e, "errno", None) == errno.ENOSPC or "no space left" in text or \
                "free disk space" in text or "disk full" in text:
            return OSError(errno.ENOSPC, "No space left on device", str(path))
    if isinstance(exc, OSError):
        # GDAL write errors (rasterio's RasterioIOError) carry no errno: a full disk is
        # the usual cause when almost nothing is left
        try:
            full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
        except OSError:
            full = False
        if full:
            return OSError(errno.ENOSPC, "No space left on device", str(path))
        if exc.errno:
            return OSError(exc.errno, exc.strerror or str(exc), str(path))
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` when the block ends.

    On any exception (Ctrl-C included) the temp file is removed and ``path``
    is left as it was: a reader never sees a half-written file.

    Example
    -------
    >>> with atomic_path("out/table.csv") as tmp:      # doctest: +SKIP
    ...     df.to_csv(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix)
    os.close(fd)
    try:
        chmod_default(tmp)
        yield Path(tmp)
        before_place(path)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        named = with_path(exc, path)
        if named is not None:
            raise named from exc
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + rename (never half-written)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
    atomic_write_bytes(Path(path), text.encode("utf-8"))
    return Path(path)


#: Largest JSON artifact lsm parses (bytes): the biggest it writes (a fine-tune's
#: metrics.json) is well under 1 MiB; anything far larger is not lsm's.
MAX_JSON_BYTES = 64 << 20
#: Deepest nesting of arrays and objects in a JSON artifact (lsm writes at most ~8 levels);
#: deeper text is refused before parsing, so a nesting bomb cannot exhaust the stack.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (brackets inside strings ignored)."""
    code = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)
    step = (np.isin(code, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(code, (ord("]"), ord("}"))))
    return int(np.cumsum(step).max(initial=0))


def read_json(path: Path) -> Any:
    """Parse a JSON artifact; :class:`ArtifactError` (one line naming ``path``) if it is
    missing, larger than :data:`MAX_JSON_BYTES`, nested deeper than
    :data:`MAX_JSON_DEPTH` or not JSON."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ArtifactError(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a JSON "
                                "artifact of lsm may have; refusing to parse it")
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a folder, not a JSON file") from None
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ArtifactError(f"{path}: JSON nested {depth} levels deep, more than the "
                            f"{MAX_JSON_DEPTH} an lsm artifact may have; refusing to parse it")
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:  # not reached after the depth check; kept as a last guard
        raise ArtifactError(f"{path}: JSON nested too deeply; refusing to parse it") from None


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Save named numeric arrays to ``.npz`` (no object arrays allowed)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {k!r} has dtype object; refusing to write a pickle")
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (ValueError, OSError, EOFError) as err:
        raise ArtifactError(f"{path}: unreadable array file ({err})") from None


def write_manifest(directory: Path, files: list[Path] | None = None) -> Path:
    """Record the sha256 of ``files`` (default: every file in ``directory``)."""
    directory = Path(directory)
    if files is None:
        files = [p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST]
    entries = {str(Path(p).relative_to(directory)): sha256_file(Path(p)) for p in files}
    return write_json(directory / MANIFEST, {"files": entries})


def verify_manifest(directory: Path) -> set[str]:
    """Raise :class:`ArtifactError` unless every file matches its recorded sha256.

    Returns the names the manifest lists (paths relative to ``directory``).
    """
    directory = Path(directory)
    man = directory / MANIFEST
    if not man.exists():
        raise ArtifactError(f"{directory}: not a model folder ({MANIFEST} missing)")
    entries = manifest_entries(man)
    check_entries(directory, entries, changed="changed or truncated")
    return set(entries)


def manifest_entries(man: Path) -> dict[str, str]:
    """The ``files`` table (relative path -> sha256) of the manifest file ``man``."""
    doc = read_json(man)
    entries = doc.get("files", {}) if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise ArtifactError(f"{man}: malformed (no 'files' object)")
    return entries


def check_entries(directory: Path, entries: dict[str, str], *, changed: str) -> None:
    """Raise :class:`ArtifactError` unless every listed file exists with its sha256;
    ``changed`` says what a mismatch means ("changed or truncated", ...)."""
    from lsm.io.paths import inside

    for rel, digest in entries.items():
        p = inside(directory, rel, what=MANIFEST)  # an entry never names a file elsewhere
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in {MANIFEST} but missing")
        if sha256_file(p) != digest:
            raise ArtifactError(f"{p}: checksum differs from {Path(directory) / MANIFEST}; "
                                f"the file was {changed}, refusing to load it")
