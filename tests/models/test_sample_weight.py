"""``fit(X, y, sample_weight=...)`` of the four families, as scikit-learn defines it:
an integer weight acts like repeating the row, a zero weight removes the row."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lsm.models import LogisticModel, MLPModel, RandomForestModel, XGBModel


def _make(family: str, seed: int = 0):
    if family == "rf":
        return RandomForestModel(n_estimators=200, n_jobs=1, random_state=seed)
    if family == "lr":
        return LogisticModel(random_state=seed)
    if family == "xgb":  # no row subsampling: repeated rows would be drawn independently
        return XGBModel(n_estimators=100, subsample=1.0, n_jobs=1, random_state=seed)
    return MLPModel(hidden_layer_sizes=(16,), max_epochs=60, device="cpu", random_state=seed)


FAMILIES = ["rf", "lr", "xgb", "mlp"]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 300
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] - X[:, 1] + rng.normal(size=n) > 0).astype(int)
    X_test = rng.normal(size=(500, 5))
    y_test = (X_test[:, 0] - X_test[:, 1] > 0).astype(int)
    return {"X": X, "y": y, "X_test": X_test, "y_test": y_test,
            "w": rng.integers(0, 4, n)}


@pytest.mark.parametrize("family", ["lr", "xgb"])
def test_integer_weights_are_repeated_rows_exactly(family: str, data) -> None:
    X, y, w = data["X"], data["y"], data["w"]
    weighted = _make(family).fit(X, y, sample_weight=w).predict_proba(data["X_test"])
    repeated = _make(family).fit(np.repeat(X, w, axis=0),
                                 np.repeat(y, w)).predict_proba(data["X_test"])
    # lr: the same convex optimum; xgb: the same gradients and hessians (float32 sums)
    np.testing.assert_allclose(weighted, repeated, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_integer_weights_act_like_repeated_rows(family: str, data) -> None:
    """Landslides weighted 4: the base rate moves as if they were repeated 4 times.

    Only approximately for rf (bootstrap draws and ``min_samples_leaf`` count rows,
    not weights) and mlp (mini-batches are drawn over rows, early stopping).
    """
    X, y = data["X"], data["y"]
    w = np.where(y == 1, 4, 1)
    Xt = data["X_test"]
    weighted = _make(family).fit(X, y, sample_weight=w).predict_proba(Xt)[:, 1]
    repeated = _make(family).fit(np.repeat(X, w, axis=0), np.repeat(y, w)).predict_proba(Xt)[:, 1]
    plain = _make(family).fit(X, y).predict_proba(Xt)[:, 1]
    assert weighted.mean() > plain.mean() + 0.05
    assert abs(weighted.mean() - repeated.mean()) < 0.1
    if family != "mlp":  # an MLP on 300 rows varies too much from fit to fit
        assert np.corrcoef(weighted, repeated)[0, 1] > 0.95


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_weights_remove_rows(family: str, data) -> None:
    """Rows with flipped labels and weight 0 leave the model as if they were absent."""
    X, y, Xt, yt = data["X"], data["y"], data["X_test"], data["y_test"]
    rng = np.random.default_rng(1)
    X_junk = rng.normal(size=(600, 5))
    y_junk = 1 - (X_junk[:, 0] - X_junk[:, 1] > 0).astype(int)
    X_all, y_all = np.vstack([X, X_junk]), np.r_[y, y_junk]
    w = np.r_[np.ones(len(y)), np.zeros(len(y_junk))]
    clean = _make(family).fit(X, y).predict_proba(Xt)[:, 1]
    zero = _make(family).fit(X_all, y_all, sample_weight=w).predict_proba(Xt)[:, 1]
    junk = _make(family).fit(X_all, y_all).predict_proba(Xt)[:, 1]
    if family in ("lr", "xgb"):
        np.testing.assert_allclose(zero, clean, rtol=0, atol=1e-6)
    assert roc_auc_score(yt, zero) > roc_auc_score(yt, clean) - 0.03
    assert roc_auc_score(yt, junk) < roc_auc_score(yt, clean) - 0.2


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_weights_are_refused(family: str, data) -> None:
    X, y = data["X"][:60], data["y"][:60]
    for bad, match in ((np.zeros(60), "non-zero"), (-np.ones(60), "(?i)negative"),
                       (np.ones(59), "shape"), (np.r_[np.nan, np.ones(59)], "NaN")):
        with pytest.raises(ValueError, match=match):
            _make(family).fit(X, y, sample_weight=bad)


@pytest.mark.parametrize("family", ["lr", "xgb"])
def test_unit_weights_change_nothing(family: str, data) -> None:
    X, y, Xt = data["X"], data["y"], data["X_test"]
    np.testing.assert_array_equal(_make(family).fit(X, y, sample_weight=np.ones(len(y)))
                                  .predict_proba(Xt), _make(family).fit(X, y).predict_proba(Xt))


def test_mlp_weights_reach_the_validation_loss(data) -> None:
    """Early stopping scores the weighted loss: the held-out rows of weight 0 do not count."""
    X, y = data["X"], data["y"]
    m = MLPModel(hidden_layer_sizes=(8,), max_epochs=5, device="cpu")
    w = np.ones(len(y))
    idx_tr, idx_va = m._split(y.astype(np.float32), 0, w)
    assert idx_va.size > 0
    w[idx_va[: idx_va.size // 2]] = 0.0
    flipped = y.copy()
    flipped[idx_va[: idx_va.size // 2]] ^= 1  # would raise the unweighted validation loss
    a = MLPModel(hidden_layer_sizes=(8,), max_epochs=5, device="cpu", random_state=0)
    a._split = lambda y01, seed, w=None: (idx_tr, idx_va)  # type: ignore[method-assign]
    a.fit(X, flipped, sample_weight=w)
    b = MLPModel(hidden_layer_sizes=(8,), max_epochs=5, device="cpu", random_state=0)
    b._split = lambda y01, seed, w=None: (idx_tr, idx_va)  # type: ignore[method-assign]
    b.fit(X, y, sample_weight=w)
    # the flipped rows carry weight 0 in training and validation: same curves
    np.testing.assert_allclose(a.validation_loss_curve_, b.validation_loss_curve_, rtol=1e-6)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-6)
