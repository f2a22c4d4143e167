"""The delivered transfer model: source and target models combined on the logit scale.

A :class:`DeliveredModel` is what ``lsm finetune`` maps.  It is built by
:mod:`lsm.transfer.select` from the target shots alone, and covers every
transfer strategy that scored well there, in one form::

    z(x) = intercept + sum_m weight_m * logit(member_m(x)) + x @ x_coef + residual(x)
    P(landslide | x) = sigmoid(z(x))

- *recalibrated source*: one member (a source model), Platt weight and intercept;
- *offset model*: the source logit plus a ridge logistic regression on the factors;
- *residual boosting*: a small XGBoost booster trained with the calibrated source
  logit as its base margin (``residual``), i.e. boosting what the source gets wrong;
- *target-only*, *stage 1*, *stage 2*: one member with weight 1;
- *blend*: a weighted sum of a recalibrated source and a target-trained member.

Members are ordinary family models saved in their own code-free formats under
``members/<name>/``; the head is ``head.json`` and the residual booster
``residual.ubj`` (UBJSON).  Nothing is unpickled on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted, validate_data

from lsm.errors import ArtifactError
from lsm.io.artifacts import atomic_write_bytes, read_json, write_json
from lsm.models.base import META, LsmClassifier, get_family, register

#: Member probabilities are clipped to [eps, 1 - eps] before the logit: a forest's
#: unanimous 0 or 1 would otherwise dominate any combination (|logit| <= 6.9).
LOGIT_EPS = 1e-3
HEAD = "head.json"
RESIDUAL = "residual.ubj"
MEMBERS = "members"


def member_logit(model: Any, X: Any) -> np.ndarray:
    """Log-odds of the landslide class of a fitted binary family model."""
    if hasattr(model, "decision_function") and getattr(model, "decision_is_logit", False):
        z = np.asarray(model.decision_function(X), dtype=np.float64)
        lim = np.log(1 - LOGIT_EPS) - np.log(LOGIT_EPS)
        return np.clip(z, -lim, lim)
    p = np.clip(np.asarray(model.predict_proba(X)[:, 1], dtype=np.float64), LOGIT_EPS,
                1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def neutralised(X: Any, columns: list[str]) -> Any:
    """``X`` with ``columns`` set to 0 (their mean after normalisation); a copy if any."""
    if not columns:
        return X
    X = X.copy()
    if hasattr(X, "columns"):
        X[list(columns)] = 0.0
    else:
        raise TypeError("neutralising factors needs a DataFrame with column names")
    return X


@register
class DeliveredModel(LsmClassifier):
    """Logit-scale combination of source and target models (see module docstring).

    Parameters
    ----------
    strategy : str
        Name of the strategy that built the model (``"offset(mlp, lam=10)"``, ...);
        descriptive only.

    Attributes
    ----------
    members_ : dict of str to LsmClassifier
        Fitted family models whose logits enter the head.
    weights_ : dict of str to float
        Coefficient of each member's logit.
    intercept_ : float
    x_coef_ : ndarray of shape (n_features,) or None
        Coefficients of the factors themselves (offset model).
    booster_ : xgboost.Booster or None
        Residual booster added to the margin.
    classes_, n_features_in_, feature_names_in_
    """

    family = "delivered"
    selectable = False
    artifacts = (HEAD,)
    #: permutation SHAP: its cost grows with rows x background x factors
    shap_background = 50

    _parameter_constraints = {"strategy": [str]}

    def __init__(self, *, strategy: str = "") -> None:
        self.strategy = strategy

    @classmethod
    def assemble(cls, *, strategy: str, members: dict[str, Any], weights: dict[str, float],
                 intercept: float, x_coef: np.ndarray | None = None, booster: Any = None,
                 feature_names: list[str] | None = None, n_features: int,
                 neutral: dict[str, list[str]] | None = None) -> DeliveredModel:
        """Build a fitted model from its parts (used by :mod:`lsm.transfer.select`).

        ``neutral`` names, per member, input columns held at 0 (the region's mean
        after normalisation) before that member predicts: a factor whose meaning
        differs between source and target is then ignored by that source model.
        """
        model = cls(strategy=strategy)
        model._set_head(members=members, weights=weights, intercept=intercept, x_coef=x_coef,
                        booster=booster, neutral=neutral)
        model.classes_ = np.array([0, 1])
        model.n_features_in_ = int(n_features)
        if feature_names is not None:
            model.feature_names_in_ = np.asarray(feature_names, dtype=object)
        return model

    def _set_head(self, *, members: dict[str, Any], weights: dict[str, float],
                  intercept: float, x_coef: Any, booster: Any,
                  neutral: dict[str, list[str]] | None) -> None:
        if set(weights) != set(members):
            raise ValueError("weights and members must name the same models")
        neutral = {k: list(v) for k, v in (neutral or {}).items() if v}
        if set(neutral) - set(members):
            raise ValueError("neutral columns name unknown members")
        self.neutral_ = neutral
        self.members_ = dict(members)
        self.weights_ = {k: float(v) for k, v in weights.items()}
        self.intercept_ = float(intercept)
        self.x_coef_ = None if x_coef is None else np.asarray(x_coef, dtype=np.float64)
        self.booster_ = booster

    def fit(self, X: Any, y: Any) -> DeliveredModel:
        raise NotImplementedError(
            "a DeliveredModel is built from source models and target shots by "
            "lsm.transfer.select.fit_delivered, not by fit(X, y)")

    def decision_function(self, X: Any) -> np.ndarray:
        """Log-odds of a landslide."""
        check_is_fitted(self, "weights_")
        frame = X
        Xa = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan")
        z = np.full(Xa.shape[0], self.intercept_, dtype=np.float64)
        for name, w in self.weights_.items():
            if w != 0.0:
                z += w * member_logit(self.members_[name],
                                      neutralised(frame, self.neutral_.get(name, [])))
        if self.x_coef_ is not None:
            z += np.nan_to_num(Xa) @ self.x_coef_
        if self.booster_ is not None:
            import xgboost as xgb

            d = xgb.DMatrix(Xa.astype(np.float32), missing=np.nan, base_margin=z)
            z = np.asarray(self.booster_.predict(d, output_margin=True), dtype=np.float64)
        return z

    def predict_proba(self, X: Any) -> np.ndarray:
        p = expit(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    # -- artifacts: members/<name>/ (their own formats), head.json, residual.ubj -------

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        files: list[Path] = []
        for name, m in self.members_.items():
            files += m.save(directory / MEMBERS / name)
        head = {
            "family": self.family, "format": 1, "strategy": self.strategy,
            "members": {k: getattr(m, "family", "") for k, m in self.members_.items()},
            "weights": self.weights_, "intercept": self.intercept_, "neutral": self.neutral_,
            "x_coef": None if self.x_coef_ is None else self.x_coef_.tolist(),
            "residual": self.booster_ is not None,
            "n_features_in": self.n_features_in_,
            "feature_names_in": (None if getattr(self, "feature_names_in_", None) is None
                                 else [str(n) for n in self.feature_names_in_]),
        }
        if self.booster_ is not None:
            atomic_write_bytes(directory / RESIDUAL,
                               bytes(self.booster_.save_raw(raw_format="ubj")))
            files.append(directory / RESIDUAL)
        files.append(write_json(directory / HEAD, head))
        return files

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        head = read_json(directory / HEAD)
        check_head(head, directory / HEAD)
        n = self.n_features_in_
        try:
            members = {name: get_family(str(fam)).load(_member_dir(directory, name))
                       for name, fam in head["members"].items()}
            x_coef = head.get("x_coef")
            if int(head["n_features_in"]) != n:
                raise ValueError(f"n_features_in {head['n_features_in']}, meta.json says {n}")
            self._set_head(
                members=members, weights={k: float(v) for k, v in head["weights"].items()},
                intercept=float(head["intercept"]),
                x_coef=None if x_coef is None else np.asarray(x_coef, dtype=np.float64),
                booster=None, neutral={str(k): [str(c) for c in v]
                                       for k, v in (head.get("neutral") or {}).items()})
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{directory / HEAD}: malformed ({err})") from None
        if self.x_coef_ is not None and self.x_coef_.shape != (n,):
            raise ArtifactError(f"{directory / HEAD}: x_coef has {self.x_coef_.size} values "
                                f"for {n} features")
        check_members(self, directory)
        if head.get("residual"):
            from lsm.models.xgb import check_booster, load_booster

            booster = load_booster(directory / RESIDUAL)
            check_booster(booster, directory / RESIDUAL, n)
            booster.set_param({"nthread": 1})
            self.booster_ = booster

    @classmethod
    def _upgrade_meta(cls, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Folders written before the shared format keep only the family and strategy in
        ``meta.json``; the head holds the rest."""
        if "params" in meta:
            return meta
        head = read_json(directory / HEAD)
        if not isinstance(head, dict):
            raise ArtifactError(f"{directory / HEAD}: malformed (not a JSON object)")
        return {**meta, "params": {"strategy": str(head.get("strategy", ""))},
                "classes": [0, 1], "n_features_in": head.get("n_features_in"),
                "feature_names_in": head.get("feature_names_in")}


