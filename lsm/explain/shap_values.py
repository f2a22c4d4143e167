"""SHAP values of the four model families, and their importance per column and per factor.

:func:`explain_model` picks the explainer by family:

=======  =================================================  ==========================
family   explainer                                          units of the values
=======  =================================================  ==========================
``rf``   ``shap.TreeExplainer`` on the forest's P(class 1)  probability of a landslide
``xgb``  ``shap.TreeExplainer`` on the XGBoost booster      log-odds (booster margin)
``lr``   ``shap.LinearExplainer`` on ``coef_``              log-odds
``mlp``  ``shap.DeepExplainer`` (DeepLIFT) on the network   log-odds (network logit)
=======  =================================================  ==========================

All use the *interventional* formulation against a background sample,
so ``base_value`` is the mean model output over the background and
``base_value + values.sum(axis=1)`` is the model output of each row (exact
for rf, xgb, lr and the MLP's DeepLIFT; approximate for the gradient
fallback).  A model whose explainer cannot be built falls back, with a
warning, to ``shap.explainers.Permutation`` on its output in the same units,
on a smaller sample.

Importance: :func:`global_importance` is the mean ``|SHAP|`` per design
column; :func:`factor_importance` first adds up the columns derived from one
factor (``aspect_sin`` + ``aspect_cos`` -> ``aspect``; ``lithology=granite``,
``lithology=shale``, ... -> ``lithology``) row by row, then takes the mean
absolute value.  Because SHAP values are additive, the per-row sum is the
factor's own attribution when the whole factor is one player.

Example
-------
>>> res = explain_model(model, X_train, X_test)          # doctest: +SKIP
>>> factor_importance(res).head(3)                       # doctest: +SKIP
slope        0.61
lithology    0.34
ndvi         0.12
"""

from __future__ import annotations

import io
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, redirect_stderr
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from lsm.errors import ArtifactError, FactorMismatchError

PROBABILITY = "probability"
LOG_ODDS = "log-odds"


def _declared(model: Any, name: str, default: Any) -> Any:
    """A family's SHAP declaration (``shap_explainer``, ``shap_units``, ``shap_background``
    class attributes of :class:`lsm.models.base.LsmClassifier`)."""
    return getattr(type(model), name, default)

_FALLBACK_EXPLAIN = 100
_FALLBACK_BACKGROUND = 50
# Spread of (model output - SHAP sum) above which the explanation is reported as not additive.
_ADDITIVITY_WARN = 1e-3


@dataclass(frozen=True, eq=False)
class ShapResult:
    """SHAP values of one model on a sample of rows.

    Attributes
    ----------
    values : ndarray of shape (n_rows, n_features)
        One attribution per row and design column, in ``units``.
    base_value : float
        Mean model output over the background sample, in ``units``;
        ``base_value + values.sum(1)`` is each row's output.
    data : ndarray of shape (n_rows, n_features)
        The explained rows' feature values (the design matrix, as given).
    feature_names : list of str
        Design columns, in the model's order.
    family : str
        ``rf``, ``lr``, ``xgb``, ``mlp`` (or the model's class name).
    explainer : str
        The shap explainer used (``TreeExplainer``, ``LinearExplainer``, ...).
    units : str
        ``"probability"`` or ``"log-odds"``.
    index : pandas.Index
        Index labels of the explained rows in ``X_explain``.
    additivity_error : float
        Largest ``|base_value + values.sum(1) - model output|`` over the rows.
    """

    values: np.ndarray
    base_value: float
    data: np.ndarray
    feature_names: list[str]
    family: str
    explainer: str
    units: str
    index: pd.Index = field(default_factory=lambda: pd.RangeIndex(0))
    additivity_error: float = float("nan")

    @property
    def output(self) -> np.ndarray:
        """``base_value + values.sum(1)``: the model output each row is explained to."""
        return self.base_value + self.values.sum(axis=1)

    def to_frame(self) -> pd.DataFrame:
        """The values as a DataFrame (rows = ``index``, columns = ``feature_names``)."""
        return pd.DataFrame(self.values, index=self.index, columns=self.feature_names)


