"""Sample weights for source pretraining: region balance and covariate-shift importance.

- :func:`balanced_weights`: pooled rows of several source regions, weighted so
  that every region's weights sum to the same total (mean 1 overall);
- :func:`importance_weights`: a domain classifier between the source rows and
  unlabelled target rows, both in the shared normalised design space, gives
  ``w = p(target | x) / p(source | x)`` (the density ratio, with the classifier
  fitted on balanced classes), clipped and normalised to mean 1, so that
  training on the source looks like training on target-like terrain;
- :func:`effective_sample_size`: how many equally weighted rows the weights
  are worth (Kish).

Pure numpy / scikit-learn: no file I/O, no knowledge of regions or runs.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> Xs = rng.normal(size=(500, 2)); Xt = rng.normal(loc=[1.0, 0.0], size=(300, 2))
>>> w, info = importance_weights(Xs, Xt, seed=0)
>>> round(float(w.mean()), 6), bool(np.corrcoef(w, Xs[:, 0])[0, 1] > 0.5)
(1.0, True)
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

DomainClassifier = Literal["logistic", "boosting"]


def balanced_weights(groups: Any) -> np.ndarray:
    """Weights giving every group (region) the same total; mean 1 over all rows.

    Example
    -------
    >>> balanced_weights(["a", "a", "a", "b"]).tolist()
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    g = np.asarray(groups)
    if g.ndim != 1 or g.size == 0:
        raise ValueError("groups must be a non-empty 1-d array, one label per row")
    names, idx, counts = np.unique(g, return_inverse=True, return_counts=True)
    return g.size / (names.size * counts[idx].astype(np.float64))


def effective_sample_size(w: Any) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (= n for equal weights)."""
    w = np.asarray(w, dtype=np.float64)
    s2 = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / s2) if s2 > 0 else 0.0


def importance_weights(
    X_source: Any, X_target: Any, *, classifier: DomainClassifier = "logistic",
    clip: float = 10.0, base_weight: Any = None, n_splits: int = 5, max_target: int = 20_000,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Covariate-shift weights of the source rows towards the target's distribution.

    A classifier learns to tell target rows from source rows (classes balanced,
    so its odds estimate the density ratio ``p_target(x) / p_source(x)``); each
    source row's odds come from a model that did not see the row (``n_splits``
    cross-fitting), so the weights do not reward memorised rows.

    Parameters
    ----------
    X_source, X_target : array-like of shape (n, n_features)
        Source training rows and unlabelled target rows, in the same
        (normalised) design space.  Non-finite values are read as 0.
    classifier : {"logistic", "boosting"}, default "logistic"
        L2 logistic regression (smooth log-linear weights) or histogram
        gradient boosting (non-linear, noisier).
    clip : float, default 10
        Weights are clipped to ``[mean / clip, mean * clip]`` before the final
        normalisation, which bounds how much a few rows can dominate.
    base_weight : array-like of shape (n_source,), optional
        Weights the source rows already carry (e.g. :func:`balanced_weights`):
        the domain classifier sees the source as weighted by them, and the result
        is ``base_weight * ratio``, normalised to mean 1.
    n_splits : int, default 5
        Cross-fitting folds.
    max_target : int, default 20000
        Target rows beyond this are subsampled (seeded).
    seed : int, default 0

    Returns
    -------
    w : ndarray of shape (n_source,)
        Non-negative weights with mean 1.
    info : dict
        ``ess`` (effective sample size), ``ess_fraction`` (of n_source),
        ``domain_auc`` (out-of-fold AUC of the domain classifier: 0.5 = the
        regions look alike), ``clipped`` (rows at a clip bound), ``max_weight``.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    Xs = np.nan_to_num(np.asarray(X_source, dtype=np.float64), nan=0.0, posinf=0.0,
                       neginf=0.0)
    Xt = np.nan_to_num(np.asarray(X_target, dtype=np.float64), nan=0.0, posinf=0.0,
                       neginf=0.0)
    if Xs.ndim != 2 or Xt.ndim != 2 or Xs.shape[1] != Xt.shape[1]:
        raise ValueError(f"X_source {Xs.shape} and X_target {Xt.shape} must be 2-d with the "
                         "same columns")
    if len(Xs) < n_splits or len(Xt) < n_splits:
        raise ValueError(f"need at least {n_splits} source and target rows "
                         f"(got {len(Xs)} and {len(Xt)})")
    if not clip > 1:
        raise ValueError(f"clip={clip!r}: expected a number above 1")
    rng = np.random.default_rng(seed)
    if len(Xt) > max_target:
        Xt = Xt[rng.choice(len(Xt), size=max_target, replace=False)]
    base = (np.ones(len(Xs)) if base_weight is None
            else np.asarray(base_weight, dtype=np.float64).reshape(-1))
    if base.shape != (len(Xs),) or (base < 0).any() or not np.isfinite(base).all():
        raise ValueError("base_weight must hold one finite, non-negative weight per source row")
    base = base / base.mean()

    X = np.vstack([Xs, Xt])
    d = np.r_[np.zeros(len(Xs)), np.ones(len(Xt))]
    # each domain totals the same weight: the classifier's odds are then the density ratio
    sw = np.r_[base * (len(X) / 2) / base.sum(), np.full(len(Xt), len(X) / (2 * len(Xt)))]
    p = np.empty(len(X))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    # one thread: OpenMP spinning in the boosting made it ~50x slower on busy cores
    with threadpool_limits(limits=1):
        for train, test in folds.split(X, d):
            model = _domain_model(classifier, seed)
            model.fit(X[train], d[train], **{_weight_arg(model): sw[train]})
            p[test] = model.predict_proba(X[test])[:, 1]
    p = np.clip(p, 1e-6, 1 - 1e-6)
    ratio = p[: len(Xs)] / (1 - p[: len(Xs)])
    w = base * ratio
    w = w / w.mean()
    lo, hi = 1.0 / clip, clip
    clipped = int(((w < lo) | (w > hi)).sum())
    w = np.clip(w, lo, hi)
    w = w / w.mean()
    ess = effective_sample_size(w)
    info = {"ess": ess, "ess_fraction": ess / len(w), "n_source": int(len(Xs)),
            "n_target": int(len(Xt)), "domain_auc": float(roc_auc_score(d, p, sample_weight=sw)),
            "clipped": clipped, "max_weight": float(w.max()), "classifier": classifier}
    return w, info


def _domain_model(classifier: str, seed: int) -> Any:
    if classifier == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    if classifier == "boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.1,
                                              min_samples_leaf=50, random_state=seed)
    raise ValueError(f"classifier={classifier!r}: choose 'logistic' or 'boosting'")


def _weight_arg(model: Any) -> str:
    """The fit keyword that carries sample weights (a pipeline routes it to its last step)."""
    return f"{model.steps[-1][0]}__sample_weight" if hasattr(model, "steps") else "sample_weight"
