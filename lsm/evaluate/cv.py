"""Spatial cross-validation of the model families."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lsm.evaluate.metrics import binary_metrics, summarize


def cross_validate(
    make_model: Callable[[], Any], X: pd.DataFrame, y: np.ndarray, folds: np.ndarray,
    *, on_fold: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train on all folds but one, score on the held-out fold, for every fold.

    Returns ``{"folds": [per-fold metrics], "summary": {metric: {mean, std}},
    "oof": out-of-fold probabilities}``.
    """
    per_fold = []
    oof = np.full(len(y), np.nan)
    for k in np.unique(folds):
        test = folds == k
        if len(np.unique(y[~test])) < 2:
            continue
        model = make_model().fit(X[~test], y[~test])
        p = model.predict_proba(X[test])[:, 1]
        oof[test] = p
        per_fold.append({"fold": int(k), "n": int(test.sum()), **binary_metrics(y[test], p)})
        if on_fold is not None:
            on_fold()
    summary = summarize([{k: v for k, v in f.items() if k not in ("fold", "n")}
                         for f in per_fold])
    return {"folds": per_fold, "summary": summary, "oof": oof}