def check_head(head: Any, path: Path) -> None:
    """Raise :class:`ArtifactError` unless the values of ``head.json`` are usable: the
    members a mapping of names to family names, the weights, intercept and factor
    coefficients finite numbers, the neutralised columns lists of names."""
    from lsm.io import values as v

    head = v.mapping(head, str(path))
    members = v.mapping(head.get("members"), f"{path}: members")
    for name, fam in members.items():
        v.text(fam, f"{path}: members.{name}")
    weights = v.mapping(head.get("weights"), f"{path}: weights")
    for name, w in weights.items():
        v.number(w, f"{path}: weights.{name}")
    if set(weights) != set(members):
        raise ArtifactError(f"{path}: weights name {sorted(weights)}, members "
                            f"{sorted(members)}; they must name the same models")
    v.number(head.get("intercept"), f"{path}: intercept")
    v.number(head.get("n_features_in"), f"{path}: n_features_in", lo=1, integer=True)
    if head.get("x_coef") is not None:
        v.finite_array(v.sequence(head["x_coef"], f"{path}: x_coef"), f"{path}: x_coef",
                       kind="fiu")
    for name, cols in v.mapping(head.get("neutral") or {}, f"{path}: neutral").items():
        v.sequence(cols, f"{path}: neutral.{name}", of=str)
    if not isinstance(head.get("residual", False), bool):
        raise ArtifactError(f"{path}: residual: {head.get('residual')!r} is not true or false")
    names = head.get("feature_names_in")
    if names is not None:
        v.sequence(names, f"{path}: feature_names_in", of=str,
                   length=int(head["n_features_in"]))


