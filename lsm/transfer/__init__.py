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
