"""Gradient-boosted trees family (``"xgb"``), XGBoost ``hist``.

The fitted model is an :class:`xgboost.Booster` (``booster_``), saved as
UBJSON (``model.ubj``), XGBoost's own non-executable format.  ``xgboost`` is
imported inside the methods only, so importing :mod:`lsm.models` (and running
``lsm --help``) does not load it.

Example
-------
>>> model = XGBModel(n_estimators=300).fit(X, y)      # doctest: +SKIP
>>> model.save(tmp_path / "xgb")                       # doctest: +SKIP
>>> XGBModel.load(tmp_path / "xgb").predict_proba(X)   # doctest: +SKIP
"""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.utils import Tags, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lsm.errors import ArtifactError
from lsm.io.artifacts import atomic_write_bytes
from lsm.io.values import number
from lsm.models.base import LsmClassifier, check_weights, first_line, register

BOOSTER = "model.ubj"


@register
class XGBModel(LsmClassifier):
    """Boosted trees with a logistic objective (softmax for more than two classes).

    Parameters
    ----------
    n_estimators : int, default 300
        Boosting rounds.
    max_depth : int, default 4
    learning_rate : float, default 0.05
    subsample : float, default 0.8
        Row share per tree.
    colsample_bytree : float, default 0.8
        Column share per tree.
    min_child_weight : float, default 1.0
    reg_lambda : float, default 1.0
        L2 penalty on leaf values.
    tree_method : str, default "hist"
    n_jobs : int or None, default -1
        Threads; -1 or None: all cores.
    random_state : int or None, default 0

    Attributes
    ----------
    booster_ : xgboost.Booster
        Trained on class indices ``0..k-1``.
    classes_, n_features_in_, feature_names_in_ (when fitted on a DataFrame).
    """

    family = "xgb"
    label = "XGBoost"
    short_label = "XGBoost"
    order = 30
    shap_explainer = "booster"
    delivered_target = True
    artifacts = (BOOSTER,)
    #: Stage-2 options (extra boosting rounds) tried by ``--anchor auto``, strong first.
    anchor_grid = ({"n_rounds": 10}, {"n_rounds": 40},
                   {"n_rounds": 100, "learning_rate": 0.1, "max_depth": 3})

    #: XGBoost's ranges (its parameter docs), narrowed where a value makes a useless model:
    #: no rounds, depth 0 (only the lossguide policy accepts it), a zero learning rate or
    #: an empty sample of rows or columns
    _parameter_constraints = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_depth": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, 1, closed="right")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample_bytree": [Interval(Real, 0, 1, closed="right")],
        "min_child_weight": [Interval(Real, 0, None, closed="left")],
        "reg_lambda": [Interval(Real, 0, None, closed="left")],
        "tree_method": [StrOptions({"hist", "approx", "exact", "auto"})],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(self, *, n_estimators: int = 300, max_depth: int = 4,
                 learning_rate: float = 0.05, subsample: float = 0.8,
                 colsample_bytree: float = 0.8, min_child_weight: float = 1.0,
                 reg_lambda: float = 1.0, tree_method: str = "hist", n_jobs: int | None = -1,
                 random_state: int | None = 0) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.tree_method = tree_method
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> XGBModel:
        """Boost on ``X``, ``y``; ``sample_weight`` is the DMatrix row weight (it scales each
        row's gradient and hessian, so ``min_child_weight`` counts weighted rows)."""
        import xgboost as xgb

        X, y = validate_data(self, X, y, dtype=np.float32, ensure_all_finite="allow-nan")
        sample_weight = check_weights(sample_weight, X)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        if k < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                             f"got only one class ({self.classes_[0]!r})")
        params: dict[str, Any] = {
            "max_depth": self.max_depth, "eta": self.learning_rate,
            "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight, "lambda": self.reg_lambda,
            "tree_method": self.tree_method, "seed": xgb_seed(self.random_state),
            "verbosity": 0, **xgb_objective(k), **xgb_threads(self.n_jobs),
        }
        dtrain = xgb.DMatrix(X, label=y_idx, weight=sample_weight, missing=np.nan,
                             nthread=xgb_threads(self.n_jobs)["nthread"] or -1)
        self.booster_ = xgb.train(params, dtrain, num_boost_round=self.n_estimators)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32, ensure_all_finite="allow-nan")
        p = np.asarray(self.booster_.inplace_predict(X, missing=np.nan), dtype=np.float64)
        if p.ndim == 1:
            return np.column_stack([1.0 - p, p])
        return p / p.sum(axis=1, keepdims=True)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # -- artifacts: model.ubj (XGBoost's UBJSON) --------------------------------------

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        import xgboost as xgb

        atomic_write_bytes(directory / BOOSTER, bytes(self.booster_.save_raw(raw_format="ubj")))
        meta["xgboost_version"] = xgb.__version__
        meta["n_trees"] = n_trees(self.booster_)
        return [directory / BOOSTER]

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        booster = load_booster(directory / BOOSTER)
        if booster.num_features() != self.n_features_in_:
            raise ArtifactError(f"{directory / BOOSTER}: {booster.num_features()} features, "
                                f"meta.json says {self.n_features_in_}")
        if "n_trees" in meta and n_trees(booster) != number(
                meta["n_trees"], f"{directory / 'meta.json'}: n_trees", lo=0, integer=True):
            raise ArtifactError(f"{directory / BOOSTER}: {n_trees(booster)} trees, meta.json "
                                f"says {meta['n_trees']}")
        check_booster(booster, directory / BOOSTER, self.n_features_in_)
        booster.set_param(xgb_threads(self.n_jobs))
        self.booster_ = booster


