"""Spatial folds and block hold-outs.

Points are grouped into square blocks of ``block_size`` map units; whole
blocks are assigned to folds, so no block is split between training and
testing.  Tables without coordinates fall back to random folds.  Fewer
blocks (or points) than folds is an error, never silently fewer folds.
"""

from __future__ import annotations

import numpy as np

from lsm.errors import SamplingError


def default_block_size(x: np.ndarray, y: np.ndarray, *, per_side: int = 6) -> float:
    """Block edge giving about ``per_side`` blocks along the longer extent."""
    ext = max(float(np.ptp(x)), float(np.ptp(y)))
    return ext / per_side if ext > 0 else 1.0


def block_ids(x: np.ndarray, y: np.ndarray, block_size: float) -> np.ndarray:
    """Integer id of the square block each point falls into."""
    x = np.asarray(x, dtype="float64")
    y = np.asarray(y, dtype="float64")
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():  # NaN cast to int64 would make a bogus block
        raise SamplingError(f"{int(bad.sum())} point(s) have no finite coordinates (first: "
                            f"row {int(np.flatnonzero(bad)[0])}); spatial blocks need them all")
    bx = np.floor((x - x.min()) / block_size).astype("int64")
    by = np.floor((y - y.min()) / block_size).astype("int64")
    return by * (int(bx.max()) + 1) + bx


def spatial_folds(x: np.ndarray, y: np.ndarray, *, n_folds: int = 5,
                  block_size: float | None = None, seed: int = 0) -> np.ndarray:
    """Fold id (0..n_folds-1) per point; whole blocks go to one fold.

    Blocks are shuffled (seeded) and dealt to the fold with the fewest points
    so far, so folds are spatially disjoint and about equally large.

    Raises
    ------
    SamplingError
        When the points fall into fewer blocks than ``n_folds``.
    """
    bs = block_size or default_block_size(x, y)
    ids = block_ids(x, y, bs)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if len(uniq) < n_folds:
        raise SamplingError(f"the points fall into {len(uniq)} spatial block(s) of "
                            f"{bs:g} map units, fewer than the {n_folds} folds asked for; "
                            "lower folds.block_size or folds.n_folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    # largest blocks first (in shuffled order among equals) keeps folds balanced
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(n_folds, dtype="int64")
    block_fold = np.empty(len(uniq), dtype="int64")
    for b in order:
        k = int(np.argmin(load))
        block_fold[b] = k
        load[k] += counts[b]
    return block_fold[inverse].astype("int16")


def random_folds(n: int, *, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id (0..n_folds-1) per row, at random, as balanced as ``n`` allows."""
    if n < n_folds:
        raise SamplingError(f"{n} rows cannot make {n_folds} folds; lower folds.n_folds")
    rng = np.random.default_rng(seed)
    return (rng.permutation(n) % n_folds).astype("int16")