def _shap() -> Any:
    """``import shap``, without the matplotlib deprecation warnings its import emits."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        import shap
    return shap


# ---------------------------------------------------------------------- model access
def _fitted_parts(model: Any) -> list[Any]:
    """``model`` itself, then its fitted attributes (names ending in ``_``)."""
    parts = [model]
    for name, value in vars(model).items():
        if name.endswith("_") and not name.startswith("_"):
            parts.append(value)
    return parts


def _tree_forest(model: Any) -> Any:
    """The scikit-learn forest inside an ``rf`` model (or the model itself)."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    for part in _fitted_parts(model):
        if isinstance(part, (RandomForestClassifier, ExtraTreesClassifier)) and \
                hasattr(part, "estimators_"):
            return part
    raise TypeError(f"{type(model).__name__}: no fitted scikit-learn forest found "
                    "(looked at the model and its fitted attributes)")


def _booster(model: Any) -> Any:
    """The ``xgboost.Booster`` inside an ``xgb`` model."""
    import xgboost

    for part in _fitted_parts(model):
        if isinstance(part, xgboost.Booster):
            return part
        get = getattr(part, "get_booster", None)
        if callable(get):
            try:
                return get()
            except Exception:  # noqa: BLE001  (an unfitted XGBClassifier raises NotFittedError)
                continue
    raise TypeError(f"{type(model).__name__}: no fitted xgboost Booster found "
                    "(looked at the model and its fitted attributes)")


def _linear_coef(model: Any) -> tuple[np.ndarray, float]:
    """``(coef, intercept)`` of the positive class's log-odds of an ``lr`` model."""
    for part in _fitted_parts(model):
        coef = getattr(part, "coef_", None)
        intercept = getattr(part, "intercept_", None)
        if coef is not None and intercept is not None:
            coef = np.asarray(coef, dtype="float64")
            intercept = np.asarray(intercept, dtype="float64").ravel()
            if coef.ndim == 2 and coef.shape[0] == 1 and intercept.size == 1:
                return coef[0], float(intercept[0])
    raise TypeError(f"{type(model).__name__}: no binary coef_/intercept_ found")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype="float64"), 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def model_output(model: Any, X: pd.DataFrame, units: str) -> np.ndarray:
    """The model output that SHAP values in ``units`` add up to.

    ``"probability"``: ``predict_proba(X)[:, 1]``.  ``"log-odds"``: the
    model's ``decision_function`` when it has one, else the logit of
    ``predict_proba(X)[:, 1]``.
    """
    if units == PROBABILITY:
        return np.asarray(model.predict_proba(X), dtype="float64")[:, 1]
    decision = getattr(model, "decision_function", None)
    if callable(decision):
        z = np.asarray(decision(X), dtype="float64")
        if z.ndim == 1:
            return z
    return _logit(np.asarray(model.predict_proba(X), dtype="float64")[:, 1])


# ---------------------------------------------------------------------- explainers
def _background(shap: Any, bg: pd.DataFrame) -> Any:
    """The background as a masker that keeps every row.

    A bare array given to a shap explainer becomes ``maskers.Independent(data)``,
    which silently subsamples to 100 rows; ``bg`` is already the sample we want.
    """
    return shap.maskers.Independent(bg.to_numpy(), max_samples=len(bg))


# Each returns (values (n, p), base_value, explainer name).
def _forest_class1(forest: Any) -> dict[str, Any]:
    """The forest as shap's dict tree format, with P(second class) as the only output.

    shap explains a scikit-learn classifier for every class; with two classes
    the second is minus the first, so one output halves the work of the
    (background x rows x trees) interventional algorithm.  Leaf values are
    normalised and averaged over the trees exactly as shap does for the forest.
    """
    trees = []
    scale = 1.0 / len(forest.estimators_)
    for est in forest.estimators_:
        t = est.tree_
        value = np.asarray(t.value, dtype="float64")[:, 0, :]
        total = value.sum(axis=1)
        p1 = np.divide(value[:, 1], total, out=np.zeros_like(total), where=total > 0)
        left = t.children_left.astype(np.int32)
        right = t.children_right.astype(np.int32)
        missing_left = getattr(t, "missing_go_to_left", None)
        default = left if missing_left is None else np.where(missing_left, left, right)
        trees.append({"children_left": left, "children_right": right,
                      "children_default": default.astype(np.int32),
                      "features": t.feature.astype(np.int32),
                      "thresholds": t.threshold.astype("float64"),
                      "values": (p1 * scale)[:, None],
                      "node_sample_weight": t.weighted_n_node_samples.astype("float64")})
    # sklearn compares float32 inputs with the thresholds: same dtype, same leaves
    return {"trees": trees, "base_offset": 0.0, "tree_output": "raw_value",
            "input_dtype": np.float32, "internal_dtype": np.float64}


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Swallow the progress bar shap's C code prints to ``sys.stderr`` after 10 s."""
    with redirect_stderr(io.StringIO()):
        yield


