"""Derived regions: a spatial-block subset of a region, written as a table region."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.errors import SamplingError


def block_subset(table: pd.DataFrame, fraction: float, *, part: str = "first",
                 order: str = "random", block_size: float | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, float | None]:
    """Rows of ``table`` in the first spatial blocks holding ``fraction`` of its points.

    Blocks (default edge: a twentieth of the longer extent) are put in one
    seeded order (``random``, or ``compact``: by distance from a seeded start
    block) and taken until the share of points comes closest to ``fraction``,
    so for a fixed seed a smaller fraction is always inside a larger one.
    ``part="rest"`` returns the other rows.
    Without coordinates every row is its own block.  Returns the boolean mask
    and the block size used.

    Example
    -------
    >>> m10, _ = block_subset(table, 0.1); m50, _ = block_subset(table, 0.5)  # doctest: +SKIP
    >>> bool((m10 <= m50).all())                                              # doctest: +SKIP
    True
    """
    from lsm.sampling.folds import block_ids, default_block_size

    n = len(table)
    has_xy = {"x", "y"} <= set(table.columns) and table[["x", "y"]].notna().all().all()
    rng = np.random.default_rng(seed)
    if has_xy:
        x, y = table["x"].to_numpy("float64"), table["y"].to_numpy("float64")
        bs = block_size or default_block_size(x, y, per_side=20)
        ids = block_ids(x, y, bs)
    else:
        x = y = np.zeros(n)
        bs, ids = None, np.arange(n)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if order == "compact" and has_xy:
        cx = np.bincount(inverse, weights=x) / counts
        cy = np.bincount(inverse, weights=y) / counts
        start = int(rng.integers(len(uniq)))
        ranked = np.argsort(np.hypot(cx - cx[start], cy - cy[start]), kind="stable")
    else:
        ranked = rng.permutation(len(uniq))
    # the block count whose point total comes closest to the fraction asked
    cum = np.cumsum(counts[ranked])
    m = int(np.argmin(np.abs(cum - fraction * n))) + 1
    mask = np.isin(inverse, ranked[:m])
    return (~mask if part == "rest" else mask), bs


def write_derived_region(data: Any, out: Path, *, name: str, fraction: float, part: str,
                         order: str, block_size: float | None, seed: int,
                         source_name: str) -> dict[str, Any]:
    """Write ``region.yaml`` + ``samples.parquet``: a block subset of ``data`` as a table region.

    Factor values are the cleaned ones of the source (scale, nodata and
    legend names applied), so every factor maps to its own column.
    """
    import yaml

    spec = data.spec
    table = data.table
    mask, bs = block_subset(table, fraction, part=part, order=order, block_size=block_size,
                            seed=seed)
    sub = table.loc[mask]
    y = sub["label"].to_numpy()
    where = f"regions.{name}"
    if len(sub) == 0 or (y == 1).all() or (y == 0).all():
        raise SamplingError(f"{where}: the {part} {fraction:.0%} of {source_name} by spatial "
                            f"blocks holds {int((y == 1).sum())} landslides and "
                            f"{int((y == 0).sum())} non-landslides; change 'fraction' or "
                            "'block_size'")
    has_xy = {"x", "y"} <= set(sub.columns)
    factors = list(data.kinds)
    cols = (["x", "y"] if has_xy else []) + factors + ["label"]
    out.mkdir(parents=True, exist_ok=True)
    from lsm.io.artifacts import atomic_path

    with atomic_path(out / "samples.parquet") as tmp:  # recorded as lsm's, never half-written
        sub[cols].reset_index(drop=True).to_parquet(tmp, index=False)
    crs = table.attrs.get("crs") or spec.crs or (spec.samples.crs if spec.samples else None)
    fdefs: dict[str, Any] = {}
    for f in factors:
        src = spec.factors.get(f)
        d: dict[str, Any] = {"column": f}
        if src is not None and src.kind is not None:
            d["kind"] = src.kind
        if data.kinds[f] == "categorical" and src is not None and src.categories:
            # values are legend names already: the identity keeps them comparable
            names = sorted({str(v) for v in sub[f].dropna().unique()})
            d["categories"] = {v: v for v in names}
        fdefs[f] = d
    samples: dict[str, Any] = {"path": "samples.parquet", "label": "label"}
    if has_xy:
        samples.update({"x": "x", "y": "y"})
        if crs:
            samples["crs"] = str(crs)
    how = (f"the {'first' if part == 'first' else 'other'} spatial blocks ({order} order, "
           f"seed {seed}" + (f", {bs:g} map units" if bs else "") + ")")
    doc: dict[str, Any] = {
        "name": name,
        "description": f"{len(sub):,} of the {len(table):,} points of {source_name} "
                       f"({len(sub) / len(table):.1%}; asked {fraction:.0%}, {part}) in {how}.",
        "citation": spec.citation,
        "samples": samples,
        "factors": fdefs,
        "folds": spec.folds.model_dump(mode="json"),
    }
    if crs:
        doc["crs"] = str(crs)
    if spec.exclude_from_transfer:
        doc["exclude_from_transfer"] = [f for f in spec.exclude_from_transfer if f in factors]
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    from lsm.io.artifacts import atomic_write_bytes

    atomic_write_bytes(out / "region.yaml", text.encode("utf-8"))
    return {"n": int(len(sub)), "n_landslides": int((y == 1).sum()),
            "share": float(len(sub) / len(table)), "block_size": bs}