def load_booster(path: Path) -> Any:
    """An XGBoost booster from a JSON/UBJ file; :class:`ArtifactError` if unreadable."""
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except (xgb.core.XGBoostError, UnicodeDecodeError, ValueError) as err:
        # random bytes can also fail while xgboost decodes its own error text
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ArtifactError(f"{path}: not a readable XGBoost model ({first[:200]})") from None
    return booster


def check_booster(booster: Any, path: Path, n_features: int) -> None:
    """Raise :class:`ArtifactError` unless every number of ``booster`` is finite and every
    split reads one of its ``n_features`` inputs (XGBoost loads NaN leaves and
    out-of-range split features without a word)."""
    import json

    def refuse(token: str) -> float:
        raise ValueError(token)

    try:
        doc = json.loads(bytes(booster.save_raw(raw_format="json")), parse_constant=refuse)
    except ValueError as err:
        raise ArtifactError(f"{path}: holds a {first_line(err)} value (leaf weight, split "
                            "or base score); refusing the model") from None
    learner = doc.get("learner", {})
    trees = learner.get("gradient_booster", {}).get("model", {}).get("trees", [])
    for i, tree in enumerate(trees):
        idx = np.asarray(tree.get("split_indices", []), dtype=np.int64)
        left = np.asarray(tree.get("left_children", []), dtype=np.int64)
        inner = left != -1 if left.shape == idx.shape else np.ones(idx.shape, bool)
        bad = np.flatnonzero(inner & ((idx < 0) | (idx >= n_features)))
        if bad.size:
            raise ArtifactError(f"{path}: tree {i} node {bad[0]} splits on feature "
                                f"{idx[bad[0]]}, not one of the {n_features} inputs")
    try:
        base = learner.get("learner_model_param", {}).get("base_score", "0.5")
        finite = np.isfinite(np.asarray(json.loads(base) if base.startswith("[") else
                                        [float(base)], dtype=np.float64)).all()
    except (TypeError, ValueError, AttributeError):
        finite = False
    if not finite:
        raise ArtifactError(f"{path}: base_score {base!r} is not a finite number")


def xgb_objective(n_classes: int) -> dict[str, Any]:
    """Objective parameters for ``n_classes`` classes."""
    if n_classes == 2:
        return {"objective": "binary:logistic", "eval_metric": "logloss"}
    return {"objective": "multi:softprob", "num_class": n_classes, "eval_metric": "mlogloss"}


def xgb_threads(n_jobs: int | None) -> dict[str, int]:
    """``nthread`` for ``n_jobs`` (None or <= 0: 0, XGBoost's "all cores")."""
    return {"nthread": 0 if n_jobs is None or n_jobs <= 0 else int(n_jobs)}


def n_trees(booster: Any) -> int:
    """Number of trees in ``booster``."""
    import json

    cfg = json.loads(booster.save_config())
    return int(cfg["learner"]["gradient_booster"]["gbtree_model_param"]["num_trees"])


def xgb_seed(random_state: Any) -> int:
    """An XGBoost ``seed`` from a scikit-learn ``random_state``."""
    if isinstance(random_state, (int, np.integer)):
        return int(random_state) % (2**31 - 1)
    return int(check_random_state(random_state).randint(2**31 - 1))

