"""Random forest family (``"rf"``), saved without pickles.

The forest is a fitted :class:`sklearn.ensemble.RandomForestClassifier`
(``forest_``, fitted on class indices ``0..k-1``); SHAP and other tools can
use it directly.  ``predict_proba`` averages the trees itself, in a fixed
order, so the same model always gives bit-identical probabilities (the
forest's own threaded accumulation does not guarantee that).

On disk: ``trees.npz`` holds the node arrays of every tree concatenated
(``node_count`` per tree gives the offsets) and ``meta.json`` the rest; a
tree is rebuilt through ``sklearn.tree._tree.Tree.__setstate__``, the same
path unpickling takes, but from plain arrays.

Example
-------
>>> model = RandomForestModel(n_estimators=100).fit(X, y)    # doctest: +SKIP
>>> model.save(tmp_path / "rf")                               # doctest: +SKIP
>>> RandomForestModel.load(tmp_path / "rf").predict_proba(X)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from lsm.errors import ArtifactError
from lsm.io.artifacts import read_arrays, write_arrays
from lsm.models.base import LsmClassifier, check_weights, first_line, register

TREES = "trees.npz"
# Node fields of sklearn's Tree, in the order of its structured ``nodes`` array.
NODE_FIELDS = ("left_child", "right_child", "feature", "threshold", "impurity",
               "n_node_samples", "weighted_n_node_samples", "missing_go_to_left")
_BLOCK = 32  # trees summed per task in predict_proba; fixed so results do not depend on n_jobs


@register
class RandomForestModel(LsmClassifier):
    """Random forest of CART trees (Gini), bootstrap samples.

    Parameters
    ----------
    n_estimators : int, default 100
        100 trees: on Hong Kong's spatial CV within 0.0012 AUC of 300 trees
        (``benchmarks/rf_engine.py``), and maps three times faster.
    max_depth : int or None, default None
    min_samples_leaf : int, default 2
    max_features : {"sqrt", "log2"}, int, float or None, default "sqrt"
    class_weight : dict, "balanced", "balanced_subsample" or None, default None
    n_jobs : int or None, default -1
        Threads for fitting and prediction (-1: all cores).
    random_state : int or None, default 0

    Attributes
    ----------
    forest_ : RandomForestClassifier
        Fitted on class indices ``0..k-1``; the transfer stages change its
        trees' leaf values (stage 1) and append trees (stage 2).
    classes_, n_features_in_, feature_names_in_ (when fitted on a DataFrame).
    """

    family = "rf"
    label = "random forest"
    short_label = "RF"
    order = 10
    shap_explainer = "forest"
    shap_units = "probability"
    #: the interventional forest algorithm costs background rows x explained rows x nodes
    shap_background = 100
    delivered_target = True
    few_shot_params = {"n_estimators": 100}
    artifacts = (TREES,)
    #: Stage-2 options (weight of the source trees) tried by ``--anchor auto``, strong first.
    anchor_grid = ({"source_weight": 1500.0}, {"source_weight": 150.0})

    #: the forest's own constraints on the parameters it shares with it
    _parameter_constraints = {k: RandomForestClassifier._parameter_constraints[k] for k in (
        "n_estimators", "max_depth", "min_samples_leaf", "max_features", "class_weight",
        "n_jobs", "random_state")}

    def __init__(self, *, n_estimators: int = 100, max_depth: int | None = None,
                 min_samples_leaf: int = 2, max_features: str | int | float | None = "sqrt",
                 class_weight: dict | str | None = None, n_jobs: int | None = -1,
                 random_state: int | None = 0) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RandomForestModel:
        """Fit the forest; ``sample_weight`` weighs rows in every split and leaf (the
        bootstrap draws rows uniformly, so integer weights only approximate repeated rows)."""
        X, y = validate_data(self, X, y, dtype=np.float32, ensure_all_finite="allow-nan")
        sample_weight = check_weights(sample_weight, X)
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        cw = self.class_weight
        if isinstance(cw, dict):  # the inner forest sees class indices, not labels
            index = {c: i for i, c in enumerate(self.classes_.tolist())}
            cw = {index[k]: v for k, v in cw.items() if k in index}
        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            class_weight=cw, n_jobs=self.n_jobs, random_state=self.random_state,
        ).fit(X, y_idx, sample_weight=sample_weight)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32, order="C",
                          ensure_all_finite="allow-nan")
        return forest_proba(self.forest_.estimators_, X, n_jobs=self.n_jobs)

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # -- artifacts: trees.npz, and meta.json's "forest" -------------------------------

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        """``trees.npz``: the node arrays of all trees; ``meta["forest"]``: their shape."""
        trees = self.forest_.estimators_
        states = [t.tree_.__getstate__() for t in trees]
        arrays: dict[str, np.ndarray] = {
            "node_count": np.array([s["node_count"] for s in states], dtype=np.int64),
            "max_depth": np.array([s["max_depth"] for s in states], dtype=np.int64),
            "tree_random_state": np.array([_seed(t.random_state) for t in trees], dtype=np.int64),
            "tree_max_features": np.array([t.max_features_ for t in trees], dtype=np.int64),
            "values": np.concatenate([s["values"] for s in states]),
        }
        for name in states[0]["nodes"].dtype.names:
            arrays[name] = np.concatenate([s["nodes"][name] for s in states])
        meta["forest"] = {
            "n_classes": int(len(self.classes_)),
            "n_outputs": int(self.forest_.n_outputs_),
            "n_trees": len(trees),
            "n_samples": int(getattr(self.forest_, "_n_samples", 0)),
            "n_samples_bootstrap": _optional_int(getattr(self.forest_, "_n_samples_bootstrap",
                                                         None)),
            # hyperparameters of the first tree (trees added by stage 2 differ; only their
            # fitted structure matters for prediction)
            "tree_params": {k: v for k, v in trees[0].get_params().items()
                            if k not in ("random_state", "class_weight")},
        }
        return [write_arrays(directory / TREES, arrays)]

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        """Rebuild the forest from ``trees.npz`` (validated: no pickles, no unsafe trees)."""
        from lsm.io import values as v

        arrays = read_arrays(directory / TREES)
        where = f"{directory / 'meta.json'}: forest"
        info = v.mapping(meta.get("forest"), where)
        if v.number(info.get("n_classes"), f"{where}.n_classes", integer=True) != \
                len(self.classes_):
            raise ArtifactError(f"{where}.n_classes: {info['n_classes']!r}, but "
                                f"{len(self.classes_)} classes")
        v.number(info.get("n_trees"), f"{where}.n_trees", lo=1, integer=True)
        v.number(info.get("n_samples", 0), f"{where}.n_samples", lo=0, integer=True)
        if info.get("n_samples_bootstrap") is not None:
            v.number(info["n_samples_bootstrap"], f"{where}.n_samples_bootstrap", lo=0,
                     integer=True)
        try:
            trees = _rebuild_trees(arrays, self.n_features_in_, int(info["n_classes"]),
                                   dict(info["tree_params"]))
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise ArtifactError(f"{directory / TREES}: does not hold a valid forest "
                                f"({type(err).__name__}: {first_line(err)})") from None
        if len(trees) != int(info["n_trees"]):
            raise ArtifactError(f"{directory / TREES}: {len(trees)} trees, meta.json says "
                                f"{info['n_trees']}")
        k = int(info["n_classes"])
        forest = RandomForestClassifier(
            n_estimators=len(trees), max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            n_jobs=self.n_jobs, random_state=self.random_state)
        forest.estimator_ = DecisionTreeClassifier()
        forest.estimators_ = trees
        forest.n_features_in_ = self.n_features_in_
        forest.n_outputs_ = 1
        forest.classes_ = np.arange(k)
        forest.n_classes_ = k
        forest._n_samples = int(info.get("n_samples", 0))
        forest._n_samples_bootstrap = info.get("n_samples_bootstrap")
        self.forest_ = forest


def forest_proba(trees: list[DecisionTreeClassifier], X: np.ndarray, *,
                 n_jobs: int | None = None) -> np.ndarray:
    """Mean class probabilities of ``trees`` on float32 C-ordered ``X``, deterministic.

    Trees are summed in blocks of fixed size and the blocks in order, so the
    result is the same whatever ``n_jobs`` is.
    """
    from joblib import Parallel, delayed

    blocks = [trees[i:i + _BLOCK] for i in range(0, len(trees), _BLOCK)]
    if len(blocks) == 1 or n_jobs == 1:
        sums = [_block_sum(b, X) for b in blocks]
    else:
        sums = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(_block_sum)(b, X)
                                                         for b in blocks)
    total = sums[0]
    for s in sums[1:]:
        total += s
    return total / len(trees)


def _block_sum(trees: list[DecisionTreeClassifier], X: np.ndarray) -> np.ndarray:
    out = np.array(_tree_proba(trees[0], X), dtype=np.float64)
    for t in trees[1:]:
        out += _tree_proba(t, X)
    return out


def _tree_proba(tree: DecisionTreeClassifier, X: np.ndarray) -> np.ndarray:
    p = tree.tree_.predict(X)  # (n, n_classes) for one output; (n, 1, n_classes) in older versions
    return p[:, 0, :] if p.ndim == 3 else p


def _rebuild_trees(arrays: dict[str, np.ndarray], n_features: int, n_classes: int,
                   tree_params: dict[str, Any]) -> list[DecisionTreeClassifier]:
    from sklearn.tree._tree import Tree

    n_classes_arr = np.array([n_classes], dtype=np.intp)
    node_dtype = Tree(n_features, n_classes_arr, 1).__getstate__()["nodes"].dtype
    counts = np.asarray(arrays["node_count"])
    if counts.ndim != 1 or counts.dtype.kind not in "iu" or counts.size == 0 or \
            (counts < 1).any():
        raise ValueError("node_count must list at least one positive node count per tree")
    counts = counts.astype(np.int64)
    for name in ("max_depth", "tree_random_state", "tree_max_features"):
        if np.shape(arrays[name]) != counts.shape:
            raise ValueError(f"{name} has shape {np.shape(arrays[name])}, expected "
                             f"{counts.shape} (one per tree)")
        if arrays[name].dtype.kind not in "iu":
            raise ValueError(f"{name} has dtype {arrays[name].dtype}, not integer")
    if (arrays["max_depth"] < 0).any() or (arrays["max_depth"] >= counts).any():
        raise ValueError("max_depth must lie in 0 .. node_count - 1 for every tree")
    if (arrays["tree_max_features"] < 1).any() or \
            (arrays["tree_max_features"] > n_features).any():
        raise ValueError(f"tree_max_features must lie in 1 .. {n_features}")
    total = int(counts.sum())
    values = np.asarray(arrays["values"], dtype=np.float64)
    if values.shape != (total, 1, n_classes):
        raise ValueError(f"values has shape {values.shape}, expected {(total, 1, n_classes)}")
    if not np.isfinite(values).all():
        raise ValueError("values holds NaN or infinite entries")
    # a classifier tree's node values are class fractions (what predict_proba averages)
    if (values < 0).any() or (values > 1).any() or \
            not np.allclose(values.sum(axis=2), 1.0, rtol=0, atol=1e-6):
        raise ValueError("values are not class fractions (each in [0, 1], summing to 1 "
                         "per node)")
    for name in node_dtype.names:
        if name not in arrays and name != "missing_go_to_left":
            raise ValueError(f"node field {name!r} missing")
        if name in arrays and arrays[name].shape != (total,):
            raise ValueError(f"node field {name!r} has shape {arrays[name].shape}")
        if name in arrays and arrays[name].dtype.kind not in "iuf" + "b" * (
                name == "missing_go_to_left"):
            raise ValueError(f"node field {name!r} has dtype {arrays[name].dtype}, not numeric")
        if name in ("left_child", "right_child", "feature", "n_node_samples",
                    "missing_go_to_left") and name in arrays and \
                arrays[name].dtype.kind not in "iub":
            raise ValueError(f"node field {name!r} has dtype {arrays[name].dtype}, not integer")
        if name in ("impurity", "weighted_n_node_samples", "n_node_samples") and \
                name in arrays:
            a = np.asarray(arrays[name], dtype=np.float64)
            if not np.isfinite(a).all() or (a < 0).any():
                raise ValueError(f"node field {name!r} holds NaN, infinite or negative values")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    trees = []
    for i, n in enumerate(counts.tolist()):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        nodes = np.zeros(n, dtype=node_dtype)
        for name in node_dtype.names:
            if name in arrays:
                nodes[name] = arrays[name][lo:hi]
        _check_nodes(i, {k: arrays[k][lo:hi] for k in ("left_child", "right_child", "feature",
                                                       "threshold")}, n_features)
        tree = Tree(n_features, n_classes_arr, 1)
        tree.__setstate__({"max_depth": int(arrays["max_depth"][i]), "node_count": n,
                           "nodes": nodes, "values": np.ascontiguousarray(values[lo:hi])})
        seed = int(arrays["tree_random_state"][i])
        est = DecisionTreeClassifier(**tree_params, random_state=seed if seed >= 0 else None)
        est.n_features_in_ = n_features
        est.n_outputs_ = 1
        est.classes_ = np.arange(n_classes, dtype=np.float64)
        est.n_classes_ = np.int64(n_classes)
        est.max_features_ = int(arrays["tree_max_features"][i])
        est.tree_ = tree
        trees.append(est)
    return trees


def _check_nodes(tree: int, nodes: dict[str, np.ndarray], n_features: int) -> None:
    """Raise ValueError unless the node arrays of one tree make a tree sklearn can walk.

    sklearn's Cython traversal trusts these arrays: a child cycle loops forever and
    a feature index out of range reads outside the input.  Leaves have both
    children -1; an internal node's children come after it (sklearn grows trees
    depth first, so a walk always ends), its feature is an input column and its
    threshold a number (not NaN).
    """
    left, right = nodes["left_child"].astype(np.int64), nodes["right_child"].astype(np.int64)
    n = left.size
    leaf = left == -1
    node = np.arange(n)
    bad = np.flatnonzero((right == -1) != leaf)
    if bad.size:
        raise ValueError(f"tree {tree} node {bad[0]}: one child is -1 and the other is not")
    inner = ~leaf
    bad = np.flatnonzero(inner & ((left <= node) | (right <= node) | (left >= n) | (right >= n)))
    if bad.size:
        k = bad[0]
        raise ValueError(f"tree {tree} node {k}: children {left[k]}, {right[k]} must lie "
                         f"after the node and below {n}")
    feature = nodes["feature"].astype(np.int64)
    bad = np.flatnonzero(inner & ((feature < 0) | (feature >= n_features)))
    if bad.size:
        raise ValueError(f"tree {tree} node {bad[0]}: feature {feature[bad[0]]} is not in "
                         f"0..{n_features - 1}")
    # +inf is legitimate: sklearn's split that sends only the missing values right
    bad = np.flatnonzero(inner & np.isnan(nodes["threshold"].astype(np.float64)))
    if bad.size:
        raise ValueError(f"tree {tree} node {bad[0]}: threshold is NaN")


def _seed(rs: Any) -> int:
    return int(rs) if isinstance(rs, (int, np.integer)) else -1


def _optional_int(v: Any) -> int | None:
    return None if v is None else int(v)

