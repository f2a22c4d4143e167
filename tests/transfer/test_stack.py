"""The cross-validated stack of the delivered model's candidates (not yet the default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from lsm.models import DeliveredModel, LogisticModel, get_family
from lsm.transfer import select as S
from lsm.transfer.stack import fit_stack, stack_weights


def _labels(logit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (rng.random(logit.size) < expit(logit)).astype(int)


def _margins(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Column 0 (the default) is a weak, column 1 a strong predictor; column 2 is noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = _labels(3.0 * z, rng)
    M = np.column_stack([0.8 * z + 1.5 * rng.normal(size=n), 3.0 * z, rng.normal(size=n)])
    return M, y


def test_weights_move_to_a_clearly_better_candidate_as_n_grows() -> None:
    w_small, _ = stack_weights(*_margins(10, 1), default=0)
    w_big, _ = stack_weights(*_margins(4000, 1), default=0)
    # with thousands of rows the stack is (nearly) the better candidate alone
    assert w_big[1] > 0.9 and w_big[0] < 0.1 and w_big[2] < 0.05
    # with ten rows it stays much nearer the default
    assert w_small[0] > 0.5 > w_small[1]
    assert (w_small >= 0).all() and (w_big >= 0).all()


def test_weights_stay_at_the_default_when_nothing_is_better() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    z = rng.normal(size=n)
    y = _labels(z, rng)
    M = np.column_stack([z, rng.normal(size=n), rng.normal(size=n)])
    w, b = stack_weights(M, y, default=0)
    assert w[0] == pytest.approx(1.0, abs=0.1)
    assert w[1] < 0.05 and w[2] < 0.05 and abs(b) < 0.15


def _light(fam: str, seed: int):
    model = get_family(fam)(random_state=seed)
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    return model


def test_fit_stack_builds_a_code_free_delivered_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    Xs = pd.DataFrame(rng.normal(size=(2000, 2)), columns=["a", "b"])
    source = LogisticModel().fit(Xs, _labels(2 * Xs["a"] - Xs["b"], rng))
    X = pd.DataFrame(rng.normal(size=(300, 2)), columns=["a", "b"])
    y = _labels(2 * X["a"] + 1.5 * X["b"], rng)  # b's sign differs from the source's
    ctx = S.Context(sources={"lr": source}, make_target=_light, seed=0, n_features=2,
                    feature_names=["a", "b"])
    pool = S.default_strategies(["lr"], ["lr"], stages=False)
    shots = S.make_batch({"lr": source}, X)
    sel = S.select_strategy(pool, shots, y, ctx, n_repeats=1)
    model, weights = fit_stack(sel, pool, shots, y, ctx)
    assert weights and all(v > 0 for v in weights.values())
    # the source alone is wrong about b: the stack leaves it and the default behind
    assert weights.get("recal(lr)", 0.0) < 0.1
    assert sum(v for n, v in weights.items() if "lr" in n and n != "recal(lr)") > 0.5
    model.save(tmp_path / "stack")
    loaded = DeliveredModel.load(tmp_path / "stack")
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, model.predict_proba(X)[:, 1]) > 0.85
