"""Transfer stages of the random-forest family.

Stage 1, :func:`adapt_rf`: no split changes; the trees' class distributions
are re-estimated on the shots, in two steps.

1. ``shift`` (default on): one logit offset ``delta`` for the whole forest,
   fitted on all shots (maximum likelihood, 1-D).  Each node's probability
   ``p`` moves by the amount that a logit shift of ``delta`` moves its
   Laplace-smoothed estimate ``s = (p N + 1) / (N + 2)`` (``N`` its weighted
   training samples): ``p' = clip(p + expit(logit(s) + delta) - s, 0, 1)``.
   This carries a change of prevalence or overall susceptibility level that
   the leaf step below cannot: 100 shots reach only a few of a deep tree's
   leaves.  ``delta = 0`` leaves every value as it was.
2. Leaf shrinkage: each leaf reached by shots gets
   ``(n_class + m * p_leaf) / (n_leaf + m)``, with ``p_leaf`` the (shifted)
   source distribution and ``m = prior_strength`` (default 20: a source leaf
   counts as 20 target shots; deep-forest leaves rest on few training
   samples, but the same shot falls into every tree, so a small ``m`` lets
   single shots dominate the forest near them).

Stage 2, :func:`finetune_rf`: new trees grown on the shots are appended to the
forest; all trees weigh the same, so the share of the new ones is
``n_new / (n_source + n_new)``.  By default ``n_new`` grows with the number
of shots, ``n_source * n_shots / source_weight`` (``source_weight = 500``:
the source forest counts as 500 target shots), so 20 shots add 4 trees to
a 100-tree forest and 200 shots add 40.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from lsm.models.rf import RandomForestModel
from lsm.transfer import register_stages
from lsm.transfer.prior import check_shots

_EPS = 1e-6


def adapt_rf(model: Any, X: Any, y: Any, *, random_state: int | None = 0,
             prior_strength: float = 20.0, shift: bool = True) -> Any:
    """Stage 1: a copy of ``model`` with its trees' class distributions re-estimated.

    Parameters
    ----------
    model : RandomForestModel
        Fitted binary source model (not modified).
    X, y : array-like
        Target shots; ``y`` must hold both classes.
    random_state : int or None
        Unused (deterministic); accepted for a uniform interface.
    prior_strength : float, default 20.0
        ``m``: how many shots a source leaf distribution is worth.
    shift : bool, default True
        Fit the forest-wide logit offset first (see the module docstring).

    Returns
    -------
    RandomForestModel
        New model; trees have the same children, features and thresholds,
        only ``tree_.value`` differs.
    """
    if prior_strength < 0:
        raise ValueError(f"prior_strength must be >= 0, got {prior_strength!r}")
    X, y01 = check_shots(model, X, y, dtype=np.float32, order="C",
                         ensure_all_finite="allow-nan")
    out = copy.deepcopy(model)
    trees = [t.tree_ for t in out.forest_.estimators_]
    leaves = [t.apply(X) for t in trees]
    if shift:
        delta = _fit_shift(trees, leaves, y01)
        for t in trees:
            _shift_values(t, delta)
    onehot = np.column_stack([1.0 - y01, y01])
    for t, leaf in zip(trees, leaves, strict=True):
        value = t.value  # a writable view on the tree's own buffer
        counts = np.zeros((t.node_count, 2))
        np.add.at(counts, leaf, onehot)
        n = counts.sum(axis=1)
        hit = n > 0
        value[hit, 0, :] = (counts[hit] + prior_strength * value[hit, 0, :]) \
            / (n[hit, None] + prior_strength)
    return out


def finetune_rf(model: Any, X: Any, y: Any, *, source: Any = None,
                random_state: int | None = 0, n_new: int | None = None,
                source_weight: float = 500.0, min_samples_leaf: int = 3,
                max_features: str | int | float | None = "sqrt") -> Any:
    """Stage 2: ``model`` plus new trees grown on the shots.

    Parameters
    ----------
    model : RandomForestModel
        Starting point, usually the stage-1 model (not modified).
    X, y : array-like
        Target shots.
    source : RandomForestModel, optional
        Unused: the kept trees of ``model`` are the anchor.
    random_state : int or None, default 0
        Seed of the new trees.
    n_new : int, optional
        Trees to add; default ``max(1, round(n_trees * n_shots / source_weight))``.
    source_weight : float, default 500.0
        How many shots the existing forest is worth when ``n_new`` is derived.
    min_samples_leaf, max_features
        Parameters of the new trees (bootstrap samples of the shots).

    Returns
    -------
    RandomForestModel
        New model whose ``forest_.estimators_`` are ``model``'s trees then
        the new ones (``forest_.n_estimators`` updated; the constructor
        parameter ``n_estimators`` still describes the source fit).
    """
    from sklearn.ensemble import RandomForestClassifier

    X, y01 = check_shots(model, X, y, dtype=np.float32, order="C",
                         ensure_all_finite="allow-nan")
    n_old = len(model.forest_.estimators_)
    if n_new is None:
        if source_weight <= 0:
            raise ValueError(f"source_weight must be > 0, got {source_weight!r}")
        n_new = max(1, round(n_old * len(y01) / source_weight))
    if n_new < 1:
        raise ValueError(f"n_new must be >= 1, got {n_new!r}")
    # a few hundred shots: thread start-up costs more than it saves
    grown = RandomForestClassifier(n_estimators=n_new, min_samples_leaf=min_samples_leaf,
                                   max_features=max_features,
                                   n_jobs=1 if len(y01) < 2000 else model.n_jobs,
                                   random_state=random_state)
    grown.fit(X, y01.astype(np.intp))
    # the kept trees are shared, not copied: no stage ever changes a tree in place
    # (adapt_rf writes leaf values into its own deep copy), and copying a hundred deep
    # trees costs more than growing the new ones
    out = copy.copy(model)
    out.forest_ = copy.copy(model.forest_)
    out.forest_.estimators_ = [*model.forest_.estimators_, *grown.estimators_]
    out.forest_.n_estimators = len(out.forest_.estimators_)
    return out


def _fit_shift(trees: list[Any], leaves: list[np.ndarray], y01: np.ndarray) -> float:
    """Logit offset that maximises the shots' likelihood under the shifted forest."""
    P = np.column_stack([t.value[leaf, 0, 1] for t, leaf in zip(trees, leaves, strict=True)])
    N = np.column_stack([t.weighted_n_node_samples[leaf]
                         for t, leaf in zip(trees, leaves, strict=True)])
    S = (P * N + 1.0) / (N + 2.0)
    Z = logit(S)

    def loss(delta: float) -> float:
        q = np.clip(np.clip(P + expit(Z + delta) - S, 0.0, 1.0).mean(axis=1), _EPS, 1 - _EPS)
        return float(-np.mean(y01 * np.log(q) + (1 - y01) * np.log1p(-q)))

    res = minimize_scalar(loss, bounds=(-10.0, 10.0), method="bounded",
                          options={"xatol": 1e-6})
    return float(res.x)


def _shift_values(tree: Any, delta: float) -> None:
    value = tree.value
    p = value[:, 0, 1].copy()
    n = tree.weighted_n_node_samples
    s = (p * n + 1.0) / (n + 2.0)
    q = np.clip(p + expit(logit(s) + delta) - s, 0.0, 1.0)
    value[:, 0, 1] = q
    value[:, 0, 0] = 1.0 - q


register_stages(RandomForestModel, adapt_rf, finetune_rf)