def _explain_rf(model: Any, bg: pd.DataFrame, ex: pd.DataFrame, seed: int
                ) -> tuple[np.ndarray, float, str]:
    shap = _shap()
    forest = _tree_forest(model)
    if len(getattr(forest, "classes_", [0, 1])) != 2:
        raise TypeError(f"{type(model).__name__}: expected a two-class forest")
    explainer = shap.TreeExplainer(_forest_class1(forest), data=_background(shap, bg),
                                   model_output="raw", feature_perturbation="interventional")
    with _quiet_stderr():
        values = np.asarray(explainer.shap_values(ex.to_numpy(), check_additivity=False))
    return values, float(np.ravel(explainer.expected_value)[0]), "TreeExplainer"


def _explain_xgb(model: Any, bg: pd.DataFrame, ex: pd.DataFrame, seed: int
                 ) -> tuple[np.ndarray, float, str]:
    shap = _shap()
    booster = _booster(model)
    explainer = shap.TreeExplainer(booster, data=_background(shap, bg), model_output="raw",
                                   feature_perturbation="interventional")
    with _quiet_stderr():
        values = np.asarray(explainer.shap_values(ex.to_numpy(), check_additivity=False))
    base = np.atleast_1d(np.asarray(explainer.expected_value, dtype="float64"))
    if values.ndim == 3:  # a two-class softmax booster: log-odds = margin 1 - margin 0
        values, base = values[:, :, 1] - values[:, :, 0], base[1:] - base[:1]
    return values, float(base[0]), "TreeExplainer"


def _explain_lr(model: Any, bg: pd.DataFrame, ex: pd.DataFrame, seed: int
                ) -> tuple[np.ndarray, float, str]:
    shap = _shap()
    coef, intercept = _linear_coef(model)
    explainer = shap.LinearExplainer((coef, intercept), _background(shap, bg))
    values = np.asarray(explainer.shap_values(ex.to_numpy()), dtype="float64")
    return values, float(np.ravel(explainer.expected_value)[0]), "LinearExplainer"


def _torch_parts(model: Any, bg: pd.DataFrame, ex: pd.DataFrame) -> tuple[Any, Any, Any]:
    """A CPU float32 copy of the MLP's network and the scaled background/explained rows.

    The network sees ``(X - input_mean_) / input_scale_``; attributions of
    DeepLIFT and expected gradients do not change under such per-feature
    affine maps, so values on the scaled inputs are the values on ``X``.
    """
    import copy

    import torch

    net = getattr(model, "net_", None)
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"{type(model).__name__}: no fitted torch module net_")
    net = copy.deepcopy(net).to("cpu").float().eval()
    mean = np.asarray(getattr(model, "input_mean_", 0.0), dtype="float64")
    scale = np.asarray(getattr(model, "input_scale_", 1.0), dtype="float64")

    def scaled(df: pd.DataFrame) -> Any:
        arr = (df.to_numpy(dtype="float64") - mean) / scale
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    return net, scaled(bg), scaled(ex)


def _one_thread() -> Any:
    try:
        import torch

        from lsm.models.mlp import training_threads
    except ImportError:  # pragma: no cover
        return nullcontext()
    return training_threads(torch.device("cpu"))


