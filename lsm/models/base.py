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

from lsm.errors import ArtifactError
from lsm.io.artifacts import read_json, verify_manifest

FAMILIES: dict[str, type[LsmClassifier]] = {}
#: Every model folder's description of the fitted model (family, params, inputs).
META = "meta.json"
FAMILY_NAMES = ("rf", "lr", "xgb", "mlp")


def register(cls: type[LsmClassifier]) -> type[LsmClassifier]:
    FAMILIES[cls.family] = cls
    return cls


class LsmClassifier(ClassifierMixin, BaseEstimator):
    """Base class: a binary landslide classifier of one family."""

    family: ClassVar[str] = ""

    @abstractmethod
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LsmClassifier:
        """Train on ``X`` and labels ``y``; ``sample_weight`` (n_samples,) weighs each row's
        loss as scikit-learn does (an integer weight acts like repeating the row, 0 removes
        its influence on the fit)."""

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


def check_weights(sample_weight: Any, X: np.ndarray) -> np.ndarray | None:
    """Validated float64 ``sample_weight`` for ``X`` (None stays None).

    Weights must be finite and non-negative, one per row, and not all zero
    (:class:`ValueError` otherwise).  The array is a copy: fitting never writes
    into the caller's weights.
    """
    if sample_weight is None:
        return None
    from sklearn.utils.validation import _check_sample_weight

    return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True,
                                copy=True)


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


# -- meta.json helpers, used by every family's save/load --------------------------


def meta_dict(model: LsmClassifier) -> dict[str, Any]:
    """What ``meta.json`` records of a fitted model: family, versions, params, inputs."""
    import sklearn

    import lsm

    params = model.get_params()
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None  # a RandomState object is not worth persisting
    cw = params.get("class_weight")
    if isinstance(cw, dict):  # JSON object keys would turn class labels into strings
        params["class_weight"] = [[k, v] for k, v in cw.items()]
    names = getattr(model, "feature_names_in_", None)
    return {
        "family": model.family,
        "format": 1,
        "lsm_version": lsm.__version__,
        "sklearn_version": sklearn.__version__,
        "params": params,
        "classes": np.asarray(model.classes_).tolist(),
        "n_features_in": int(model.n_features_in_),
        "feature_names_in": None if names is None else [str(n) for n in names],
    }


def read_meta(directory: Path, family: str) -> dict[str, Any]:
    """Verify the folder's manifest, then return its ``meta.json`` if it holds ``family``."""
    directory = Path(directory)
    verify_manifest(directory)
    meta = read_json(directory / META)
    found = meta.get("family") if isinstance(meta, dict) else None
    if found != family:
        raise ArtifactError(f"{directory / META}: holds a {found!r} model, not a {family!r} one")
    return meta


def params_from_meta(directory: Path, cls: type[LsmClassifier]) -> dict[str, Any]:
    """Constructor parameters recorded in ``directory/meta.json`` (verified first)."""
    meta = read_meta(directory, cls.family)
    params = meta.get("params")
    if not isinstance(params, dict):
        raise ArtifactError(f"{Path(directory) / META}: no 'params' object")
    params = dict(params)
    if isinstance(params.get("class_weight"), list):
        params["class_weight"] = {k: v for k, v in params["class_weight"]}
    unknown = set(params) - set(cls().get_params())
    if unknown:
        raise ArtifactError(f"{Path(directory) / META}: unknown parameters {sorted(unknown)} "
                            f"for {cls.__name__}")
    return params


def set_fitted_from_meta(model: LsmClassifier, directory: Path) -> dict[str, Any]:
    """Set ``classes_``, ``n_features_in_``, ``feature_names_in_`` from ``meta.json``."""
    path = Path(directory) / META
    meta = read_json(path)
    try:
        model.classes_ = np.asarray(meta["classes"])
        model.n_features_in_ = int(meta["n_features_in"])
        if meta.get("feature_names_in") is not None:
            names = np.asarray(meta["feature_names_in"], dtype=object)
            if names.size != model.n_features_in_:
                raise ValueError("feature_names_in does not match n_features_in")
            model.feature_names_in_ = names
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: malformed ({err})") from None
    return meta
