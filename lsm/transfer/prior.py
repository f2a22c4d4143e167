"""Prior (prevalence) shift of predicted probabilities."""

from __future__ import annotations

import numpy as np


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
