"""The delivered model: its strategies, the choice on the shots, and its artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from lsm.errors import ArtifactError
from lsm.evaluate.metrics import paired_difference
from lsm.models import DeliveredModel, LogisticModel, get_family
from lsm.transfer import select as S

COLS = ["a", "b", "c", "d"]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, len(COLS))), columns=COLS)


def _labels(logit: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(logit.size) < expit(logit)).astype(int)


@pytest.fixture(scope="module")
def source() -> LogisticModel:
    """A source model of ``2a - b``, trained on plenty of data."""
    X = _frame(4000, 0)
    y = _labels(2 * X["a"] - X["b"], 1)
    return LogisticModel().fit(X, y)


def _make_target(fam: str, seed: int):
    model = get_family(fam)(random_state=seed)
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    if fam == "rf":
        model.set_params(n_estimators=50)
    return model


def test_fit_head_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=20_000)
    X = rng.normal(size=(20_000, 2))
    y = _labels(0.5 * z - 1.0 + X @ np.array([0.8, 0.0]), 4).astype(float)
    a, b, beta = S.fit_head(y, z, X, lam_x=1e-3, lam_z=1e-3)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.05)
    assert beta == pytest.approx([0.8, 0.0], abs=0.05)
    # Platt only: no factor coefficients
    a2, b2, beta2 = S.fit_head(y, z)
    assert beta2 is None and a2 > 0


def test_same_relation_keeps_the_source_and_a_new_factor_is_learned(source) -> None:
    """Target = source (shifted prevalence): recalibration suffices. Target with a new
    factor effect the source lacks: the offset model must beat recalibration."""
    X = _frame(300, 10)
    same = _labels(2 * X["a"] - X["b"] - 1.0, 11)
    batch = S.make_batch({"lr": source}, X)
    ctx = S.Context(sources={"lr": source}, make_target=_make_target, seed=0, n_features=4,
                    feature_names=COLS)
    pool = [S.Strategy("recal", source="lr", rank=10),
            S.Strategy("offset", source="lr", lam=3.0, rank=20),
            S.Strategy("target", member="lr", rank=60)]
    sel = S.select_strategy(pool, batch, same, ctx)
    assert sel.chosen.name == "recal(lr)"
    # recalibration moved the intercept down to the target's lower prevalence
    m = S.build(sel.chosen, batch, same, ctx)
    assert m.intercept_ < -0.5
    new = _labels(2 * X["a"] - X["b"] + 2.5 * X["c"], 12)
    sel2 = S.select_strategy(pool, batch, new, ctx)
    assert sel2.chosen.kind in ("offset", "target")  # both can learn the new effect
    assert sel2.cv_loss["offset(lr, lam=3)"] < sel2.cv_loss["recal(lr)"] - 0.05
    m2 = S.build(S.Strategy("offset", source="lr", lam=3.0), batch, new, ctx)
    assert m2.x_coef_[2] > 1.0  # the new factor's effect, learned from the shots


def test_residual_boosting_learns_what_the_source_misses(source) -> None:
    X = _frame(400, 20)
    y = _labels(2 * X["a"] - X["b"] + 3.0 * (X["d"] > 0.5), 21)
    ctx = S.Context(sources={"lr": source}, make_target=_make_target, seed=0, n_features=4,
                    feature_names=COLS)
    batch = S.make_batch({"lr": source}, X)
    pool = [S.Strategy("recal", source="lr", rank=10),
            S.Strategy("residual", source="lr", rank=30)]
    sel = S.select_strategy(pool, batch, y, ctx)
    assert sel.chosen.name == "residual(lr)"
    assert sel.cv_loss["residual(lr)"] < sel.cv_loss["recal(lr)"]


def test_the_default_stays_unless_another_candidate_is_clearly_better(source) -> None:
    X = _frame(40, 30)
    y = _labels(2 * X["a"] - X["b"], 31)
    ctx = S.Context(sources={"lr": source}, make_target=_make_target, seed=0, n_features=4,
                    feature_names=COLS)
    batch = S.make_batch({"lr": source}, X)
    pool = [S.Strategy("offset", source="lr", lam=30.0, rank=20),
            S.Strategy("recal", source="lr", rank=10)]
    sel = S.select_strategy(pool, batch, y, ctx)
    assert sel.chosen.name == "recal(lr)" and "default recal(lr)" in sel.rule
    # a threshold of 0 standard errors takes the lowest loss, whatever it is
    sel0 = S.select_strategy(pool, batch, y, ctx, switch_se=0.0)
    assert sel0.chosen.name == min(sel0.cv_loss, key=sel0.cv_loss.get)
    # far too few shots to cross-validate: the most preferred candidate, said so
    tiny = S.select_strategy(pool, batch.take(np.array([0, 1, 2])), np.array([0, 1, 0]), ctx)
    assert tiny.chosen.name == "recal(lr)" and "too few" in tiny.rule


def test_default_ensemble_weights_the_source_by_the_number_of_shots(source) -> None:
    assert S.ensemble_weight(20, 20) == pytest.approx(0.5)
    assert S.ensemble_weight(20, 200) == pytest.approx(1 / 11)
    X = _frame(60, 60)
    y = _labels(2 * X["a"] - X["b"] + X["c"], 61)
    sources = {"lr": source}
    model, sel = S.fit_delivered(sources, X, y, make_target=_make_target,
                                 target_families=["lr", "xgb"], seed=0)
    assert sel.chosen.kind == "ensemble" or "beats the default" in sel.rule
    assert "ensemble(lr+lr+xgb, n0=20)" in sel.cv_loss
    if sel.chosen.kind == "ensemble":
        # members: the source (Platt-recalibrated, slope a) and both target families,
        # weighted n0 / (n0 + n) : n / (n0 + n), times one calibration slope
        assert set(model.members_) == {"source_lr", "target_lr", "target_xgb"}
        w = model.weights_
        assert w["target_lr"] == pytest.approx(w["target_xgb"])
        a, _, _ = S.fit_head(np.asarray(y, dtype=float),
                             S.make_batch(sources, X).S["lr"])
        ratio = w["source_lr"] / (w["target_lr"] + w["target_xgb"])
        assert ratio == pytest.approx(a * 20 / 60, rel=1e-6)


def test_shot_folds_are_spatial_only_when_the_shots_are_spread() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    spread = rng.uniform(0, 10_000, size=(100, 2))
    folds, how = S.shot_folds(y, n_splits=5, n_repeats=1, seed=0, xy=spread)
    assert how.startswith("spatial") and len(folds) == 5
    for tr, va in folds:
        assert not set(tr) & set(va) and {0, 1} <= set(y[va])
    clumped = np.zeros((100, 2)) + rng.uniform(0, 1e-6, size=(100, 2))
    clumped[:3] += 10_000
    _, how2 = S.shot_folds(y, n_splits=5, n_repeats=2, seed=0, xy=clumped)
    assert how2.startswith("stratified (5 folds x 2)")
    _, how3 = S.shot_folds(y, n_splits=5, n_repeats=1, seed=0, xy=None)
    assert how3.startswith("stratified")


def test_delivered_model_round_trips_without_pickle(source, tmp_path: Path) -> None:
    X = _frame(120, 40)
    y = _labels(2 * X["a"] - X["b"] + 2 * X["c"], 41)
    ctx = S.Context(sources={"lr": source}, make_target=_make_target, seed=0, n_features=4,
                    feature_names=COLS)
    batch = S.make_batch({"lr": source}, X)
    Xn = _frame(50, 42)
    for st in (S.Strategy("offset", source="lr", lam=3.0), S.Strategy("residual", source="lr"),
               S.Strategy("blend", source="lr", member="rf", weight=0.5)):
        m = S.build(st, batch, y, ctx)
        d = tmp_path / st.kind
        m.save(d)
        back = DeliveredModel.load(d)
        assert back.strategy == st.name
        np.testing.assert_array_equal(back.predict_proba(Xn), m.predict_proba(Xn))
        p = m.predict_proba(Xn)[:, 1]
        assert np.all((p > 0) & (p < 1))
    # the margin of the built model equals the strategy's margin (what CV scored)
    fitted = S._FITTERS["offset"](S.Strategy("offset", source="lr", lam=3.0), batch,
                                  y.astype(float), ctx)
    built = S.build(S.Strategy("offset", source="lr", lam=3.0), batch, y, ctx)
    np.testing.assert_allclose(built.decision_function(Xn),
                               fitted.margin(S.make_batch({"lr": source}, Xn)), atol=1e-9)
    # tampering with the head or a member is refused
    head = tmp_path / "offset" / "head.json"
    h = json.loads(head.read_text())
    h["intercept"] += 1.0
    head.write_text(json.dumps(h))
    with pytest.raises(ArtifactError, match="checksum"):
        DeliveredModel.load(tmp_path / "offset")
    coef = tmp_path / "residual" / "members" / "source_lr" / "coef.json"
    coef.write_text(coef.read_text().replace("[", "[ ", 1))
    with pytest.raises(ArtifactError, match="checksum"):
        DeliveredModel.load(tmp_path / "residual")


def test_mean_source_spreads_the_weight_over_every_family(source) -> None:
    X = _frame(200, 50)
    y = _labels(2 * X["a"] - X["b"], 51)
    other = LogisticModel().fit(X, _labels(X["a"], 52))
    sources = {"lr": source, "lr2": other}
    ctx = S.Context(sources=sources, make_target=_make_target, seed=0, n_features=4,
                    feature_names=COLS)
    batch = S.make_batch(sources, X)
    np.testing.assert_allclose(batch.S["mean"], (batch.S["lr"] + batch.S["lr2"]) / 2)
    m = S.build(S.Strategy("recal", source="mean"), batch, y, ctx)
    assert set(m.members_) == {"source_lr", "source_lr2"}
    w = list(m.weights_.values())
    assert w[0] == pytest.approx(w[1])


def test_paired_difference() -> None:
    d = paired_difference([0.8, 0.9, 0.85, 0.7], [0.7, 0.8, 0.85, 0.75])
    assert d["n"] == 4 and d["mean_diff"] == pytest.approx(0.0375)
    assert d["win_rate"] == pytest.approx(0.5) and d["tie_rate"] == pytest.approx(0.25)
    assert d["ci95_low"] < d["mean_diff"] < d["ci95_high"]
    assert 0 < d["wilcoxon_p"] <= 1
    same = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert same["mean_diff"] == 0 and np.isnan(same["wilcoxon_p"])


def test_a_factor_with_the_opposite_relation_is_flagged_and_can_be_neutralised(source) -> None:
    """The source says 'a' raises the odds; in the target it lowers them (as an unsigned
    curvature against a signed one would): flagged, and the pool gains the sources
    with 'a' held at its mean."""
    Xs = _frame(3000, 70)
    ys = _labels(2 * Xs["a"] - Xs["b"], 71)
    X = _frame(200, 72)
    y = _labels(-2 * X["a"] - 2 * X["b"], 73)
    rel = S.factor_relations(Xs, ys, X, y, ["a", "b", "c"])
    assert rel["a"]["disagree"] and not rel["b"]["disagree"] and not rel["c"]["disagree"]
    assert rel["a"]["source_slope"] > 0 > rel["a"]["target_slope"]
    model, sel = S.fit_delivered({"lr": source}, X, y, make_target=_make_target,
                                 target_families=["lr"], seed=0, source_table=(Xs, ys),
                                 continuous=["a", "b", "c", "d"])
    assert sel.neutral == ["a"] and "recal(mean~a)" in sel.cv_loss
    # holding 'a' at its mean removes the source's wrong sign: a better recalibration
    assert sel.cv_loss["recal(mean~a)"] < sel.cv_loss["recal(lr)"]
    held = S.build(S.Strategy("recal", source="mean~a"), S.make_batch({"lr": source}, X,
                                                                      neutral=["a"]), y,
                   S.Context(sources={"lr": source}, make_target=_make_target,
                             n_features=4, feature_names=COLS))
    assert held.neutral_ == {"source_lr~a": ["a"]}
    Xn = _frame(20, 74)
    moved = Xn.assign(a=Xn["a"] + 5.0)
    np.testing.assert_allclose(held.predict_proba(Xn), held.predict_proba(moved))
