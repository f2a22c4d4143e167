"""Checks of the values read from an artifact: finite, in range, of the right type and shape.

Every loader validates what it read at the read boundary, before the value reaches a
model or a map, with these helpers.  Each raises :class:`~lsm.errors.ArtifactError`, one
line naming the file and the key (``where``, e.g. ``"runs/src/model.json: stats.std"``)
and the value found.

Example
-------
>>> number(0.3, "model.json: prevalence", lo=0, hi=1, lo_open=True, hi_open=True)
0.3
>>> number(float("nan"), "model.json: prevalence")
Traceback (most recent call last):
...
lsm.errors.ArtifactError: model.json: prevalence: nan is not a finite number
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lsm.errors import ArtifactError


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(where: str, what: str) -> ArtifactError:
    """The error for ``where``: ``"<where>: <what>"`` on one line."""
    return ArtifactError(f"{where}: {' '.join(str(what).split())}")


def number(value: Any, where: str, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> Any:
    """``value`` if it is a finite number (an int when ``integer``) within the bounds."""
    ok_type = isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))
    if not ok_type:
        raise fail(where, f"{_show(value)} is not a number")
    if not np.isfinite(value):
        raise fail(where, f"{_show(value)} is not a finite number")
    if integer and float(value) != int(value):
        raise fail(where, f"{_show(value)} is not a whole number")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise fail(where, f"{_show(value)} is outside {span}")
    return int(value) if integer else value


def probability(value: Any, where: str) -> float:
    """A number strictly between 0 and 1 (a prevalence, a base rate)."""
    return float(number(value, where, lo=0.0, hi=1.0, lo_open=True, hi_open=True))


def text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise fail(where, f"{_show(value)} is not a string")
    return value


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(where, f"expected an object, got {_show(value)}")
    return value


def sequence(value: Any, where: str, *, of: type | tuple[type, ...] | None = None,
             length: int | None = None, nonempty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise fail(where, f"expected a list, got {_show(value)}")
    if length is not None and len(value) != length:
        raise fail(where, f"{len(value)} entries, expected {length}")
    if nonempty and not value:
        raise fail(where, "empty list")
    if of is not None:
        types = of if isinstance(of, tuple) else (of,)
        for i, v in enumerate(value):
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                raise fail(f"{where}[{i}]", f"{_show(v)} has the wrong type")
    return value


def unique_names(names: Sequence[Any], where: str) -> None:
    """Raise unless ``names`` (column or factor names) has no repeats."""
    seen: set[Any] = set()
    dup = [n for n in names if n in seen or seen.add(n)]  # type: ignore[func-returns-value]
    if dup:
        raise fail(where, f"{_show(dup[0])} appears more than once")


def finite_array(value: Any, where: str, *, shape: tuple[int, ...] | None = None,
                 kind: str = "fiu") -> np.ndarray:
    """``value`` as a numeric array of dtype kind in ``kind``, of ``shape``, all finite."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise fail(where, f"not an array ({err})") from None
    if a.dtype.kind not in kind:
        raise fail(where, f"dtype {a.dtype} is not numeric" if a.dtype.kind not in "fiub"
                   else f"dtype {a.dtype}, expected {'an integer' if kind == 'iu' else 'a'} "
                        "numeric dtype")
    if shape is not None and a.shape != shape:
        raise fail(where, f"shape {a.shape}, expected {shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a.ravel()))
        raise fail(where, f"holds {bad.size} NaN or infinite value(s) (first at flat index "
                          f"{int(bad[0])}: {a.ravel()[bad[0]]})")
    return a
