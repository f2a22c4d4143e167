"""Test hold-outs and k-shot draws for few-shot transfer.

The test set of a target region is fixed once (a spatially separate block
hold-out, or random for tables without coordinates) and is the same for every
arm and repeat; shots are drawn from the rest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsm.errors import SamplingError
from lsm.sampling.folds import block_ids, default_block_size


def holdout_mask(table: pd.DataFrame, *, test_fraction: float = 0.3, seed: int = 0,
                 block_size: float | None = None) -> tuple[np.ndarray, str]:
    """Boolean test mask and the split kind (``"spatial"`` or ``"random"``).

    Spatial: whole blocks are added in random order until ``test_fraction``
    of the points and of the landslides are in the test set.
    """
    n = len(table)
    rng = np.random.default_rng(seed)
    y = table["label"].to_numpy()
    has_xy = {"x", "y"} <= set(table.columns) and table[["x", "y"]].notna().all().all()
    if not has_xy:
        test = np.zeros(n, dtype=bool)
        for cls in (0, 1):  # stratified, so the rare class is represented
            idx = np.flatnonzero(y == cls)
            test[rng.choice(idx, size=int(round(test_fraction * idx.size)), replace=False)] = True
        return test, "random"
    x, yy = table["x"].to_numpy(), table["y"].to_numpy()
    bs = block_size or default_block_size(x, yy, per_side=8)
    ids = block_ids(x, yy, bs)
    blocks = rng.permutation(np.unique(ids))
    test = np.zeros(n, dtype=bool)
    n_pos = max(int((y == 1).sum()), 1)
    for b in blocks:
        test |= ids == b
        if test.mean() >= test_fraction and (y[test] == 1).sum() >= test_fraction * n_pos * 0.8:
            break
    if (y[test] == 1).sum() == 0 or (y[test] == 0).sum() == 0:
        raise SamplingError("the spatial hold-out holds only one class; use a smaller block size")
    return test, "spatial"


def draw_shots(labels: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """Indices of ``k`` landslide and ``k`` non-landslide rows, without replacement."""
    labels = np.asarray(labels)
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    if k > pos.size or k > neg.size:
        raise SamplingError(
            f"--shots {k} needs {k} landslides and {k} non-landslides in the training pool, "
            f"which has {pos.size} and {neg.size}; use --shots {min(pos.size, neg.size)} or less"
        )
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
