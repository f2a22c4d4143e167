"""How many landslides stand behind a skill score, and when that is too few to quote.

An AUC from 2 landslides takes one of a handful of values (with 1 landslide, it is
the share of non-landslides ranked below it); it says next to nothing about how a
model ranks landslides it has not seen.  lsm reports every skill score with the
number of landslides it was computed from and, below :data:`MIN_SKILL_LANDSLIDES`,
a caveat that travels with it: the console (a note), ``metrics.json``
(``skill_caveat``), the report and a pipeline's notes.

Example
-------
>>> skill_caveat(2, what="the hold-out")["n_landslides"]
2
>>> skill_caveat(40, what="the hold-out") is None
True
"""

from __future__ import annotations

from typing import Any

#: Fewest landslides behind a skill score (AUC, log-loss, ...) quoted without a caveat:
#: with 10, one landslide ranked differently moves the AUC by up to 0.1.
MIN_SKILL_LANDSLIDES = 10


def skill_caveat(n_landslides: int, *, what: str) -> dict[str, Any] | None:
    """None when ``n_landslides`` scored landslides are enough, else the caveat.

    Parameters
    ----------
    n_landslides : int
        Landslides whose predictions the score is computed from (a hold-out's, or
        every landslide once when scored out of fold).
    what : str
        Where they come from, e.g. ``"the hold-out"``.

    Returns
    -------
    dict or None
        ``{"n_landslides", "min_landslides", "text"}``.
    """
    n = int(n_landslides)
    if n >= MIN_SKILL_LANDSLIDES:
        return None
    text = (f"skill from {n} landslide{'s' if n != 1 else ''} ({what}): fewer than "
            f"{MIN_SKILL_LANDSLIDES}, so AUC and the other scores are anecdotal (one landslide "
            f"ranked differently moves the AUC by up to {1 / max(n, 1):.2g}); they are no "
            "evidence of skill, or of its absence")
    return {"n_landslides": n, "min_landslides": MIN_SKILL_LANDSLIDES, "text": text}
