"""Two-stage few-shot transfer, one implementation per model family.

Stage 1, :func:`adapt`: the source model's structure is frozen and only a
small part is re-estimated on the target shots (output layer, leaf values,
intercept).  Stage 2, :func:`finetune`: the whole model is trained further on
the shots while anchored at the source (L2-SP, extra boosting rounds, extra
trees, coefficient shrinkage towards the source).

Both return a *new* fitted estimator; the model passed in is never modified.
Families register their stages with :func:`register_stages`, so callers never
branch on the model type.

Example
-------
>>> stage1 = adapt(source_model, X_shots, y_shots, random_state=0)      # doctest: +SKIP
>>> stage2 = finetune(stage1, X_shots, y_shots, source=source_model)    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_STAGES: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}


def register_stages(family: str, adapt_fn: Callable[..., Any],
                    finetune_fn: Callable[..., Any]) -> None:
    _STAGES[family] = (adapt_fn, finetune_fn)


def _stages(model: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    import lsm.models  # noqa: F401  (families register their stages on import)

    family = getattr(model, "family", None)
    if family not in _STAGES:
        raise ValueError(f"no transfer stages for model family {family!r}")
    return _STAGES[family]


def adapt(model: Any, X: Any, y: Any, *, random_state: int = 0, **opts: Any) -> Any:
    """Stage 1: re-estimate the frozen source model's head on the shots."""
    return _stages(model)[0](model, X, y, random_state=random_state, **opts)


def finetune(model: Any, X: Any, y: Any, *, source: Any = None, random_state: int = 0,
             **opts: Any) -> Any:
    """Stage 2: train all of ``model`` further on the shots, anchored at ``source``.

    ``model`` is usually the stage-1 result; ``source`` the original source
    model the weights are pulled towards (defaults to ``model``).
    """
    return _stages(model)[1](model, X, y, source=source if source is not None else model,
                             random_state=random_state, **opts)


#: Per family: candidate stage-2 options tried by :func:`finetune_auto`, from
#: strong anchoring to the source (first) to weak (last).  Weak settings also
#: get the optimisation budget to move away from the source.
ANCHOR_GRID: dict[str, list[dict[str, Any]]] = {
    "lr": [{"lam": 100.0}, {"lam": 10.0}, {"lam": 1.0}, {"lam": 0.1}],
    "mlp": [{"alpha": 100.0}, {"alpha": 10.0, "lr": 1e-3},
            {"alpha": 1.0, "lr": 3e-3, "epochs": 200}],
    "xgb": [{"n_rounds": 10}, {"n_rounds": 40},
            {"n_rounds": 100, "learning_rate": 0.1, "max_depth": 3}],
    "rf": [{"source_weight": 1500.0}, {"source_weight": 150.0}],
}


def finetune_auto(model: Any, X: Any, y: Any, *, source: Any = None, random_state: int = 0,
                  n_splits: int = 3) -> tuple[Any, dict[str, Any]]:
    """Stage 2 with the anchoring strength chosen by cross-validation on the shots.

    How much to trust the source is a property of the source/target pair:
    when the shots say the source is wrong, a weak anchor wins; when they are
    few or noisy, a strong one.  Each candidate of :data:`ANCHOR_GRID` is
    scored by the held-out log-loss over a stratified ``n_splits``-fold split
    of the shots (stage 1 re-run on each training part), and the best is
    refitted on all shots.  Returns the model and the chosen options.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    source = source if source is not None else model
    grid = ANCHOR_GRID[getattr(model, "family", "")]
    y_arr = np.asarray(y)
    if np.bincount(y_arr.astype(int)).min() < n_splits:  # too few shots to split
        opts = grid[len(grid) // 2]
        return finetune(model, X, y, source=source, random_state=random_state, **opts), opts
    losses = np.zeros(len(grid))
    folds = StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
    take = (lambda a, i: a.iloc[i]) if hasattr(X, "iloc") else (lambda a, i: a[i])
    for tr, va in folds.split(np.zeros(len(y_arr)), y_arr):
        Xtr, ytr, Xva, yva = take(X, tr), y_arr[tr], take(X, va), y_arr[va]
        s1 = adapt(source, Xtr, ytr, random_state=random_state)
        for i, opts in enumerate(grid):
            m = finetune(s1, Xtr, ytr, source=source, random_state=random_state, **opts)
            p = np.clip(m.predict_proba(Xva)[:, 1], 1e-6, 1 - 1e-6)
            losses[i] -= np.mean(yva * np.log(p) + (1 - yva) * np.log(1 - p))
    opts = grid[int(np.argmin(losses))]
    return finetune(model, X, y, source=source, random_state=random_state, **opts), opts
