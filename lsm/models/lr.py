"""Logistic regression family (``"lr"``): L2-penalised, fitted with L-BFGS.

The fitted model is just ``coef_`` and ``intercept_``; ``predict_proba`` is
computed from them directly, so a model rebuilt from its JSON artifact, or one
whose coefficients the transfer stages re-estimated, predicts exactly like
the original.

Example
-------
>>> model = LogisticModel(C=1.0).fit(X, y)              # doctest: +SKIP
>>> model.save(tmp_path / "lr")                          # doctest: +SKIP
>>> LogisticModel.load(tmp_path / "lr").predict_proba(X) # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lsm.errors import ArtifactError
from lsm.io.artifacts import read_json, write_json
from lsm.io.values import finite_array
from lsm.models.base import LsmClassifier, check_weights, register

COEF = "coef.json"


@register
class LogisticModel(LsmClassifier):
    """Logistic regression on the design matrix.

    Parameters
    ----------
    C : float, default 1.0
        Inverse L2 strength, as in :class:`sklearn.linear_model.LogisticRegression`
        (the loss is summed over samples, the penalty is ``||w||^2 / (2 C)``).
    max_iter : int, default 1000
        L-BFGS iterations.
    tol : float, default 1e-6
        L-BFGS tolerance.
    class_weight : dict, "balanced" or None, default None
        Per-class sample weights.
    random_state : int or None, default 0
        Kept for a uniform interface; L-BFGS is deterministic.

    Attributes
    ----------
    classes_, coef_ (``(1, n_features)`` for two classes), intercept_,
    n_features_in_, feature_names_in_ (when fitted on a DataFrame), n_iter_.
    """

    family = "lr"
    label = "logistic regression"
    short_label = "LogReg"
    order = 20
    shap_explainer = "linear"
    decision_is_logit = True
    delivered_target = True
    stage_candidates = ({"lam": 10.0}, {"lam": 1.0})
    artifacts = (COEF,)
    #: Stage-2 options (L2-SP strength ``lam``) tried by ``--anchor auto``, strong first.
    anchor_grid = ({"lam": 100.0}, {"lam": 10.0}, {"lam": 1.0}, {"lam": 0.1})

    #: scikit-learn's constraints on the parameters shared with its LogisticRegression
    _parameter_constraints = {k: LogisticRegression._parameter_constraints[k] for k in (
        "C", "max_iter", "tol", "class_weight", "random_state")}

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-6,
                 class_weight: dict | str | None = None, random_state: int | None = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticModel:
        """Fit on ``X``, ``y``; ``sample_weight`` multiplies each row's log-loss term."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        sample_weight = check_weights(sample_weight, X)
        check_classification_targets(y)
        classes = np.unique(y)
        if classes.size < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                             f"got only one class ({classes[0]!r})")
        est = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol,
                                 class_weight=self.class_weight, random_state=self.random_state)
        est.fit(X, y, sample_weight=sample_weight)
        self.classes_ = est.classes_
        self.coef_ = np.array(est.coef_, dtype=np.float64)
        self.intercept_ = np.array(est.intercept_, dtype=np.float64)
        self.n_iter_ = np.asarray(est.n_iter_)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Linear predictor(s): log-odds of the second class for two classes."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        z = X @ self.coef_.T + self.intercept_
        return z[:, 0] if self.classes_.size == 2 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        z = self.decision_function(X)
        if self.classes_.size == 2:
            p1 = expit(z)
            return np.column_stack([1.0 - p1, p1])
        return softmax(z, axis=1)

    # -- artifacts: coef.json beside the base class's meta.json -----------------------

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        return [write_json(directory / COEF, {"coef": self.coef_.tolist(),
                                              "intercept": self.intercept_.tolist(),
                                              "n_iter": np.asarray(self.n_iter_).tolist()})]

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        coef = read_json(directory / COEF)
        try:
            self.coef_ = np.asarray(coef["coef"], dtype=np.float64).reshape(
                -1, self.n_features_in_)
            self.intercept_ = np.asarray(coef["intercept"], dtype=np.float64).reshape(-1)
            self.n_iter_ = np.asarray(coef.get("n_iter", [0]))
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{directory / COEF}: malformed ({err})") from None
        if self.coef_.shape[0] != self.intercept_.size:
            raise ArtifactError(f"{directory / COEF}: coef and intercept shapes do not match")
        k = 1 if self.classes_.size == 2 else self.classes_.size
        finite_array(self.coef_, f"{directory / COEF}: coef", shape=(k, self.n_features_in_))
        finite_array(self.intercept_, f"{directory / COEF}: intercept", shape=(k,))