def _explain_mlp(model: Any, bg: pd.DataFrame, ex: pd.DataFrame, seed: int
                 ) -> tuple[np.ndarray, float, str]:
    shap = _shap()
    import torch

    net, tbg, tex = _torch_parts(model, bg, ex)
    with torch.enable_grad(), _one_thread(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unrecognized nn.Module.*")
        try:
            explainer = shap.DeepExplainer(net, tbg)
            values = explainer.shap_values(tex, check_additivity=False)
            name = "DeepExplainer"
            base = float(np.ravel(explainer.expected_value)[0])
        except Exception as err:  # noqa: BLE001  (shap's torch hooks break on odd modules)
            warnings.warn(f"DeepExplainer failed on the MLP ({type(err).__name__}: {err}); "
                          "using GradientExplainer (expected gradients, approximately additive)",
                          RuntimeWarning, stacklevel=3)
            explainer = shap.GradientExplainer(net, tbg)
            values = explainer.shap_values(tex, nsamples=200, rseed=seed)
            name = "GradientExplainer"
            with torch.no_grad():
                base = float(net(tbg).double().mean())
    values = np.asarray(values[0] if isinstance(values, list) else values, dtype="float64")
    if values.ndim == 3:  # (n, p, outputs=1)
        values = values[:, :, 0]
    return values, base, name


def _explain_permutation(model: Any, bg: pd.DataFrame, ex: pd.DataFrame, seed: int,
                         units: str) -> tuple[np.ndarray, float, str]:
    shap = _shap()

    names = list(ex.columns)

    def f(arr: np.ndarray) -> np.ndarray:
        return model_output(model, pd.DataFrame(arr, columns=names), units)

    explainer = shap.explainers.Permutation(f, _background(shap, bg), seed=seed)
    # 5 antithetic permutations per row: rough, but this is the slow last resort
    exp = explainer(ex.to_numpy(), max_evals=10 * (2 * len(names) + 1), silent=True)
    return (np.asarray(exp.values, dtype="float64"),
            float(np.ravel(exp.base_values)[0]), "Permutation")


def _explain_delivered(model: Any, bg: pd.DataFrame, ex: pd.DataFrame, seed: int
                       ) -> tuple[np.ndarray, float, str]:
    """The delivered model mixes families on the logit scale: explained by permutation."""
    return _explain_permutation(model, bg, ex, seed, LOG_ODDS)


#: Explainer kinds a family names in its ``shap_explainer`` (anything else: permutation).
_EXPLAINERS = {"forest": _explain_rf, "booster": _explain_xgb, "linear": _explain_lr,
               "deep": _explain_mlp, "permutation": _explain_delivered}


# ---------------------------------------------------------------------- public
def _aligned(model: Any, X: pd.DataFrame, what: str) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(X).__name__}")
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return X.astype("float64")
    names = [str(n) for n in names]
    missing = [n for n in names if n not in X.columns]
    if missing:
        raise FactorMismatchError(f"{what}: columns {missing} of the model are missing "
                                  f"(has {list(map(str, X.columns))})")
    return X[names].astype("float64")


