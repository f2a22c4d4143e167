"""Transfer stages of the boosted-trees family.

Stage 1, :func:`adapt_xgb`: every source tree keeps its splits; its leaf
values are re-estimated on the shots with XGBoost's ``refresh`` updater
(``process_type="update"``, ``refresh_leaf=1``), tree after tree, each on the
residuals of the refreshed trees before it.  On 20..200 shots a full refresh
over-fits (and the ``lambda`` of the refresh shrinks leaves towards 0, not
towards the source), so the new leaf value is a blend::

    leaf = blend * refreshed + (1 - blend) * source

with ``blend = 0.5`` by default.  On synthetic shifted targets a half blend
beat both the source and the full refresh at 20, 50 and 200 shots; the full
refresh was worse than the source below ~50 shots.

Before the refresh, stage 1 re-fits the model's base score (one logit offset,
maximum likelihood on the shots).  A source trained at another prevalence
(e.g. 3 % landslides) predicts near 0 for most shots; the refresh and later
boosting rounds then see tiny hessians and barely move.  Shifting the base
score first puts the shots on the balanced scale they were drawn at.

Stage 2, :func:`finetune_xgb`: a few more boosting rounds on the shots on top
of the stage-1 model (default 20 rounds of depth-2 trees, ``eta = 0.05``,
``lambda = 10``): small, strongly regularised corrections that the source
trees cannot express.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from lsm.models.xgb import XGBModel
from lsm.transfer import register_stages
from lsm.transfer.prior import check_shots

# Shots are a few hundred rows at most: threads cost more than they save there.
_STAGE_THREADS = 1


def adapt_xgb(model: Any, X: Any, y: Any, *, random_state: int | None = 0,
              blend: float = 0.5, reg_lambda: float = 1.0) -> Any:
    """Stage 1: a copy of ``model`` whose leaf values are refreshed on the shots.

    Parameters
    ----------
    model : XGBModel
        Fitted binary source model (not modified).
    X, y : array-like
        Target shots; ``y`` must hold both classes.
    random_state : int or None
        Unused (the refresh is deterministic).
    blend : float in [0, 1], default 0.5
        Weight of the refreshed leaf values; the rest is the source's.
        1 is XGBoost's plain refresh, 0 returns the source unchanged.
    reg_lambda : float, default 1.0
        L2 penalty of the refresh on each leaf value (shrinks towards 0).

    Returns
    -------
    XGBModel
        New model with the same trees (features, thresholds, default
        directions) and new leaf values.
    """
    import xgboost as xgb

    from lsm.models.xgb import n_trees, xgb_threads

    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must lie in [0, 1], got {blend!r}")
    X, y01 = check_shots(model, X, y, dtype=np.float32, ensure_all_finite="allow-nan")
    source = _shift_base_score(model.booster_, X, y01)
    params = {"process_type": "update", "updater": "refresh", "refresh_leaf": 1,
              "lambda": reg_lambda, "verbosity": 0, "nthread": _STAGE_THREADS}
    dtrain = xgb.DMatrix(X, label=y01, missing=np.nan, nthread=_STAGE_THREADS)
    refreshed = xgb.train(params, dtrain, num_boost_round=n_trees(source),
                          xgb_model=source.copy())
    booster = _blend_leaves(source, refreshed, blend)
    booster.set_param(xgb_threads(model.n_jobs))
    return _with_booster(model, booster)


def finetune_xgb(model: Any, X: Any, y: Any, *, source: Any = None,
                 random_state: int | None = 0, n_rounds: int = 20, learning_rate: float = 0.05,
                 max_depth: int = 2, reg_lambda: float = 10.0, min_child_weight: float = 1.0,
                 subsample: float = 1.0) -> Any:
    """Stage 2: ``n_rounds`` more boosting rounds on the shots, on top of ``model``.

    Parameters
    ----------
    model : XGBModel
        Starting point, usually the stage-1 model (not modified).
    X, y : array-like
        Target shots.
    source : XGBModel, optional
        Unused: the anchor is ``model`` itself, which the few small new trees
        only correct.
    random_state : int or None, default 0
        Seed of the new rounds (matters when ``subsample < 1``).
    n_rounds, learning_rate, max_depth, reg_lambda, min_child_weight, subsample
        Booster parameters of the new rounds.

    Returns
    -------
    XGBModel
        New model with ``n_rounds`` more trees.
    """
    import xgboost as xgb

    from lsm.models.xgb import xgb_seed, xgb_threads

    X, y01 = check_shots(model, X, y, dtype=np.float32, ensure_all_finite="allow-nan")
    params = {"process_type": "default", "tree_method": "hist", "eta": learning_rate,
              "max_depth": max_depth, "lambda": reg_lambda,
              "min_child_weight": min_child_weight, "subsample": subsample,
              "seed": xgb_seed(random_state), "verbosity": 0, "nthread": _STAGE_THREADS}
    dtrain = xgb.DMatrix(X, label=y01, missing=np.nan, nthread=_STAGE_THREADS)
    booster = xgb.train(params, dtrain, num_boost_round=n_rounds,
                        xgb_model=model.booster_.copy())
    booster.set_param(xgb_threads(model.n_jobs))
    return _with_booster(model, booster)


def _shift_base_score(booster: Any, X: np.ndarray, y01: np.ndarray) -> Any:
    """A copy of ``booster`` whose base score absorbs the best logit offset on (X, y)."""
    import xgboost as xgb

    margin = booster.predict(xgb.DMatrix(X, missing=np.nan, nthread=_STAGE_THREADS),
                             output_margin=True).astype("float64")
    delta = 0.0
    for _ in range(50):  # Newton steps on the 1-D log-likelihood
        p = 1.0 / (1.0 + np.exp(-(margin + delta)))
        grad, hess = float(np.sum(p - y01)), float(np.sum(p * (1 - p))) + 1e-9
        step = np.clip(grad / hess, -5.0, 5.0)
        delta -= step
        if abs(step) < 1e-8:
            break
    cfg = json.loads(bytes(booster.save_raw(raw_format="json")))
    param = cfg["learner"]["learner_model_param"]
    raw = str(param["base_score"]).strip("[]")
    base = min(max(float(raw), 1e-7), 1 - 1e-7)
    shifted = 1.0 / (1.0 + np.exp(-(np.log(base / (1 - base)) + delta)))
    shifted = min(max(float(shifted), 1e-7), 1 - 1e-7)
    param["base_score"] = f"[{shifted:.9E}]" if str(param["base_score"]).startswith("[") \
        else f"{shifted:.9E}"
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(cfg).encode("utf-8")))
    return out


def _with_booster(model: Any, booster: Any) -> Any:
    """A copy of ``model`` holding ``booster`` (the old booster is not copied needlessly)."""
    out = copy.copy(model)
    out.__dict__ = {k: copy.deepcopy(v) for k, v in model.__dict__.items() if k != "booster_"}
    out.booster_ = booster
    return out


def _blend_leaves(source: Any, refreshed: Any, blend: float) -> Any:
    """``refreshed`` with leaf values ``blend * refreshed + (1 - blend) * source``."""
    import xgboost as xgb

    if blend == 1.0:
        return refreshed
    src = json.loads(bytes(source.save_raw(raw_format="json")))
    new = json.loads(bytes(refreshed.save_raw(raw_format="json")))
    src_trees = src["learner"]["gradient_booster"]["model"]["trees"]
    new_trees = new["learner"]["gradient_booster"]["model"]["trees"]
    w = np.float32(blend)
    for ts, tn in zip(src_trees, new_trees, strict=True):
        leaf = np.asarray(tn["left_children"]) == -1
        # a leaf's value is its split_conditions entry (base_weights mirrors it)
        for key in ("split_conditions", "base_weights"):
            a_src = np.asarray(ts[key], dtype=np.float32)
            a_new = np.asarray(tn[key], dtype=np.float32)
            a_new[leaf] = w * a_new[leaf] + (np.float32(1) - w) * a_src[leaf]
            tn[key] = a_new.tolist()
    booster = xgb.Booster()
    booster.load_model(bytearray(json.dumps(new).encode("utf-8")))
    return booster


register_stages(XGBModel, adapt_xgb, finetune_xgb)
