"""Prior (prevalence) shift of predicted probabilities, and the shots' checks.

:func:`check_shots` validates the target shots that every family's transfer
stages receive against the model they adapt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype="float64"), 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def prior_shift(p: np.ndarray, from_prevalence: float, to_prevalence: float) -> np.ndarray:
    """Re-base probabilities from a training prevalence to the expected one.

    Bayes' rule with unchanged class-conditional densities:
    ``logit(p') = logit(p) + logit(to) - logit(from)``.  Models trained on
    balanced shots (prevalence 0.5) over-predict landslides where they are
    rare; this puts the delivered probabilities on the right base rate.
    """
    for name, v in (("from_prevalence", from_prevalence), ("to_prevalence", to_prevalence)):
        if not 0 < v < 1:
            raise ValueError(f"{name} must be in (0, 1), got {v}")
    z = _logit(p) + _logit(to_prevalence) - _logit(from_prevalence)
    return 1.0 / (1.0 + np.exp(-z))


def check_shots(model: Any, X: Any, y: Any, **check_params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate target shots for a fitted binary ``model``; return ``(X, y01)``.

    ``X`` is checked against the model's features (count and, for a
    DataFrame, names) without changing the model; ``check_params`` go to
    :func:`sklearn.utils.validation.check_array`.  ``y`` must use the model's
    two class labels and hold both; ``y01`` is 1.0 where ``y`` is the model's
    second class (the landslide class for 0/1 labels).
    """
    check_is_fitted(model)
    classes = np.asarray(model.classes_)
    if classes.size != 2:
        raise ValueError(f"transfer stages need a binary model; this one has classes "
                         f"{classes.tolist()}")
    X = validate_data(model, X, reset=False, **check_params)
    y = column_or_1d(y)
    check_consistent_length(X, y)
    unknown = np.setdiff1d(np.unique(y), classes)
    if unknown.size:
        raise ValueError(f"shot labels {unknown.tolist()} are not classes of the model "
                         f"({classes.tolist()})")
    y01 = (y == classes[1]).astype(np.float64)
    if y01.min() == y01.max():
        raise ValueError("the shots must hold both classes (landslide and non-landslide); "
                         f"got only {y[0]!r}")
    return X, y01