def _sample(X: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(X) <= n:
        return X
    return X.iloc[np.sort(rng.choice(len(X), size=n, replace=False))]


def explain_model(model: Any, X_background: pd.DataFrame, X_explain: pd.DataFrame, *,
                  max_background: int | None = None, max_explain: int = 500,
                  seed: int = 0) -> ShapResult:
    """SHAP values of a fitted model on (a sample of) ``X_explain``.

    Parameters
    ----------
    model
        A fitted ``lsm`` model (``family`` in rf, lr, xgb, mlp); any other
        classifier with ``predict_proba`` is explained by permutation.
    X_background
        Rows that define "average" (usually the training design matrix);
        up to ``max_background`` rows are drawn from it.
    X_explain
        Rows to explain (same columns); up to ``max_explain`` are drawn.
    max_background
        Background rows; default 200, or 100 for ``rf``: the interventional
        forest algorithm costs (background rows x explained rows x nodes),
        and a 300-tree forest of deep trees takes ~0.1 s per explained row
        against 100 background rows on one core.
    max_explain
        Rows explained.  Both samples are drawn without replacement, in order.
    seed
        Seeds both draws (and the gradient/permutation fallbacks).

    Returns
    -------
    ShapResult
        Values in probability units for rf and log-odds for xgb, lr and mlp
        (``result.units``).

    Raises
    ------
    FactorMismatchError
        When a frame lacks columns the model was fitted on.

    Example
    -------
    >>> res = explain_model(model, X_train, X_test, max_explain=200)   # doctest: +SKIP
    >>> np.allclose(res.output, res.base_value + res.values.sum(1))    # doctest: +SKIP
    True
    """
    if len(X_background) == 0 or len(X_explain) == 0:
        raise ValueError("explain_model: X_background and X_explain need at least one row")
    family = str(getattr(model, "family", "") or type(model).__name__)
    rng = np.random.default_rng(seed)
    kind = _declared(model, "shap_explainer", None)  # None: not an lsm family
    if max_background is None:
        max_background = int(_declared(model, "shap_background", 200))
    if kind == "permutation":  # cost grows with rows x background x factors
        max_explain = min(max_explain, _FALLBACK_EXPLAIN)
    bg = _sample(_aligned(model, X_background, "X_background"), max_background, rng)
    ex = _sample(_aligned(model, X_explain, "X_explain"), max_explain, rng)
    units = str(_declared(model, "shap_units", LOG_ODDS))

    explain = _EXPLAINERS.get(kind)
    try:
        if explain is None:
            raise TypeError(f"no dedicated explainer for {family!r} (kind {kind!r})")
        values, base, name = explain(model, bg, ex, seed)
    except (TypeError, ImportError, ValueError, NotImplementedError) as err:
        warnings.warn(f"{family}: {err}; falling back to the permutation explainer on "
                      f"{_FALLBACK_EXPLAIN} rows", RuntimeWarning, stacklevel=2)
        bg = _sample(bg, _FALLBACK_BACKGROUND, rng)
        ex = _sample(ex, _FALLBACK_EXPLAIN, rng)
        values, base, name = _explain_permutation(model, bg, ex, seed, units)

    values = np.asarray(values, dtype="float64").reshape(len(ex), ex.shape[1])
    # The explainers see the model's core (forest, booster, coefficients, net);
    # anything the wrapper adds on top as a constant (a prior shift, an
    # intercept kept outside the booster) is folded into the base value.
    residual = model_output(model, ex, units) - (base + values.sum(axis=1))
    offset = float(np.median(residual))
    spread = float(np.max(np.abs(residual - offset)))
    if abs(offset) > 1e-9:
        base += offset
    if spread > _ADDITIVITY_WARN and name not in ("GradientExplainer", "Permutation"):
        warnings.warn(f"{family}: SHAP values miss the model output by up to {spread:.3g} "
                      f"{units} ({name})", RuntimeWarning, stacklevel=2)
    return ShapResult(values=values, base_value=float(base), data=ex.to_numpy(),
                      feature_names=[str(c) for c in ex.columns], family=family,
                      explainer=name, units=units, index=ex.index, additivity_error=spread)


def global_importance(result: ShapResult) -> pd.Series:
    """Mean ``|SHAP|`` per design column, largest first (``attrs["units"]`` set).

    Example
    -------
    >>> global_importance(res).index[0]   # doctest: +SKIP
    'slope'
    """
    s = pd.Series(np.abs(result.values).mean(axis=0), index=result.feature_names,
                  name="mean_abs_shap").sort_values(ascending=False, kind="stable")
    s.attrs["units"] = result.units
    return s


def factor_groups(columns: Sequence[str]) -> dict[str, str]:
    """Map each design column to its factor.

    ``name=category`` -> ``name``; ``name_sin`` / ``name_cos`` -> ``name`` when
    both are present; any other column is its own factor.

    Example
    -------
    >>> factor_groups(["slope", "aspect_sin", "aspect_cos", "lith=a", "lith=b"])
    {'slope': 'slope', 'aspect_sin': 'aspect', 'aspect_cos': 'aspect', 'lith=a': 'lith', \
'lith=b': 'lith'}
    """
    cols = [str(c) for c in columns]
    present = set(cols)
    out: dict[str, str] = {}
    for c in cols:
        if "=" in c:
            out[c] = c.split("=", 1)[0]
        elif c.endswith(("_sin", "_cos")) and \
                f"{c[:-4]}_{'cos' if c.endswith('_sin') else 'sin'}" in present:
            out[c] = c[:-4]
        else:
            out[c] = c
    return out


def grouped_values(result: ShapResult, groups: Mapping[str, str] | None = None
                   ) -> pd.DataFrame:
    """Signed SHAP values summed per factor, row by row (columns in first-seen order).

    ``groups`` maps design columns to factors; :func:`factor_groups` by default.
    """
    groups = dict(groups) if groups is not None else factor_groups(result.feature_names)
    mapping = [groups.get(c, c) for c in result.feature_names]
    frame = pd.DataFrame(result.values, index=result.index, columns=result.feature_names)
    return _sum_groups(frame, mapping)


def factor_importance(result: ShapResult, groups: Mapping[str, str] | None = None, *,
                      how: Literal["abs_sum", "sum_abs"] = "abs_sum") -> pd.Series:
    """Mean absolute SHAP per factor, derived columns merged, largest first.

    Parameters
    ----------
    result
        From :func:`explain_model`.
    groups
        Design column -> factor; :func:`factor_groups` by default.
    how
        ``"abs_sum"`` (default): per row, ``|sum of the group's values|`` -- the
        factor's attribution as one player, since SHAP values add up.
        ``"sum_abs"``: per row, the sum of the members' ``|values|`` (never
        smaller; counts columns that cancel, e.g. one-hot siblings).

    Example
    -------
    >>> factor_importance(res)["aspect"]   # doctest: +SKIP
    0.07
    """
    if how == "abs_sum":
        per_row = grouped_values(result, groups).abs()
    elif how == "sum_abs":
        abs_res = replace(result, values=np.abs(result.values))
        per_row = grouped_values(abs_res, groups)
    else:
        raise ValueError(f"how={how!r}: choose 'abs_sum' or 'sum_abs'")
    s = per_row.mean(axis=0).sort_values(ascending=False, kind="stable")
    s.name = "mean_abs_shap"
    s.attrs["units"] = result.units
    return s


def _sum_groups(values: pd.DataFrame, mapping: Sequence[str]) -> pd.DataFrame:
    """Columns of ``values`` summed per group label in ``mapping`` (first-seen order).

    NaN stays NaN (a pandas ``groupby().sum()`` would quietly make it 0).
    """
    arr = values.to_numpy(dtype="float64")
    labels = np.asarray(mapping, dtype=object)
    order = list(dict.fromkeys(mapping))
    out = {g: arr[:, labels == g].sum(axis=1) for g in order}
    return pd.DataFrame(out, index=values.index)


def _fill_empty_covers(booster: Any) -> Any:
    """``booster`` itself, or a copy whose zero-cover nodes get a tiny positive cover.

    Path-dependent TreeSHAP weighs the two branches of a split by their covers
    (hessian sums of the rows that reached them).  A leaf refresh on a few
    shots leaves nodes no shot reached with cover 0, and ``0 / 0`` makes
    XGBoost's TreeSHAP fail (Saabas gives NaN).  Such a leaf gets
    ``1e-6 x`` the tree's root cover, and an empty internal node the sum of
    its children: the shots' distribution, with unreached branches nearly
    impossible.  Leaf values, splits and so the margin are unchanged.
    """
    import json

    import xgboost as xgb

    cfg = json.loads(bytes(booster.save_raw(raw_format="json")))
    changed = False
    for tree in cfg["learner"]["gradient_booster"]["model"]["trees"]:
        cover = np.asarray(tree["sum_hessian"], dtype="float64")
        if (cover > 0).all():
            continue
        left, right = tree["left_children"], tree["right_children"]
        tiny = 1e-6 * (cover[0] if cover[0] > 0 else 1.0)
        order, depth_first = [0], [0]
        while depth_first:  # parents before children, whatever the node numbering
            node = depth_first.pop()
            if left[node] != -1:
                order += [left[node], right[node]]
                depth_first += [left[node], right[node]]
        for node in reversed(order):  # children before parents
            if cover[node] > 0:
                continue
            cover[node] = tiny if left[node] == -1 else cover[left[node]] + cover[right[node]]
        tree["sum_hessian"] = cover.tolist()
        changed = True
    if not changed:
        return booster
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(cfg).encode("utf-8")))
    return out


