"""Two-stage few-shot transfer, one implementation per model family.

Stage 1, :func:`adapt`: the source model's structure is frozen and only a
small part is re-estimated on the target shots (output layer, leaf values,
intercept).  Stage 2, :func:`finetune`: the whole model is trained further on
the shots while anchored at the source (L2-SP, extra boosting rounds, extra
trees, coefficient shrinkage towards the source).

Both return a *new* fitted estimator; the model passed in is never modified.
The built-in families' stages live in :mod:`lsm.transfer.lr`, ``rf``, ``xgb``
and ``mlp`` and are registered for their classes with :func:`register_stages`;
a family without registered stages gets the generic ones of
:class:`lsm.models.base.LsmClassifier` (``transfer_adapt`` /
``transfer_finetune``).  The anchoring grid of :func:`finetune_auto` is the
family's ``anchor_grid``.  Callers never branch on the model type, and
:mod:`lsm.models` never imports this package (transfer sits above models).

Example
-------
>>> stage1 = adapt(source_model, X_shots, y_shots, random_state=0)      # doctest: +SKIP
>>> stage2 = finetune(stage1, X_shots, y_shots, source=source_model)    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_STAGES: dict[type, tuple[Callable[..., Any], Callable[..., Any]]] = {}


def register_stages(cls: type, adapt_fn: Callable[..., Any],
                    finetune_fn: Callable[..., Any]) -> None:
    """Use ``adapt_fn`` / ``finetune_fn`` as the stages of family class ``cls``.

    ``adapt_fn(model, X, y, *, random_state)`` and
    ``finetune_fn(model, X, y, *, source, random_state, **opts)``; the keys of
    ``opts`` are those of ``cls.anchor_grid``.
    """
    _STAGES[cls] = (adapt_fn, finetune_fn)


def _registered(model: Any) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    for klass in type(model).__mro__:
        if klass in _STAGES:
            return _STAGES[klass]
    return None


def _check_family(model: Any) -> None:
    if not callable(getattr(model, "transfer_adapt", None)):
        raise ValueError(f"no transfer stages for {type(model).__name__} (family "
                         f"{getattr(model, 'family', None)!r}): not an lsm model family")


def adapt(model: Any, X: Any, y: Any, *, random_state: int = 0, **opts: Any) -> Any:
    """Stage 1: re-estimate the frozen source model's head on the shots."""
    fns = _registered(model)
    if fns is not None:
        return fns[0](model, X, y, random_state=random_state, **opts)
    _check_family(model)
    return model.transfer_adapt(X, y, random_state=random_state, **opts)


def finetune(model: Any, X: Any, y: Any, *, source: Any = None, random_state: int = 0,
             **opts: Any) -> Any:
    """Stage 2: train all of ``model`` further on the shots, anchored at ``source``.

    ``model`` is usually the stage-1 result; ``source`` the original source
    model the weights are pulled towards (defaults to ``model``).  The stages of
    ``source``'s family are used (a generic stage 1 may return another class).
    """
    source = source if source is not None else model
    fns = _registered(source)
    if fns is not None:
        return fns[1](model, X, y, source=source, random_state=random_state, **opts)
    _check_family(source)
    return source.transfer_finetune(model, X, y, random_state=random_state, **opts)


def anchor_grid(model: Any) -> list[dict[str, Any]]:
    """Candidate stage-2 options of ``model``'s family, strong anchoring first.

    Raises :class:`ValueError` naming the family when it declares no grid.
    """
    grid = list(getattr(type(model), "anchor_grid", ()) or ())
    if not grid:
        raise ValueError(f"model family {getattr(model, 'family', type(model).__name__)!r} "
                         "declares no anchor_grid (stage-2 options for --anchor auto)")
    return [dict(g) for g in grid]


def finetune_auto(model: Any, X: Any, y: Any, *, source: Any = None, random_state: int = 0,
                  n_splits: int = 3) -> tuple[Any, dict[str, Any]]:
    """Stage 2 with the anchoring strength chosen by cross-validation on the shots.

    How much to trust the source is a property of the source/target pair:
    when the shots say the source is wrong, a weak anchor wins; when they are
    few or noisy, a strong one.  Each candidate of the source family's
    ``anchor_grid`` (see :func:`anchor_grid`) is scored by the held-out
    log-loss over a stratified ``n_splits``-fold split of the shots (stage 1
    re-run on each training part), and the best is refitted on all shots.
    Returns the model and the chosen options.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    source = source if source is not None else model
    grid = anchor_grid(source)
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


# The built-in families' stages (each module registers its own at import).
import lsm.transfer.lr  # noqa: E402, F401
import lsm.transfer.mlp  # noqa: E402, F401
import lsm.transfer.rf  # noqa: E402, F401
import lsm.transfer.xgb  # noqa: E402, F401
