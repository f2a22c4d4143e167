"""One interface for the model families (built in: rf, lr, xgb, mlp).

A family is one class, a subclass of :class:`LsmClassifier` decorated with
:func:`register`.  It is a scikit-learn classifier on a numeric matrix (the
output of :func:`lsm.stack.features.design_matrix`) and declares, as class
attributes and methods:

- ``family`` (its name), ``label`` / ``short_label`` (figures and reports),
  ``order`` (where it is listed);
- its artifact format: ``artifacts`` (the payload files every saved model
  has) and two hooks, ``_save_payload`` / ``_load_payload``, that write and
  read them in formats that load without executing code (JSON, ``.npz`` read
  with ``allow_pickle=False``, XGBoost UBJSON, torch ``state_dict`` read with
  ``weights_only=True``).  The shared :meth:`LsmClassifier.save` /
  :meth:`LsmClassifier.load` do the rest: ``meta.json`` (family, format,
  versions, constructor parameters, classes, input features), the sha256
  manifest, checking them on load and rebuilding the estimator;
- its two transfer stages: ``transfer_adapt`` / ``transfer_finetune`` (generic
  ones here: Platt recalibration of the source, then a logit blend with the
  family trained on the shots), or family-specific ones that
  :mod:`lsm.transfer` registers for the class; ``anchor_grid``, the stage-2
  options tried by ``--anchor auto``;
- its SHAP explainer (``shap_explainer``: ``forest``, ``booster``, ``linear``,
  ``deep`` or ``permutation``, see :mod:`lsm.explain.shap_values`), the units
  of its values and its background size;
- its part in the delivered model (``delivered_target``, ``few_shot_params``,
  ``stage_candidates``; see :mod:`lsm.transfer.select`).

:data:`FAMILIES` is the one registry: the CLI choices, the config schemas,
the reports and the tests derive from it, so workflows never branch on the
model type.

Example
-------
A family whose fitted state is one array file (``tests/models/test_extra_family.py``
runs such a family through fit, finetune, predict and explain):

>>> @register                                                # doctest: +SKIP
... class NaiveBayesModel(LsmClassifier):
...     family, label, order = "nb", "naive Bayes", 50
...     artifacts = ("state.npz",)
...     def __init__(self, *, var_smoothing=1e-9): ...
...     def fit(self, X, y, sample_weight=None): ...
...     def predict_proba(self, X): ...
...     def _save_payload(self, directory, meta):
...         return [write_arrays(directory / "state.npz", {"theta": self.theta_})]
...     def _load_payload(self, directory, meta):
...         self.theta_ = read_arrays(directory / "state.npz")["theta"]
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from lsm.errors import ArtifactError
from lsm.io.artifacts import MANIFEST, read_json, verify_manifest, write_json, write_manifest

#: The registry of model families: name -> class (see :func:`register`).
FAMILIES: dict[str, type[LsmClassifier]] = {}
#: Every model folder's description of the fitted model (family, params, inputs).
META = "meta.json"
#: Layout version of model folders (``meta.json``'s ``format``); load refuses newer ones.
ARTIFACT_FORMAT = 1

_M = TypeVar("_M", bound="LsmClassifier")


def register(cls: type[LsmClassifier]) -> type[LsmClassifier]:
    """Class decorator: add a family to :data:`FAMILIES` under ``cls.family``."""
    name = getattr(cls, "family", "")
    if not name or not name.replace("_", "").isalnum() or name in ("all", "lsm"):
        raise ValueError(f"{cls.__name__}: family name {name!r} must be a word (letters, "
                         "digits, _) other than 'all' and 'lsm'")
    FAMILIES[name] = cls
    return cls


def family_names() -> tuple[str, ...]:
    """Names of the families a user can pick (registered, ``selectable``), in ``order``."""
    import lsm.models  # noqa: F401  (registers the built-in families)

    chosen = [c for c in FAMILIES.values() if c.selectable]
    return tuple(c.family for c in sorted(chosen, key=lambda c: c.order))


class _FamilyNames(Sequence[str]):
    """:func:`family_names` as a live, read-only sequence (families added later show up)."""

    def __getitem__(self, i: Any) -> Any:
        return family_names()[i]

    def __len__(self) -> int:
        return len(family_names())

    def __repr__(self) -> str:
        return repr(family_names())


#: The selectable family names, e.g. ``("rf", "lr", "xgb", "mlp")`` (a live view).
FAMILY_NAMES: Sequence[str] = _FamilyNames()


class LsmClassifier(ClassifierMixin, BaseEstimator):
    """Base class: a binary landslide classifier of one family (see the module docstring)."""

    family: ClassVar[str] = ""
    #: Long and short names in figures and reports (default: the family name).
    label: ClassVar[str] = ""
    short_label: ClassVar[str] = ""
    #: Position in listings (``--model all``, tables); lower first.
    order: ClassVar[int] = 100
    #: False for models a user does not pick by name (the delivered model).
    selectable: ClassVar[bool] = True
    #: Stage-2 options tried by :func:`lsm.transfer.finetune_auto`, strong anchoring to the
    #: source first; keyword arguments of the family's stage 2.
    anchor_grid: ClassVar[tuple[dict[str, Any], ...]] = (
        {"source_weight": 0.8}, {"source_weight": 0.5}, {"source_weight": 0.2})
    #: SHAP explainer kind (lsm.explain.shap_values), units of its values, background rows.
    shap_explainer: ClassVar[str] = "permutation"
    shap_units: ClassVar[str] = "log-odds"
    shap_background: ClassVar[int] = 200
    #: ``decision_function`` returns the log-odds of a landslide (used for logit blends).
    decision_is_logit: ClassVar[bool] = False
    #: Trained on the shots alone as a candidate of the delivered model, with these
    #: parameters changed for tens of rows; ``stage_candidates``: stage-2 options under
    #: which the family's own stages are candidates too (cheap families only).
    delivered_target: ClassVar[bool] = False
    few_shot_params: ClassVar[dict[str, Any]] = {}
    stage_candidates: ClassVar[tuple[dict[str, Any], ...]] = ()

    #: Constraints of the constructor parameters, in scikit-learn's form
    #: (:mod:`sklearn.utils._param_validation`): a parameter file's values are checked
    #: against them before any fitting, and ``meta.json``'s on load.
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {}

    @classmethod
    def param_problem(cls, name: str, value: Any) -> str | None:
        """Why ``value`` is not a valid ``name`` parameter of the family (None: it is).

        Uses the family's ``_parameter_constraints``; a family adds checks that
        constraints cannot express (the entries of a tuple, ...) by overriding this.
        """
        constraints = cls._parameter_constraints.get(name)
        if constraints is None:
            return None
        from sklearn.utils._param_validation import (
            InvalidParameterError,
            validate_parameter_constraints,
        )

        try:
            validate_parameter_constraints({name: constraints}, {name: value},
                                           caller_name=cls.__name__)
        except InvalidParameterError as err:
            import re

            m = re.search(r"must be (.*)\. Got .* instead", " ".join(str(err).split()))
            return f"must be {m.group(1)}" if m else first_line(err)
        return None

    @classmethod
    def invalid_params(cls, params: dict[str, Any]) -> list[tuple[str, Any, str]]:
        """``(name, value, problem)`` of every parameter in ``params`` that the family's
        constraints refuse (see :meth:`param_problem`)."""
        out = []
        for name, value in params.items():
            problem = cls.param_problem(name, value)
            if problem is not None:
                out.append((name, value, problem))
        return out

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

    # -- artifacts: shared save/load around the family's payload hooks ----------------

    #: Payload files (relative to the model folder) that every saved model of the family
    #: has, beside ``meta.json``; :meth:`load` refuses a folder whose manifest lacks one.
    artifacts: ClassVar[tuple[str, ...]] = ()

    def save(self, directory: Path) -> list[Path]:
        """Write the fitted model into ``directory``; return the files written.

        The family's payload (:meth:`_save_payload`), then ``meta.json``, then
        ``manifest.json`` with the sha256 of every file written, last.
        """
        check_is_fitted(self)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = meta_dict(self)
        files = [Path(f) for f in self._save_payload(directory, meta)]
        missing = [a for a in self.artifacts if directory / a not in files]
        if missing:
            raise RuntimeError(f"{type(self).__name__}._save_payload did not write {missing}")
        files.append(write_json(directory / META, meta))
        return [*files, write_manifest(directory, sorted(files))]

    @classmethod
    def load(cls: type[_M], directory: Path) -> _M:
        """Read a model written by :meth:`save` (never executes code from the files).

        Verifies the manifest (every listed file, ``meta.json`` and the family's
        ``artifacts`` listed), checks the family and format in ``meta.json``,
        rebuilds the estimator from its parameters and fitted inputs, then reads
        the payload (:meth:`_load_payload`).  Raises :class:`ArtifactError`, one
        line naming the file, on any fault.
        """
        directory = Path(directory)
        meta = cls._upgrade_meta(directory, read_meta(directory, cls.family, cls.artifacts))
        model = cls(**_params_from_meta(cls, meta, directory / META))
        _set_fitted_from_meta(model, meta, directory / META)
        try:
            model._load_payload(directory, meta)
        except ArtifactError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, OverflowError) as err:
            raise ArtifactError(f"{directory}: malformed {cls.family!r} model "
                                f"({type(err).__name__}: {first_line(err)})") from None
        return model

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        """Write the family's fitted state into ``directory``; return the files written.

        ``meta`` is what :meth:`save` writes next as ``meta.json``: a family may add
        keys of its own (library versions, sizes that :meth:`_load_payload` checks).
        Every file must load without executing code.
        """
        raise NotImplementedError(f"{type(self).__name__} defines no _save_payload")

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        """Read what :meth:`_save_payload` wrote into this model.

        The model is already built from ``meta.json``'s parameters, with
        ``classes_``, ``n_features_in_`` and ``feature_names_in_`` set.  Raise
        :class:`ArtifactError` naming the file at fault (a ``KeyError``,
        ``TypeError`` or ``ValueError`` becomes one naming the folder).
        """
        raise NotImplementedError(f"{type(self).__name__} defines no _load_payload")

    @classmethod
    def _upgrade_meta(cls, directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """``meta.json`` of a folder written by an earlier version, in today's form."""
        return meta

    # -- generic transfer stages (lsm.transfer registers family-specific ones) -------

    def transfer_adapt(self, X: Any, y: Any, *, random_state: int | None = 0) -> LsmClassifier:
        """Generic stage 1: Platt recalibration of this (source) model on the shots.

        ``P = sigmoid(a * logit(source(x)) + b)`` with ``a, b`` fitted by maximum
        likelihood (lightly penalised) on the shots: the source's ranking is
        kept, its level and spread are re-estimated.  Returns a
        :class:`~lsm.models.delivered.DeliveredModel` with the source as its one
        member; ``self`` is not modified.
        """
        from sklearn.linear_model import LogisticRegression

        from lsm.models.delivered import DeliveredModel, member_logit

        y01 = _binary_labels(self, y)
        z = member_logit(self, X)
        lr = LogisticRegression(C=100.0).fit(z[:, None], y01)
        return DeliveredModel.assemble(
            strategy=f"stage1({self.family}: recalibrated)", members={"source": self},
            weights={"source": float(lr.coef_[0, 0])}, intercept=float(lr.intercept_[0]),
            n_features=int(self.n_features_in_), feature_names=_names(self))

    def transfer_finetune(self, start: Any, X: Any, y: Any, *, random_state: int | None = 0,
                          source_weight: float = 0.5) -> LsmClassifier:
        """Generic stage 2: ``start`` blended on the logit scale with this family trained on
        the shots.

        ``z = source_weight * logit(start) + (1 - source_weight) * logit(new)``,
        ``new`` a fresh copy of this (source) model's family and parameters fitted
        on the shots: the anchor to the source is the weight of ``start`` (usually
        the stage-1 model).  Returns a :class:`~lsm.models.delivered.DeliveredModel`.
        """
        from sklearn.base import clone

        from lsm.models.delivered import DeliveredModel

        if not 0.0 <= source_weight <= 1.0:
            raise ValueError(f"source_weight must be in [0, 1], got {source_weight!r}")
        _binary_labels(self, y)
        new = clone(self)
        if "random_state" in new.get_params():
            new.set_params(random_state=random_state)
        new.fit(X, y)
        if isinstance(start, DeliveredModel) and start.x_coef_ is None \
                and start.booster_ is None and "target" not in start.members_:
            members, weights = dict(start.members_), dict(start.weights_)
            intercept, neutral = start.intercept_, start.neutral_
        else:
            members, weights, intercept, neutral = {"start": start}, {"start": 1.0}, 0.0, {}
        w = float(source_weight)
        return DeliveredModel.assemble(
            strategy=f"stage2({self.family}: blend, source_weight={w:g})",
            members={**members, "target": new},
            weights={**{k: w * v for k, v in weights.items()}, "target": 1.0 - w},
            intercept=w * intercept, neutral=neutral,
            n_features=int(self.n_features_in_), feature_names=_names(self))


