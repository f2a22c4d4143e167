"""Two-stage transfer of the MLP: what each stage may change, anchoring, and that it helps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lsm.models.mlp import MLPModel
from lsm.transfer import adapt, finetune
from lsm.transfer.mlp import adapt_mlp, finetune_mlp

D = 8


def _log_loss(model: MLPModel, X: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(model.predict_proba(X)[:, 1], 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _draw(rng: np.random.Generator, n: int, w: np.ndarray, b: float
          ) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, D))
    logit = X @ w + 0.8 * np.tanh(X[:, 2] * X[:, 3]) + b
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


@pytest.fixture(scope="module")
def regions() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A large source and a target with another intercept and coefficients rotated by 20 deg."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.8, D)
    v = rng.normal(size=D)
    v -= (v @ w) / (w @ w) * w
    v *= np.linalg.norm(w) / np.linalg.norm(v)
    angle = np.deg2rad(20)
    w_target = np.cos(angle) * w + np.sin(angle) * v
    return {"source": _draw(rng, 5000, w, -1.0),
            "target_pool": _draw(rng, 2000, w_target, 0.5),
            "target_test": _draw(rng, 4000, w_target, 0.5)}


@pytest.fixture(scope="module")
def source(regions) -> MLPModel:
    X, y = regions["source"]
    return MLPModel(hidden_layer_sizes=(32, 16), max_epochs=40, device="cpu").fit(X, y)


def _shots(regions, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = regions["target_pool"]
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in (1, 0)])
    return X[rows], y[rows]


def _state(model: MLPModel) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.net_.state_dict().items()}


def _head_keys(model: MLPModel) -> set[str]:
    last = f"{len(model.net_) - 1}."
    return {k for k in model.net_.state_dict() if k.startswith(last)}


def test_stage1_changes_only_the_output_layer(source, regions) -> None:
    X, y = _shots(regions, 20, seed=1)
    stage1 = adapt_mlp(source, X, y)
    before, after = _state(source), _state(stage1)
    head = _head_keys(source)
    assert head == {"6.weight", "6.bias"}
    for key in before:
        if key in head:
            assert not np.array_equal(before[key], after[key]), key
        else:
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    np.testing.assert_array_equal(stage1.input_mean_, source.input_mean_)


def test_stage2_changes_hidden_layers_and_alpha_anchors(source, regions) -> None:
    X, y = _shots(regions, 20, seed=2)
    stage1 = adapt_mlp(source, X, y)
    src = _state(source)

    def distance(model: MLPModel) -> float:
        st = _state(model)
        return float(sum(((st[k] - src[k]) ** 2).sum() for k in src
                         if k not in _head_keys(model)))

    loose = finetune_mlp(stage1, X, y, source=source, alpha=1.0)
    tight = finetune_mlp(stage1, X, y, source=source, alpha=1e4)
    st = _state(loose)
    assert not np.array_equal(st["0.weight"], src["0.weight"])
    assert not np.array_equal(st["3.weight"], src["3.weight"])
    assert 0 < distance(tight) < 0.5 * distance(loose)


def test_inputs_are_never_modified(source, regions, tmp_path: Path) -> None:
    X, y = _shots(regions, 20, seed=3)
    X_test, _ = regions["target_test"]
    X_copy, y_copy = X.copy(), y.copy()
    proba_before = source.predict_proba(X_test)
    state_before = _state(source)
    stage1 = adapt(source, X, y, random_state=0)
    stage1_proba = stage1.predict_proba(X_test)
    stage2 = finetune(stage1, X, y, source=source, random_state=0)
    np.testing.assert_array_equal(source.predict_proba(X_test), proba_before)
    np.testing.assert_array_equal(stage1.predict_proba(X_test), stage1_proba)
    for key, value in _state(source).items():
        np.testing.assert_array_equal(value, state_before[key])
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    assert all(p.requires_grad for p in source.net_.parameters())
    assert not stage2.net_.training

    # both stages give ordinary fitted models: save/load keeps their predictions
    stage2.save(tmp_path / "stage2")
    loaded = MLPModel.load(tmp_path / "stage2")
    np.testing.assert_array_equal(loaded.predict_proba(X_test), stage2.predict_proba(X_test))


def test_stages_are_deterministic(source, regions) -> None:
    X, y = _shots(regions, 10, seed=4)
    X_test, _ = regions["target_test"]
    a = finetune_mlp(adapt_mlp(source, X, y), X, y, source=source)
    b = finetune_mlp(adapt_mlp(source, X, y), X, y, source=source)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_both_stages_beat_the_unadapted_source(source, regions, seed: int) -> None:
    X, y = _shots(regions, 20, seed=seed)
    X_test, y_test = regions["target_test"]
    stage1 = adapt_mlp(source, X, y)
    stage2 = finetune_mlp(stage1, X, y, source=source)
    base = _log_loss(source, X_test, y_test)
    assert _log_loss(stage1, X_test, y_test) < base - 0.05
    assert _log_loss(stage2, X_test, y_test) < base - 0.05


def test_shots_must_match_the_model(source, regions) -> None:
    X, y = _shots(regions, 10, seed=5)
    with pytest.raises(ValueError, match="features"):
        adapt_mlp(source, X[:, :5], y)
    with pytest.raises(ValueError, match="not trained on"):
        adapt_mlp(source, X, np.where(y == 1, 2, 0))
    other = MLPModel(hidden_layer_sizes=(8,), max_epochs=2, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="different networks"):
        finetune_mlp(other, X, y, source=source)
    with pytest.raises(TypeError, match="MLPModel"):
        adapt_mlp(object(), X, y)
