"""A cross-validated stack of the delivered model's candidates (a super learner),
shrunk towards the default ensemble.

Not wired into ``lsm finetune`` yet: its prior strength :data:`STACK_TAU` still has to
be set without the data that reports skill (leave one shipped pair out, synthetic
targets), as issue 17 asks.  It is here so that study can run against it.

The stack's margin is ``b + sum_j w_j m_j(x)`` over the candidates' margins ``m_j``,
with ``w >= 0``, fitted on the candidates' out-of-fold margins from
:func:`lsm.transfer.select.select_strategy` by penalised log-loss::

    sum_i loss(y_i, b + M_i w) * n / n_rows + tau / 2 * ||w - e_default||^2

The loss is summed over the rows (rescaled to ``n`` distinct shots when repeats of the
folds score each shot more than once), the penalty is fixed, so the weights start at
the default (weight 1 on the default ensemble) with tens of shots and move to the
best-fitting non-negative combination as ``n`` grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_expit

from lsm.models.delivered import DeliveredModel

#: Prior strength of the default in shots' worth of log-loss (provisional, see above).
STACK_TAU = 20.0
#: Candidates whose parts cannot be scaled by a weight (the residual booster adds its
#: trees to the whole margin) or that take another design matrix (plain fits).
UNSTACKABLE = ("residual", "fit")


def stack_weights(margins: np.ndarray, y: np.ndarray, *, default: int,
                  tau: float = STACK_TAU, n: int | None = None) -> tuple[np.ndarray, float]:
    """Non-negative weights over the columns of ``margins`` and an intercept.

    Parameters
    ----------
    margins : ndarray of shape (n_rows, n_candidates)
        Out-of-fold margins (log-odds) of each candidate.
    y : ndarray of shape (n_rows,)
        0/1 labels of the rows.
    default : int
        Column of the default candidate: the weights are pulled towards it.
    tau : float
        Strength of that pull, in shots' worth of log-loss.
    n : int, optional
        Distinct shots behind the rows (default: ``n_rows``).

    Returns
    -------
    (weights, intercept)

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=500); y = (rng.random(500) < 1 / (1 + np.exp(-2 * z))).astype(int)
    >>> w, b = stack_weights(np.column_stack([rng.normal(size=500), 2 * z]), y, default=0)
    >>> bool(w[1] > 0.8 and w[0] < 0.1)
    True
    """
    M = np.asarray(margins, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rows, k = M.shape
    scale = (n or rows) / rows
    sign = 2.0 * y - 1.0
    w0 = np.zeros(k)
    w0[default] = 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k]
        m = M @ w + b
        r = -sign * np.exp(log_expit(-sign * m)) * scale
        loss = -log_expit(sign * m).sum() * scale + 0.5 * tau * np.sum((w - w0) ** 2)
        return float(loss), np.concatenate([M.T @ r + tau * (w - w0), [r.sum()]])

    res = minimize(objective, np.concatenate([w0, [0.0]]), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * k + [(None, None)],
                   options={"maxiter": 500, "gtol": 1e-8})
    return res.x[:k].copy(), float(res.x[k])


def stackable(names: Sequence[str], strategies: Sequence[Any]) -> list[str]:
    """The candidates of ``names`` that a stack can hold (see :data:`UNSTACKABLE`)."""
    kind = {s.name: s.kind for s in strategies}
    return [n for n in names if kind.get(n) not in UNSTACKABLE]


def fit_stack(selection: Any, strategies: Sequence[Any], shots: Any, y: np.ndarray, ctx: Any,
              *, tau: float = STACK_TAU, min_weight: float = 1e-3
              ) -> tuple[DeliveredModel, dict[str, float]]:
    """The stack of ``selection``'s candidates, refitted on all ``shots``.

    ``selection`` is the outcome of :func:`lsm.transfer.select.select_strategy` on the
    same shots (its out-of-fold margins ``oof`` and their rows).  Candidates with a
    weight below ``min_weight`` are dropped.  Returns the model and its weights by
    candidate name.
    """
    from lsm.transfer.select import _FITTERS

    by_name = {s.name: s for s in strategies}
    default = min(strategies, key=lambda s: s.rank).name
    names = [n for n in stackable(list(selection.oof), strategies)
             if n in by_name and np.isfinite(selection.oof[n]).all()]
    if default not in names:
        raise ValueError(f"the default candidate {default} has no out-of-fold margins")
    yy = np.asarray(y, dtype=np.float64)[selection.rows]
    M = np.column_stack([selection.oof[n] for n in names])
    w, b = stack_weights(M, yy, default=names.index(default), tau=tau, n=len(y))
    weights = {n: float(v) for n, v in zip(names, w, strict=True) if v >= min_weight}
    members: dict[str, Any] = {}
    coef: dict[str, float] = {}
    neutral: dict[str, list[str]] = {}
    x_coef = None
    intercept = b
    for n, wn in weights.items():
        parts = _FITTERS[by_name[n].kind](by_name[n], shots, np.asarray(y, dtype=np.float64),
                                          ctx).parts()
        intercept += wn * float(parts.get("intercept", 0.0))
        for key, m in parts["members"].items():
            # the same member in two candidates (a source model, or a target model fitted
            # with the same seed on the same shots) predicts the same: weights add up
            members.setdefault(key, m)
            coef[key] = coef.get(key, 0.0) + wn * float(parts["weights"][key])
        neutral.update(parts.get("neutral") or {})
        if parts.get("x_coef") is not None:
            add = wn * np.asarray(parts["x_coef"], dtype=np.float64)
            x_coef = add if x_coef is None else x_coef + add
    model = DeliveredModel.assemble(
        strategy="stack(" + ", ".join(f"{v:.2f} {n}" for n, v in weights.items()) + ")",
        members=members, weights=coef, intercept=intercept, x_coef=x_coef,
        n_features=ctx.n_features, feature_names=ctx.feature_names, neutral=neutral)
    return model, weights