# booster -> the booster TreeSHAP runs on (one JSON round trip per model, not per block)
_TREESHAP_BOOSTERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _xgb_contributions(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, float]:
    """Exact path-dependent TreeSHAP of an xgb model: (values (n, p), bias) in log-odds."""
    import xgboost as xgb

    from lsm.models.xgb import xgb_threads

    booster = model.booster_
    shap_booster = _TREESHAP_BOOSTERS.get(booster)
    if shap_booster is None:
        shap_booster = _fill_empty_covers(booster)
        if shap_booster is not booster:
            shap_booster.set_param(xgb_threads(getattr(model, "n_jobs", None)))
        _TREESHAP_BOOSTERS[booster] = shap_booster
    dm = xgb.DMatrix(X.to_numpy(dtype=np.float32), missing=np.nan)
    try:
        contrib = shap_booster.predict(dm, pred_contribs=True)
    except xgb.core.XGBoostError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"xgb model: XGBoost cannot compute SHAP contributions "
                            f"({first})") from None
    if contrib.ndim != 2:
        raise ArtifactError(f"xgb model: SHAP contributions of shape {contrib.shape}; "
                            "per-pixel maps need a binary booster")
    bias = float(contrib[0, -1]) if len(contrib) else float("nan")
    return np.asarray(contrib[:, :-1], dtype="float64"), bias  # the last column is the bias


