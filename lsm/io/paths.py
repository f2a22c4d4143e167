"""Paths that a run folder (or a model folder) stores: resolved inside it, or refused.

A run is self-contained: every path it records (manifest entries, model and member
folders, kept source models, extra files) is a plain relative name that stays inside
its folder once resolved, symlinks included. :func:`inside` is the one place that
turns such a stored name into a path; anything that would leave the folder (``..``,
an absolute path, a drive, a symlink pointing out) is a one-line
:class:`~lsm.errors.ArtifactError`, so nothing outside a run is read when it is loaded.

Example
-------
>>> from pathlib import Path
>>> inside(Path("runs/src"), "model/lr").as_posix()             # doctest: +SKIP
'/home/me/runs/src/model/lr'
"""

from __future__ import annotations

import os
from pathlib import Path

from lsm.errors import ArtifactError


def inside(root: str | os.PathLike[str], rel: object, *, what: str = "") -> Path:
    """``root / rel`` if it resolves inside ``root``, else :class:`ArtifactError`.

    ``rel`` must be a relative path of plain names joined by ``/`` (no ``..``, ``.``,
    empty part, ``\\``, NUL or drive); after resolving symlinks the result must still lie
    in ``root`` (itself resolved: a run folder reached through a link the user named is
    fine). The returned path is ``root / rel`` as given (not resolved), so messages name
    what the user sees. ``what`` names the key that stored ``rel`` (for the message).
    """
    from lsm.config.spec import check_relative_path

    root = Path(root)
    label = f"{what}: " if what else ""
    if not isinstance(rel, str):
        raise ArtifactError(f"{root}: {label}{rel!r} is not a path name inside the folder")
    try:
        check_relative_path(rel)
    except ValueError as err:
        raise ArtifactError(f"{root}: {label}{err}; refusing to read outside the folder"
                            ) from None
    path = root / rel
    try:
        real_root = root.resolve(strict=False)
        real = path.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ArtifactError(f"{path}: {label}cannot be resolved ({err})") from None
    if real != real_root and not real.is_relative_to(real_root):
        raise ArtifactError(f"{path}: {label}leads outside {root} (to {real}); refusing to "
                            "read it (a run reads only its own files)")
    return path