def check_members(model: DeliveredModel, directory: Path) -> None:
    """Every member takes the delivered model's inputs (a member folder swapped in from a
    model on other factors is named with ``head.json``), and neutralised columns are
    inputs."""
    names = getattr(model, "feature_names_in_", None)
    want = None if names is None else [str(n) for n in names]
    for name, m in model.members_.items():
        got = getattr(m, "feature_names_in_", None)
        got = None if got is None else [str(c) for c in got]
        if int(m.n_features_in_) != model.n_features_in_ or (
                want is not None and got is not None and got != want):
            diff = sorted(set(got or []) ^ set(want or []))[:3]
            raise ArtifactError(
                f"{directory / MEMBERS / name}: member inputs ({m.n_features_in_} features"
                f"{', e.g. ' + ', '.join(diff) if diff else ''}) differ from those of "
                f"{directory / HEAD} ({model.n_features_in_}); the member is from another "
                "model")
        unknown = [c for c in model.neutral_.get(name, []) if want is not None and
                   c not in want]
        if unknown:
            raise ArtifactError(f"{directory / HEAD}: neutral.{name}: {unknown[0]!r} is not "
                                "an input of the model")


def _member_dir(directory: Path, name: object) -> Path:
    """``members/<name>/`` of a delivered model folder, for a name from ``head.json``.

    The name must be one plain folder name inside ``members/`` (no ``..``, ``/``, absolute
    path or symlink leading out), and the member's own manifest must be listed in the
    folder's manifest: a member is part of the verified model, never a folder elsewhere.
    """
    from lsm.io.artifacts import MANIFEST, manifest_entries
    from lsm.io.paths import inside

    if not isinstance(name, str) or "/" in name:
        raise ArtifactError(f"{directory / HEAD}: member name {name!r} must be one folder "
                            f"name inside {MEMBERS}/")
    path = inside(directory, f"{MEMBERS}/{name}", what=f"{HEAD} member")
    if f"{MEMBERS}/{name}/{META}" not in manifest_entries(directory / MANIFEST):
        raise ArtifactError(f"{directory / HEAD}: member {name!r} is not covered by "
                            f"{directory / MANIFEST}; refusing to load it")
    return path
