"""Canonical landslide conditioning factors.

Region specs map their local names (``DEM``, ``altitude``, ``elev``) onto these
canonical names; transfer between regions works on the canonical names.  The
registry is extendable: a spec may use any other name if it states ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FactorKind = Literal["continuous", "categorical", "circular"]


@dataclass(frozen=True)
class FactorInfo:
    """What a canonical factor is: its kind, unit and a one-line description."""

    name: str
    kind: FactorKind
    unit: str
    description: str


_FACTORS = [
    FactorInfo("elevation", "continuous", "m", "height above sea level"),
    FactorInfo("slope", "continuous", "deg", "slope angle"),
    FactorInfo("aspect", "circular", "deg", "downslope direction from north; flat = missing; "
               "models see sin/cos"),
    FactorInfo("curvature", "continuous", "1/m", "general (total) curvature"),
    FactorInfo("plan_curvature", "continuous", "1/m", "curvature across the slope"),
    FactorInfo("profile_curvature", "continuous", "1/m", "curvature along the slope"),
    FactorInfo("twi", "continuous", "-", "topographic wetness index ln(a / tan b)"),
    FactorInfo("spi", "continuous", "-", "stream power index"),
    FactorInfo("sti", "continuous", "-", "sediment transport index"),
    FactorInfo("ndvi", "continuous", "-", "normalised difference vegetation index, -1..1"),
    FactorInfo("rainfall", "continuous", "mm/yr", "mean annual rainfall"),
    FactorInfo("dist_river", "continuous", "m", "distance to the nearest river or drainage line"),
    FactorInfo("dist_road", "continuous", "m", "distance to the nearest road"),
    FactorInfo("dist_fault", "continuous", "m", "distance to the nearest fault"),
    FactorInfo("lithology", "categorical", "-", "rock type"),
    FactorInfo("landuse", "categorical", "-", "land use / land cover"),
    FactorInfo("soil", "categorical", "-", "soil type"),
]

CANONICAL_FACTORS: dict[str, FactorInfo] = {f.name: f for f in _FACTORS}

#: Factors that can be computed from a DEM (see ``lsm.stack.terrain``).
DERIVABLE_FACTORS = ("slope", "aspect", "curvature", "plan_curvature", "profile_curvature", "twi")


def factor_kind(name: str, declared: str | None = None) -> FactorKind:
    """Return the kind of factor ``name``, preferring an explicit declaration.

    ``aspect`` is ``circular`` unless declared otherwise; unknown names need
    ``declared``.
    """
    if declared is not None:
        if name == "aspect" and declared == "continuous":
            return "circular"
        return declared  # type: ignore[return-value]
    info = CANONICAL_FACTORS.get(name)
    if info is None:
        raise KeyError(name)
    return info.kind