def _binary_labels(model: Any, y: Any) -> np.ndarray:
    """0/1 labels of the shots for a fitted binary ``model`` (both classes needed)."""
    classes = np.asarray(model.classes_)
    if classes.size != 2:
        raise ValueError(f"transfer stages need a binary model; classes {classes.tolist()}")
    y = np.asarray(y).ravel()
    y01 = (y == classes[1]).astype(int)
    if y01.min() == y01.max():
        raise ValueError("the shots must hold both classes (landslide and non-landslide)")
    return y01


def _names(model: Any) -> list[str] | None:
    names = getattr(model, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


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
    """The estimator class of a registered family name (``rf``, ``lr``, ``xgb``, ...)."""
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
        what = ", ".join(repr(b) for b in bad) if bad else repr(text)
        raise ValueError(f"unknown family {what}; choose from "
                         f"{', '.join(FAMILY_NAMES)} or 'all'")
    return names


# -- meta.json ------------------------------------------------------------------


def meta_dict(model: LsmClassifier) -> dict[str, Any]:
    """What ``meta.json`` records of a fitted model: family, versions, params, inputs."""
    import sklearn

    import lsm

    params = model.get_params()
    rs = params.get("random_state")
    if isinstance(rs, np.integer):
        params["random_state"] = int(rs)
    elif not isinstance(rs, (int, type(None))):
        params["random_state"] = None  # a RandomState object is not worth persisting
    cw = params.get("class_weight")
    if isinstance(cw, dict):  # JSON object keys would turn class labels into strings
        params["class_weight"] = [[k, v] for k, v in cw.items()]
    names = getattr(model, "feature_names_in_", None)
    return {
        "family": model.family,
        "format": ARTIFACT_FORMAT,
        "lsm_version": lsm.__version__,
        "sklearn_version": sklearn.__version__,
        "params": params,
        "classes": np.asarray(model.classes_).tolist(),
        "n_features_in": int(model.n_features_in_),
        "feature_names_in": None if names is None else [str(n) for n in names],
    }


def load_model(directory: Path) -> LsmClassifier:
    """Load the model in ``directory`` with the class of the family its ``meta.json`` names.

    Raises :class:`ArtifactError` when the folder holds no known family.
    """
    directory = Path(directory)
    meta = read_json(directory / META)
    family = meta.get("family") if isinstance(meta, dict) else None
    try:
        cls = get_family(str(family))
    except ValueError as err:
        raise ArtifactError(f"{directory / META}: {err}") from None
    return cls.load(directory)


def read_meta(directory: Path, family: str, artifacts: Sequence[str] = ()) -> dict[str, Any]:
    """Verify the folder's manifest, then return its ``meta.json`` if it holds ``family``.

    The manifest must list ``meta.json`` and ``artifacts``; the format must be one
    this version reads.
    """
    directory = Path(directory)
    listed = verify_manifest(directory)
    path = directory / META
    meta = read_json(path)
    found = meta.get("family") if isinstance(meta, dict) else None
    if found != family:
        raise ArtifactError(f"{path}: holds a {found!r} model, not a {family!r} one")
    fmt = meta.get("format", ARTIFACT_FORMAT)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or not 1 <= fmt <= ARTIFACT_FORMAT:
        import lsm

        raise ArtifactError(f"{path}: model format {fmt!r}; lsm {lsm.__version__} reads "
                            f"format 1 to {ARTIFACT_FORMAT} (written by a newer lsm?)")
    for name in (META, *artifacts):
        if name not in listed:
            raise ArtifactError(f"{directory / name}: not listed in {directory / MANIFEST}")
    return meta


def _params_from_meta(cls: type[LsmClassifier], meta: dict[str, Any],
                      path: Path) -> dict[str, Any]:
    """Constructor parameters recorded in ``meta`` (JSON lists back to tuples and dicts)."""
    params = meta.get("params")
    if not isinstance(params, dict):
        raise ArtifactError(f"{path}: no 'params' object")
    params = dict(params)
    defaults = cls().get_params()
    unknown = set(params) - set(defaults)
    if unknown:
        raise ArtifactError(f"{path}: unknown parameters {sorted(unknown)} for {cls.__name__}")
    try:
        if isinstance(params.get("class_weight"), list):
            params["class_weight"] = {k: v for k, v in params["class_weight"]}
        for k, v in params.items():
            if isinstance(v, list) and isinstance(defaults[k], tuple):
                params[k] = tuple(v)  # e.g. the MLP's hidden_layer_sizes
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: malformed 'params' ({err})") from None
    for name, value, problem in cls.invalid_params(params)[:1]:
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ArtifactError(f"{path}: params.{name}: {text} {problem}")
    return params


def _set_fitted_from_meta(model: LsmClassifier, meta: dict[str, Any], path: Path) -> None:
    """Set ``classes_``, ``n_features_in_``, ``feature_names_in_`` from ``meta``."""
    from lsm.io import values as v

    classes = v.sequence(meta.get("classes"), f"{path}: classes", of=(int, float, str))
    for i, c in enumerate(classes):
        if not isinstance(c, str):
            v.number(c, f"{path}: classes[{i}]")
    if len(classes) < 2 or len(set(classes)) != len(classes) or \
            len({isinstance(c, str) for c in classes}) != 1:
        raise ArtifactError(f"{path}: classes: {classes!r} are not two or more distinct "
                            "labels of one type")
    n = v.number(meta.get("n_features_in"), f"{path}: n_features_in", lo=1, integer=True)
    try:
        model.classes_ = np.asarray(classes)
        model.n_features_in_ = n
        if meta.get("feature_names_in") is not None:
            names = v.sequence(meta["feature_names_in"], f"{path}: feature_names_in", of=str,
                               length=n)
            v.unique_names(names, f"{path}: feature_names_in")
            model.feature_names_in_ = np.asarray(names, dtype=object)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: malformed ({err})") from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for one-line
    errors."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""
