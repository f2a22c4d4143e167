"""MLPModel: scikit-learn compatibility, determinism, artifacts, lazy torch import, devices."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from lsm.errors import ArtifactError
from lsm.io.artifacts import read_json, write_json, write_manifest
from lsm.models.mlp import META_FILE, WEIGHTS_FILE, MLPModel

FAST = {"hidden_layer_sizes": (16,), "max_epochs": 30, "learning_rate": 1e-2,
        "batch_size": 64, "device": "cpu"}


@parametrize_with_checks([MLPModel(**FAST)], expected_failed_checks=lambda est: {
    "check_sample_weight_equivalence_on_dense_data":
        "mini-batches and early stopping draw rows, not weights (see test_sample_weight)"})
def test_sklearn_compatible(estimator, check) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 5))
    logit = 1.5 * X[:, 0] - X[:, 1] + np.sin(2 * X[:, 2])
    y = (rng.random(600) < 1 / (1 + np.exp(-logit))).astype(int)
    cols = ["slope", "aspect_sin", "aspect_cos", "twi", "lith_granite"]
    return pd.DataFrame(X, columns=cols), y


@pytest.fixture(scope="module")
def fitted(data: tuple[pd.DataFrame, np.ndarray]) -> MLPModel:
    X, y = data
    return MLPModel(hidden_layer_sizes=(16, 8), max_epochs=40, device="cpu").fit(X, y)


def test_fit_learns_and_records_attributes(fitted: MLPModel, data) -> None:
    X, y = data
    proba = fitted.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.mean(fitted.predict(X) == y) > 0.7
    assert list(fitted.feature_names_in_) == list(X.columns)
    assert fitted.classes_.tolist() == [0, 1]
    assert 1 <= fitted.best_epoch_ <= fitted.n_iter_ <= 40
    assert len(fitted.validation_loss_curve_) == fitted.n_iter_  # 600 rows: early stopping on
    assert not fitted.net_.training


def test_early_stopping_stops_and_keeps_best(data) -> None:
    X, y = data
    m = MLPModel(hidden_layer_sizes=(16,), max_epochs=500, patience=3, learning_rate=3e-2,
                 device="cpu").fit(X, y)
    assert m.n_iter_ < 500
    assert m.n_iter_ - m.best_epoch_ == 3
    assert m.validation_loss_curve_[m.best_epoch_ - 1] == min(m.validation_loss_curve_)


def test_string_labels_map_to_classes(data) -> None:
    X, y = data
    labels = np.where(y == 1, "slide", "stable")
    m = MLPModel(**FAST).fit(X, labels)
    assert m.classes_.tolist() == ["slide", "stable"]
    assert np.mean(m.predict(X) == labels) > 0.7


def test_multiclass_and_single_class_are_refused(data) -> None:
    X, y = data
    with pytest.raises(ValueError, match="Only binary classification"):
        MLPModel(**FAST).fit(X, np.arange(len(y)) % 3)
    with pytest.raises(ValueError, match="1 class"):
        MLPModel(**FAST).fit(X, np.zeros(len(y)))


def test_bad_params_raise_on_fit(data) -> None:
    X, y = data
    for bad in ({"dropout": 1.0}, {"hidden_layer_sizes": (0,)}, {"batch_size": 0},
                {"device": "tpu"}):
        with pytest.raises(ValueError):
            MLPModel(**{**FAST, **bad}).fit(X, y)


def test_deterministic_on_cpu(data) -> None:
    X, y = data
    p1 = MLPModel(**FAST, random_state=7).fit(X, y).predict_proba(X)
    p2 = MLPModel(**FAST, random_state=7).fit(X, y).predict_proba(X)
    p3 = MLPModel(**FAST, random_state=8).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)


def test_fit_leaves_global_torch_state_alone(data) -> None:
    import torch

    X, y = data
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MLPModel(**FAST).fit(X, y)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())
    assert torch.get_num_threads() == threads


def test_save_load_round_trip(fitted: MLPModel, data, tmp_path: Path) -> None:
    X, _ = data
    written = fitted.save(tmp_path / "m")
    assert {p.name for p in written} == {WEIGHTS_FILE, META_FILE, "manifest.json"}
    meta = read_json(tmp_path / "m" / META_FILE)
    assert meta["family"] == "mlp" and meta["hidden_layer_sizes"] == [16, 8]
    loaded = MLPModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    assert loaded.get_params() == fitted.get_params()
    assert list(loaded.feature_names_in_) == list(fitted.feature_names_in_)
    np.testing.assert_array_equal(loaded.input_scale_, fitted.input_scale_)


def test_pickle_round_trip(fitted: MLPModel, data) -> None:
    X, _ = data
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_weights_are_refused(fitted: MLPModel, tmp_path: Path, damage: str) -> None:
    fitted.save(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "truncate":
        weights.write_bytes(bytes(raw[: len(raw) // 3]))
    else:
        weights.unlink()
    with pytest.raises(ArtifactError, match=WEIGHTS_FILE):
        MLPModel.load(tmp_path)


def test_garbage_weights_with_rewritten_manifest_are_refused(fitted: MLPModel,
                                                             tmp_path: Path) -> None:
    # Even if someone re-signs the folder, torch.load(weights_only=True) must fail cleanly.
    fitted.save(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a torch file at all")
    write_manifest(tmp_path, [tmp_path / WEIGHTS_FILE, tmp_path / META_FILE])
    with pytest.raises(ArtifactError, match="unreadable"):
        MLPModel.load(tmp_path)


def test_wrong_family_and_missing_manifest_are_refused(fitted: MLPModel, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    meta = read_json(tmp_path / META_FILE)
    write_json(tmp_path / META_FILE, {**meta, "family": "xgb"})
    write_manifest(tmp_path, [tmp_path / WEIGHTS_FILE, tmp_path / META_FILE])
    with pytest.raises(ArtifactError, match="'xgb' model"):
        MLPModel.load(tmp_path)
    with pytest.raises(ArtifactError, match="manifest"):
        MLPModel.load(tmp_path / "nowhere")


def test_import_does_not_import_torch() -> None:
    code = "import sys, lsm.models.mlp; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_cuda_without_cuda_is_a_clear_error(data) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    X, y = data
    with pytest.raises(ValueError, match="CUDA is not available"):
        MLPModel(**{**FAST, "device": "cuda"}).fit(X, y)


def test_auto_device_falls_back_to_cpu(data) -> None:
    import torch

    X, y = data
    m = MLPModel(**{**FAST, "device": "auto"}).fit(X, y)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert m._device_of_net().type == expected
    assert isinstance(m.predict_proba(X), np.ndarray)
