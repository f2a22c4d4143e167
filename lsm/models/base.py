"""One interface for the four model families (rf, lr, xgb, mlp).

Every family is a scikit-learn classifier on a numeric matrix (the output of
:func:`lsm.stack.features.design_matrix`), plus:

- ``save(directory)`` / ``load(directory)``: artifacts that load without
  executing code (JSON + ``.npz`` read with ``allow_pickle=False``, XGBoost
  UBJSON, torch ``state_dict`` read with ``weights_only=True``);
- the two transfer stages, implemented per family in :mod:`lsm.transfer`
  and reached through :func:`lsm.transfer.adapt` / :func:`lsm.transfer.finetune`.

Families register themselves in :data:`FAMILIES` so that workflows never
branch on the model type.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

FAMILIES: dict[str, type[LsmClassifier]] = {}
FAMILY_NAMES = ("rf", "lr", "xgb", "mlp")


def register(cls: type[LsmClassifier]) -> type[LsmClassifier]:
    FAMILIES[cls.family] = cls
    return cls


class LsmClassifier(ClassifierMixin, BaseEstimator):
    """Base class: a binary landslide classifier of one family."""

    family: ClassVar[str] = ""

    @abstractmethod
    def fit(self, X: Any, y: Any) -> LsmClassifier: ...

    @abstractmethod
    def predict_proba(self, X: Any) -> np.ndarray: ...

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    @abstractmethod
    def save(self, directory: Path) -> list[Path]:
        """Write the fitted model into ``directory``; return the files written."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path) -> LsmClassifier:
        """Read a model written by :meth:`save` (never executes code from the files)."""


def get_family(name: str) -> type[LsmClassifier]:
    """The estimator class of a family name (``rf``, ``lr``, ``xgb``, ``mlp``)."""
    import lsm.models  # noqa: F401  (registers the families)

    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose from {', '.join(FAMILY_NAMES)}")\
            from None


def parse_families(text: str) -> list[str]:
    """``"all"`` or a comma list (``"rf,xgb"``) -> validated list of family names."""
    if text.strip() == "all":
        return list(FAMILY_NAMES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in FAMILY_NAMES]
    if bad or not names:
        raise ValueError(f"--model: unknown family {bad or text!r}; choose from "
                         f"{', '.join(FAMILY_NAMES)} or 'all'")
    return names
