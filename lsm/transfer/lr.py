"""Transfer stages of the logistic family.

Stage 1, :func:`adapt_lr`: the coefficients stay; the intercept alone is
re-fitted on the shots (maximum likelihood, a 1-D root of the score).  It
absorbs a change of prevalence or of the overall level of susceptibility.

Stage 2, :func:`finetune_lr`: all coefficients are re-fitted by L-BFGS on

    sum_i logloss_i(w, b) + lam / 2 * ||w - w_source||^2

starting from the stage-1 solution, the intercept unpenalised (L2-SP).  The
penalty is a Gaussian prior ``N(w_source, 1/lam)`` on every coefficient; with
standardised factors the default ``lam = 10`` lets a coefficient move about
0.3 from its source value before the shots have to pay for it.  For
comparison, scikit-learn's ``C = 1`` is ``lam = 1`` with the pull towards 0.
Because the loss is summed, more shots weigh more against the same prior.
On synthetic targets (10..100 shots per class) ``lam`` in 10..30 did best:
10 where the factor effects differ from the source's, 30 where only the
level does; ``lam <= 3`` over-fitted 10 shots per class.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize
from scipy.special import expit, log_expit

from lsm.models.lr import LogisticModel
from lsm.transfer import register_stages
from lsm.transfer.prior import check_shots


def adapt_lr(model: Any, X: Any, y: Any, *, random_state: int | None = 0) -> Any:
    """Stage 1: a copy of ``model`` with only its intercept re-fitted on the shots.

    Parameters
    ----------
    model : LogisticModel
        Fitted binary source model (not modified).
    X, y : array-like
        Target shots; ``y`` must hold both classes.
    random_state : int or None
        Unused (the fit is deterministic); accepted for a uniform interface.

    Returns
    -------
    LogisticModel
        New model: ``coef_`` equal to the source's, ``intercept_`` the
        maximum-likelihood intercept on the shots.
    """
    X, y01 = check_shots(model, X, y, dtype=np.float64)
    z = X @ model.coef_[0]
    b0 = float(model.intercept_[0])
    target = y01.sum()

    def score(b: float) -> float:  # increasing in b; its root is the ML intercept
        return float(expit(z + b).sum() - target)

    lo, hi = b0 - 1.0, b0 + 1.0
    while score(lo) > 0:
        lo -= 2.0 * (hi - lo)
    while score(hi) < 0:
        hi += 2.0 * (hi - lo)
    b = brentq(score, lo, hi, xtol=1e-12)
    out = copy.deepcopy(model)
    out.intercept_ = np.array([b], dtype=np.float64)
    return out


def finetune_lr(model: Any, X: Any, y: Any, *, source: Any, random_state: int | None = 0,
                lam: float = 10.0, max_iter: int = 500) -> Any:
    """Stage 2: re-fit all coefficients on the shots, pulled towards ``source``'s.

    Parameters
    ----------
    model : LogisticModel
        Starting point, usually the stage-1 model (not modified).
    X, y : array-like
        Target shots.
    source : LogisticModel
        Model whose coefficients anchor the L2 penalty (usually the source model).
    random_state : int or None
        Unused (L-BFGS is deterministic).
    lam : float, default 10.0
        Strength of the pull ``lam / 2 * ||w - w_source||^2`` against the
        summed log-loss; 0 is plain maximum likelihood.
    max_iter : int, default 500
        L-BFGS iterations.

    Returns
    -------
    LogisticModel
        New model with re-fitted ``coef_`` and ``intercept_``.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    X, y01 = check_shots(model, X, y, dtype=np.float64)
    w_src = np.asarray(source.coef_, dtype=np.float64).reshape(-1)
    if w_src.size != X.shape[1]:
        raise ValueError(f"source has {w_src.size} coefficients, the shots {X.shape[1]} features")
    sign = 2.0 * y01 - 1.0

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        m = sign * (X @ w + b)
        loss = -log_expit(m).sum() + 0.5 * lam * np.sum((w - w_src) ** 2)
        r = -sign * expit(-m)  # d loss_i / d (X w + b)
        grad = np.append(X.T @ r + lam * (w - w_src), r.sum())
        return float(loss), grad

    theta0 = np.append(model.coef_[0], model.intercept_[0]).astype(np.float64)
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-8})
    out = copy.deepcopy(model)
    out.coef_ = res.x[:-1].reshape(1, -1).copy()
    out.intercept_ = res.x[-1:].copy()
    return out


register_stages(LogisticModel, adapt_lr, finetune_lr)