def pixel_contributions(model: Any, X: pd.DataFrame, X_background: pd.DataFrame, *,
                        max_background: int = 50, seed: int = 0) -> pd.DataFrame:
    """Per-row SHAP values summed per factor, fast enough for every pixel of a map.

    XGBoost uses the booster's own exact TreeSHAP (``pred_contribs``,
    path-dependent, log-odds; nodes a leaf refresh left empty get a tiny
    cover, see :func:`_fill_empty_covers`); logistic regression its closed
    form ``coef * (x - mean of the background)`` (log-odds); the other
    families :func:`explain_model` with a small background (slow for random
    forests).  Rows keep ``X``'s index; ``attrs["base_value"]`` and
    ``attrs["units"]`` give the constant the values add up from and their
    units (``base_value + row sum`` is the model output).

    Raises
    ------
    ArtifactError
        When the contributions cannot be computed or are not finite (never
        written as zeros).
    """
    cols = list(getattr(model, "feature_names_in_", X.columns))
    X = X[cols]
    family = getattr(model, "family", "")
    kind = _declared(model, "shap_explainer", "permutation")
    if kind == "booster":
        contrib, base = _xgb_contributions(model, X)
        values = pd.DataFrame(contrib, index=X.index, columns=cols)
        units = LOG_ODDS
    elif kind == "linear":
        coef = np.asarray(model.coef_, dtype="float64").ravel()
        centre = X_background[cols].to_numpy(dtype="float64").mean(axis=0)
        values = pd.DataFrame((X.to_numpy(dtype="float64") - centre) * coef, index=X.index,
                              columns=cols)
        base = float(np.ravel(model.intercept_)[0] + coef @ centre)
        units = LOG_ODDS
    else:
        res = explain_model(model, X_background, X, max_explain=len(X),
                            max_background=max_background, seed=seed)
        values = res.to_frame().reindex(X.index)
        base, units = res.base_value, res.units
    bad = ~np.isfinite(values.to_numpy()).all(axis=1)
    if bad.any():
        raise ArtifactError(f"{family or type(model).__name__} model: SHAP contributions are "
                            f"not finite on {int(bad.sum())} of {len(X)} rows; refusing to "
                            "map them")
    mapping = factor_groups(cols)
    grouped = _sum_groups(values, [mapping.get(c, c) for c in cols])
    grouped.attrs.update(base_value=base, units=units)
    return grouped
