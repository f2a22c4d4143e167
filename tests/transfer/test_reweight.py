"""Region-balanced and importance (covariate-shift) weights of source rows."""

from __future__ import annotations

import numpy as np
import pytest

from lsm.transfer.reweight import balanced_weights, effective_sample_size, importance_weights


def test_balanced_weights_give_each_group_the_same_total() -> None:
    groups = np.array(["hk"] * 900 + ["yx"] * 100)
    w = balanced_weights(groups)
    assert w.mean() == pytest.approx(1.0)
    assert w[groups == "hk"].sum() == pytest.approx(w[groups == "yx"].sum())
    np.testing.assert_array_equal(balanced_weights(["a", "a"]), [1.0, 1.0])
    with pytest.raises(ValueError):
        balanced_weights([])


def test_effective_sample_size() -> None:
    assert effective_sample_size(np.ones(50)) == pytest.approx(50)
    assert effective_sample_size(np.r_[np.ones(1), np.zeros(49)]) == pytest.approx(1)


@pytest.fixture(scope="module")
def shifted() -> tuple[np.ndarray, np.ndarray]:
    """Target terrain is steeper (feature 0 shifted by +1 sd) and alike otherwise."""
    rng = np.random.default_rng(0)
    Xs = rng.normal(size=(2000, 3))
    Xt = rng.normal(size=(800, 3)) + np.array([1.0, 0.0, 0.0])
    return Xs, Xt


@pytest.mark.parametrize("classifier", ["logistic", "boosting"])
def test_weights_favour_source_rows_that_look_like_the_target(shifted, classifier: str) -> None:
    Xs, Xt = shifted
    w, info = importance_weights(Xs, Xt, classifier=classifier, seed=0)
    assert w.shape == (len(Xs),) and (w > 0).all()
    assert w.mean() == pytest.approx(1.0)
    like_target = Xs[:, 0] > 1.0
    unlike = Xs[:, 0] < -1.0
    assert w[like_target].mean() > 3 * w[unlike].mean()
    assert np.corrcoef(w, Xs[:, 0])[0, 1] > 0.5
    # the unshifted features carry no weight signal
    assert abs(np.corrcoef(w, Xs[:, 1])[0, 1]) < 0.1
    # the weighted source mean of feature 0 moves towards the target's (+1)
    assert np.average(Xs[:, 0], weights=w) > 0.6
    assert 0.55 < info["domain_auc"] < 0.9
    assert info["ess"] == pytest.approx(effective_sample_size(w))
    assert 0.1 < info["ess_fraction"] < 0.9


def test_no_shift_means_nearly_equal_weights() -> None:
    rng = np.random.default_rng(1)
    w, info = importance_weights(rng.normal(size=(2000, 3)), rng.normal(size=(1000, 3)), seed=0)
    assert info["ess_fraction"] > 0.97
    assert info["domain_auc"] < 0.56


def test_clip_bounds_the_weights(shifted) -> None:
    Xs, Xt = shifted
    Xt = Xt + np.array([3.0, 0.0, 0.0])  # far away: raw ratios span many orders
    w, info = importance_weights(Xs, Xt, clip=5.0, seed=0)
    assert info["clipped"] > 0
    assert w.max() / w.min() <= 25.0 + 1e-9
    assert w.mean() == pytest.approx(1.0)


def test_base_weights_are_kept(shifted) -> None:
    """Region balance times the shift ratio: a doubled base weight doubles the result."""
    Xs, Xt = shifted
    base = np.where(np.arange(len(Xs)) % 2 == 0, 2.0, 1.0)
    w, _ = importance_weights(Xs, Xt, base_weight=base, seed=0)
    plain, _ = importance_weights(Xs, Xt, seed=0)
    ratio = (w / plain)
    assert ratio[base == 2.0].mean() == pytest.approx(2 * ratio[base == 1.0].mean(), rel=0.05)


def test_bad_inputs_are_refused(shifted) -> None:
    Xs, Xt = shifted
    with pytest.raises(ValueError, match="same columns"):
        importance_weights(Xs, Xt[:, :2])
    with pytest.raises(ValueError, match="clip"):
        importance_weights(Xs, Xt, clip=1.0)
    with pytest.raises(ValueError, match="base_weight"):
        importance_weights(Xs, Xt, base_weight=np.ones(3))
    with pytest.raises(ValueError, match="classifier"):
        importance_weights(Xs, Xt, classifier="svm")  # type: ignore[arg-type]
