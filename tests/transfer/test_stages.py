"""Transfer stages of the rf, lr and xgb families: what changes, what stays, does it help."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from lsm.models.lr import LogisticModel
from lsm.models.rf import RandomForestModel
from lsm.models.xgb import XGBModel
from lsm.transfer import adapt, finetune
from lsm.transfer.lr import adapt_lr, finetune_lr
from lsm.transfer.prior import check_shots, prior_shift
from lsm.transfer.rf import adapt_rf, finetune_rf
from lsm.transfer.xgb import adapt_xgb, finetune_xgb

N_FEATURES = 12
COLUMNS = [f"f{i}" for i in range(N_FEATURES)]


def _logistic_world(seed: int, w: np.ndarray, b: float, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Standardised factors; landslides from a logistic model with one non-linear term."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    z = X @ w + b + 0.8 * np.sin(2.0 * X[:, 0])
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return pd.DataFrame(X, columns=COLUMNS), y


def _balanced(X: pd.DataFrame, y: np.ndarray, k: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``k`` landslides and ``k`` non-landslides, as the shots of a real region are drawn."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in (0, 1)])
    return X.iloc[idx].reset_index(drop=True), y[idx]


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(42)
    w_src = rng.normal(0.0, 0.8, N_FEATURES)
    # target region: weaker, partly different factor effects, more landslide-prone overall
    w_tgt = 0.6 * w_src + rng.normal(0.0, 0.3, N_FEATURES)
    Xs, ys = _logistic_world(1, w_src, 0.0, 4000)
    Xt, yt = _logistic_world(2, w_tgt, 2.0, 20000)
    shots = _balanced(Xt.iloc[:10000], yt[:10000], 50, seed=3)
    test = _balanced(Xt.iloc[10000:].reset_index(drop=True), yt[10000:], 2000, seed=4)
    return {"source": (Xs, ys), "shots": shots, "test": test}


@pytest.fixture(scope="module")
def sources(world: dict) -> dict:
    Xs, ys = world["source"]
    return {
        "lr": LogisticModel().fit(Xs, ys),
        "rf": RandomForestModel(n_estimators=100).fit(Xs, ys),
        "xgb": XGBModel(n_estimators=150).fit(Xs, ys),
    }


def _snapshot(model, X) -> np.ndarray:
    return model.predict_proba(X).copy()


# -- every family --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["lr", "rf", "xgb"])
def test_stages_return_new_models_and_leave_source_alone(family: str, sources: dict,
                                                         world: dict) -> None:
    source = sources[family]
    Xq, yq = world["shots"]
    X_test, _ = world["test"]
    before = _snapshot(source, X_test)
    params = source.get_params()
    stage1 = adapt(source, Xq, yq, random_state=0)
    stage2 = finetune(stage1, Xq, yq, source=source, random_state=0)
    assert stage1 is not source and stage2 is not stage1
    assert type(stage1) is type(source) and type(stage2) is type(source)
    assert np.array_equal(source.predict_proba(X_test), before)
    assert source.get_params() == params
    p1 = stage1.predict_proba(X_test)
    stage2b = finetune(stage1, Xq, yq, source=source, random_state=0)
    assert np.array_equal(stage1.predict_proba(X_test), p1)  # stage 2 left stage 1 alone
    assert np.array_equal(stage2b.predict_proba(X_test), stage2.predict_proba(X_test))
    for m in (stage1, stage2):
        assert list(m.feature_names_in_) == COLUMNS
        assert not np.array_equal(m.predict_proba(X_test), before)


# Held-out log-loss gains seen over shot draws (K = 10..100): lr and xgb >= 0.02 for both
# stages; rf >= 0.011 (fixed splits and leaf values can express a level shift but hardly
# the target's weaker factor effects).
MARGIN = {"lr": 0.02, "rf": 0.005, "xgb": 0.02}


@pytest.mark.parametrize("family", ["lr", "rf", "xgb"])
def test_stages_improve_on_a_shifted_target(family: str, sources: dict, world: dict) -> None:
    source = sources[family]
    Xq, yq = world["shots"]
    X_test, y_test = world["test"]
    stage1 = adapt(source, Xq, yq, random_state=0)
    stage2 = finetune(stage1, Xq, yq, source=source, random_state=0)
    loss0 = log_loss(y_test, source.predict_proba(X_test))
    loss1 = log_loss(y_test, stage1.predict_proba(X_test))
    loss2 = log_loss(y_test, stage2.predict_proba(X_test))
    assert loss1 < loss0 - MARGIN[family], (loss0, loss1)
    assert loss2 < loss0 - MARGIN[family], (loss0, loss2)


@pytest.mark.parametrize("family", ["lr", "rf", "xgb"])
def test_shots_are_checked(family: str, sources: dict, world: dict) -> None:
    source = sources[family]
    Xq, yq = world["shots"]
    with pytest.raises(ValueError, match="both classes"):
        adapt(source, Xq, np.ones_like(yq))
    with pytest.raises(ValueError, match="not classes of the model"):
        adapt(source, Xq, np.where(yq == 1, 2, 0))
    with pytest.raises(ValueError, match="feature names"):
        adapt(source, Xq[COLUMNS[::-1]], yq)
    with pytest.raises(ValueError, match="features"), pytest.warns(UserWarning):
        finetune(source, Xq.iloc[:, :5].to_numpy(), yq, source=source)


# -- lr -----------------------------------------------------------------------------


def test_lr_adapt_refits_only_the_intercept(sources: dict, world: dict) -> None:
    source = sources["lr"]
    Xq, yq = world["shots"]
    stage1 = adapt_lr(source, Xq, yq)
    assert np.array_equal(stage1.coef_, source.coef_)
    assert stage1.intercept_[0] != source.intercept_[0]
    # maximum likelihood: predicted and observed landslide counts agree on the shots
    assert stage1.predict_proba(Xq)[:, 1].sum() == pytest.approx(yq.sum(), abs=1e-6)


def test_lr_finetune_is_pulled_towards_the_source(sources: dict, world: dict) -> None:
    source = sources["lr"]
    Xq, yq = world["shots"]
    stage1 = adapt_lr(source, Xq, yq)
    dist = []
    for lam in (0.01, 1.0, 10.0, 100.0, 1e6):
        stage2 = finetune_lr(stage1, Xq, yq, source=source, lam=lam)
        assert not np.array_equal(stage2.coef_, stage1.coef_)
        dist.append(np.linalg.norm(stage2.coef_ - source.coef_))
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False)), dist
    assert dist[-1] < 1e-3
    # lam = 0 is plain maximum likelihood on the shots
    from sklearn.linear_model import LogisticRegression

    ml = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(Xq, yq)
    free = finetune_lr(stage1, Xq, yq, source=source, lam=0.0)
    np.testing.assert_allclose(free.coef_, ml.coef_, atol=1e-3)


# -- xgb ----------------------------------------------------------------------------


def _structure(booster) -> pd.DataFrame:
    df = booster.trees_to_dataframe()
    return df[["Tree", "Node", "Feature", "Split", "Yes", "No", "Missing"]]


def test_xgb_adapt_keeps_the_trees_and_refreshes_the_leaves(sources: dict, world: dict) -> None:
    source = sources["xgb"]
    Xq, yq = world["shots"]
    stage1 = adapt_xgb(source, Xq, yq)
    pd.testing.assert_frame_equal(_structure(stage1.booster_), _structure(source.booster_))
    old, new = source.booster_.trees_to_dataframe(), stage1.booster_.trees_to_dataframe()
    leaf = old["Feature"] == "Leaf"
    assert (old.loc[leaf, "Gain"] != new.loc[leaf, "Gain"]).mean() > 0.5


def test_xgb_adapt_blend_spans_source_to_full_refresh(sources: dict, world: dict) -> None:
    source = sources["xgb"]
    Xq, yq = world["shots"]
    X_test, _ = world["test"]
    same = adapt_xgb(source, Xq, yq, blend=0.0)
    # blend 0 keeps the source's leaves; only the base score moves (one logit offset)
    def lo(m):
        return np.log(m.predict_proba(X_test)[:, 1]) - np.log(m.predict_proba(X_test)[:, 0])
    shift = lo(same) - lo(source)
    assert np.ptp(shift) < 1e-4
    leaf = [m.booster_.trees_to_dataframe().query("Feature == 'Leaf'")["Gain"].to_numpy()
            for m in (source, same)]
    np.testing.assert_array_equal(leaf[0], leaf[1])
    full = adapt_xgb(source, Xq, yq, blend=1.0)
    half = adapt_xgb(source, Xq, yq, blend=0.5)
    leaves = [m.booster_.trees_to_dataframe().query("Feature == 'Leaf'")["Gain"].to_numpy()
              for m in (source, half, full)]
    np.testing.assert_allclose(leaves[1], 0.5 * (leaves[0] + leaves[2]), rtol=1e-5, atol=1e-7)


def test_xgb_finetune_adds_rounds(sources: dict, world: dict) -> None:
    from lsm.models.xgb import n_trees

    source = sources["xgb"]
    Xq, yq = world["shots"]
    stage1 = adapt_xgb(source, Xq, yq)
    stage2 = finetune_xgb(stage1, Xq, yq, source=source, n_rounds=7)
    assert n_trees(stage2.booster_) == n_trees(stage1.booster_) + 7
    s1, s2 = _structure(stage1.booster_), _structure(stage2.booster_)
    pd.testing.assert_frame_equal(s2[s2["Tree"] < n_trees(stage1.booster_)], s1)


def test_xgb_stage_models_round_trip(sources: dict, world: dict, tmp_path) -> None:
    Xq, yq = world["shots"]
    X_test, _ = world["test"]
    stage2 = finetune(adapt(sources["xgb"], Xq, yq), Xq, yq, source=sources["xgb"])
    stage2.save(tmp_path)
    assert np.array_equal(XGBModel.load(tmp_path).predict_proba(X_test),
                          stage2.predict_proba(X_test))


# -- rf -----------------------------------------------------------------------------


def test_rf_adapt_changes_only_values(sources: dict, world: dict) -> None:
    source = sources["rf"]
    Xq, yq = world["shots"]
    stage1 = adapt_rf(source, Xq, yq)
    changed = 0
    for a, b in zip(stage1.forest_.estimators_, source.forest_.estimators_, strict=True):
        for attr in ("children_left", "children_right", "feature", "threshold",
                     "n_node_samples", "weighted_n_node_samples"):
            assert np.array_equal(getattr(a.tree_, attr), getattr(b.tree_, attr))
        changed += not np.array_equal(a.tree_.value, b.tree_.value)
        np.testing.assert_allclose(a.tree_.value.sum(axis=2), 1.0)
    assert changed == len(source.forest_.estimators_)


def test_rf_adapt_leaf_update_without_shift(sources: dict, world: dict) -> None:
    source = sources["rf"]
    Xq, yq = world["shots"]
    Xa = Xq.to_numpy(dtype=np.float32)
    m = 4.0
    stage1 = adapt_rf(source, Xq, yq, prior_strength=m, shift=False)
    tree_src, tree_new = source.forest_.estimators_[0].tree_, stage1.forest_.estimators_[0].tree_
    leaves = tree_src.apply(Xa)
    untouched = np.setdiff1d(np.flatnonzero(tree_src.children_left == -1), leaves)
    assert np.array_equal(tree_new.value[untouched], tree_src.value[untouched])
    leaf = leaves[0]
    n = (leaves == leaf).sum()
    n1 = yq[leaves == leaf].sum()
    expected = (n1 + m * tree_src.value[leaf, 0, 1]) / (n + m)
    assert tree_new.value[leaf, 0, 1] == pytest.approx(expected)
    # an infinitely strong prior and no shift is the source forest
    same = adapt_rf(source, Xq, yq, prior_strength=1e12, shift=False)
    np.testing.assert_allclose(same.predict_proba(Xq), source.predict_proba(Xq), atol=1e-9)


def test_rf_finetune_appends_trees(sources: dict, world: dict, tmp_path) -> None:
    source = sources["rf"]
    Xq, yq = world["shots"]
    stage1 = adapt_rf(source, Xq, yq)
    stage2 = finetune_rf(stage1, Xq, yq, source=source)
    n_old = len(stage1.forest_.estimators_)
    expected_new = round(n_old * len(yq) / 500.0)
    assert len(stage2.forest_.estimators_) == n_old + expected_new
    assert stage2.forest_.n_estimators == n_old + expected_new
    for a, b in zip(stage2.forest_.estimators_[:n_old], stage1.forest_.estimators_, strict=True):
        assert np.array_equal(a.tree_.value, b.tree_.value)
    assert len(finetune_rf(stage1, Xq, yq, source=source, n_new=7).forest_.estimators_) \
        == n_old + 7
    stage2.save(tmp_path)
    back = RandomForestModel.load(tmp_path)
    assert np.array_equal(back.predict_proba(Xq), stage2.predict_proba(Xq))


# -- shared helpers ------------------------------------------------------------------


def test_prior_shift() -> None:
    p = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    assert prior_shift(np.array([0.5]), 0.5, 0.1)[0] == pytest.approx(0.1)
    back = prior_shift(prior_shift(p[1:4], 0.5, 0.02), 0.02, 0.5)
    np.testing.assert_allclose(back, p[1:4])
    out = prior_shift(p, 0.5, 0.3)
    assert np.all(np.isfinite(out)) and np.all(np.diff(out) > 0)
    np.testing.assert_allclose(prior_shift(p[1:4], 0.3, 0.3), p[1:4], rtol=1e-12)
    with pytest.raises(ValueError, match="to_prevalence"):
        prior_shift(p, 0.5, 1.0)


def test_check_shots_maps_labels_to_the_second_class(sources: dict, world: dict) -> None:
    Xq, yq = world["shots"]
    model = LogisticModel().fit(Xq, np.where(yq == 1, "slide", "stable"))
    X, y01 = check_shots(model, Xq, np.where(yq == 1, "slide", "stable"))
    # classes_ sort to ["slide", "stable"]: the second class is "stable"
    assert np.array_equal(y01, (yq == 0).astype(float))
    assert X.shape == Xq.shape
