"""The rf, lr and xgb families: scikit-learn compatibility and artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.utils.estimator_checks import parametrize_with_checks

from lsm.errors import ArtifactError
from lsm.models.lr import LogisticModel
from lsm.models.rf import RandomForestModel
from lsm.models.xgb import XGBModel

SMALL = [
    RandomForestModel(n_estimators=10, n_jobs=1),
    LogisticModel(),
    XGBModel(n_estimators=20, learning_rate=0.3, n_jobs=1),
]
CLASSES = [RandomForestModel, LogisticModel, XGBModel]


def _expected_failures(estimator) -> dict[str, str]:
    """Weights equal repeated rows only without random row draws (see test_sample_weight)."""
    why = {RandomForestModel: "bootstrap draws rows, not weights",
           XGBModel: "subsample < 1 draws rows, not weights"}.get(type(estimator))
    return {"check_sample_weight_equivalence_on_dense_data": why} if why else {}


@parametrize_with_checks(SMALL, expected_failed_checks=_expected_failures)
def test_sklearn_compatible(estimator, check) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    X, y = make_classification(n_samples=400, n_features=8, n_informative=5, random_state=0)
    cols = ["slope", "elevation", "aspect_sin", "aspect_cos", "twi", "ndvi",
            "lithology=granite", "lithology=shale"]
    return pd.DataFrame(X, columns=cols).assign(y=y)


def _fit(cls: type, data: pd.DataFrame):
    X, y = data.drop(columns="y"), data["y"].to_numpy()
    kw = {"n_estimators": 30} if cls is not LogisticModel else {}
    return cls(**kw).fit(X, y), X


@pytest.mark.parametrize("cls", CLASSES)
def test_save_load_round_trip(cls: type, data: pd.DataFrame, tmp_path: Path) -> None:
    model, X = _fit(cls, data)
    files = model.save(tmp_path / "m")
    assert all(Path(f).exists() for f in files)
    assert (tmp_path / "m" / "manifest.json").exists()
    back = cls.load(tmp_path / "m")
    assert np.array_equal(back.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(back.predict(X), model.predict(X))
    assert list(back.feature_names_in_) == list(X.columns)
    assert back.n_features_in_ == X.shape[1]
    assert back.get_params() == model.get_params()
    with pytest.raises(ValueError, match="feature names"):
        back.predict_proba(X[X.columns[::-1]])


@pytest.mark.parametrize("cls", CLASSES)
def test_string_labels_round_trip(cls: type, tmp_path: Path) -> None:
    X, y = make_classification(n_samples=200, n_features=5, random_state=1)
    labels = np.array(["stable", "landslide"])[y]
    kw = {"n_estimators": 10} if cls is not LogisticModel else {}
    model = cls(**kw).fit(X, labels)
    model.save(tmp_path)
    back = cls.load(tmp_path)
    assert back.classes_.tolist() == ["landslide", "stable"]
    assert np.array_equal(back.predict(X), model.predict(X))


@pytest.mark.parametrize("cls", CLASSES)
def test_every_file_is_checked(cls: type, data: pd.DataFrame, tmp_path: Path) -> None:
    model, _ = _fit(cls, data)
    files = [Path(f) for f in model.save(tmp_path / "m") if Path(f).name != "manifest.json"]
    for f in files:
        original = f.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        f.write_bytes(bytes(flipped))
        with pytest.raises(ArtifactError, match=f.name):
            cls.load(tmp_path / "m")
        f.write_bytes(original[: len(original) // 2])
        with pytest.raises(ArtifactError, match=f.name):
            cls.load(tmp_path / "m")
        f.unlink()
        with pytest.raises(ArtifactError, match=f.name):
            cls.load(tmp_path / "m")
        f.write_bytes(original)
        cls.load(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest"):
        cls.load(tmp_path / "m")


@pytest.mark.parametrize("cls", CLASSES)
def test_other_family_is_refused(cls: type, data: pd.DataFrame, tmp_path: Path) -> None:
    for other in CLASSES:
        if other is cls:
            continue
        model, _ = _fit(other, data)
        model.save(tmp_path / other.family)
        with pytest.raises(ArtifactError, match=f"{other.family!r} model"):
            cls.load(tmp_path / other.family)


def test_rf_rebuilt_forest_is_a_working_sklearn_forest(data: pd.DataFrame,
                                                       tmp_path: Path) -> None:
    model, X = _fit(RandomForestModel, data)
    model.save(tmp_path)
    back = RandomForestModel.load(tmp_path)
    Xa = X.to_numpy(dtype=np.float32)
    # the inner forest (used by SHAP) predicts like ours, up to summation order
    np.testing.assert_allclose(back.forest_.predict_proba(Xa), model.predict_proba(X),
                               rtol=0, atol=1e-12)
    for a, b in zip(back.forest_.estimators_, model.forest_.estimators_, strict=True):
        assert np.array_equal(a.tree_.threshold, b.tree_.threshold)
        assert np.array_equal(a.tree_.value, b.tree_.value)
        assert np.array_equal(a.apply(Xa), b.apply(Xa))


def _first_inner_node(arrays: dict[str, np.ndarray]) -> int:
    return int(np.flatnonzero(arrays["left_child"] != -1)[1])  # an inner node below the root


def _cycle(a: dict[str, np.ndarray]) -> None:
    k = _first_inner_node(a)
    a["left_child"][k] = 0  # back to the root: a walk would never end


def _bad_feature(a: dict[str, np.ndarray]) -> None:
    a["feature"][_first_inner_node(a)] = -100_000_000  # would read outside the input


def _huge_feature(a: dict[str, np.ndarray]) -> None:
    a["feature"][0] = 6


def _one_child(a: dict[str, np.ndarray]) -> None:
    a["right_child"][_first_inner_node(a)] = -1


def _nan_threshold(a: dict[str, np.ndarray]) -> None:
    a["threshold"][0] = np.nan


def _float_children(a: dict[str, np.ndarray]) -> None:
    a["left_child"] = a["left_child"].astype("float64")


def _short_counts(a: dict[str, np.ndarray]) -> None:
    a["tree_max_features"] = a["tree_max_features"][:-1]


def _empty_tree(a: dict[str, np.ndarray]) -> None:
    a["node_count"][1] = 0


@pytest.mark.parametrize(("tamper", "message"), [
    (_cycle, "must lie after the node"), (_bad_feature, "feature -100000000 is not in 0..5"),
    (_huge_feature, "feature 6 is not in 0..5"), (_one_child, "one child is -1"),
    (_nan_threshold, "threshold is NaN"), (_float_children, "not integer"),
    (_short_counts, "one per tree"), (_empty_tree, "node_count"),
])
def test_rf_untrusted_tree_arrays_are_refused(tamper, message: str, tmp_path: Path) -> None:
    """Arrays rewritten along with the manifest: load must refuse what would hang or crash."""
    from lsm.io.artifacts import read_arrays, write_arrays, write_manifest
    from lsm.models.rf import TREES

    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    RandomForestModel(n_estimators=3, max_depth=4, n_jobs=1).fit(X, y).save(tmp_path)
    arrays = read_arrays(tmp_path / TREES)
    tamper(arrays)
    write_arrays(tmp_path / TREES, arrays)
    write_manifest(tmp_path)
    with pytest.raises(ArtifactError, match=rf"{TREES}: .*{message}") as err:
        RandomForestModel.load(tmp_path)
    assert "\n" not in str(err.value)


def test_rf_handles_missing_values(tmp_path: Path) -> None:
    X, y = make_classification(n_samples=300, n_features=6, random_state=2)
    X[::7, 2] = np.nan
    model = RandomForestModel(n_estimators=20).fit(X, y)
    model.save(tmp_path)
    assert np.array_equal(RandomForestModel.load(tmp_path).predict_proba(X),
                          model.predict_proba(X))


def test_rf_proba_does_not_depend_on_threads(data: pd.DataFrame) -> None:
    model, X = _fit(RandomForestModel, data)
    model.set_params(n_estimators=100).fit(X, data["y"])
    p1 = model.set_params(n_jobs=1).predict_proba(X)
    p2 = model.set_params(n_jobs=2).predict_proba(X)
    assert np.array_equal(p1, p2)


def test_lr_matches_sklearn(data: pd.DataFrame) -> None:
    from sklearn.linear_model import LogisticRegression

    model, X = _fit(LogisticModel, data)
    ref = LogisticRegression(C=1.0, max_iter=1000, tol=1e-6).fit(X, data["y"])
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-12)


def test_xgb_not_imported_by_the_models_package() -> None:
    import subprocess
    import sys

    code = ("import sys, lsm.models; "
            "assert 'xgboost' not in sys.modules, 'xgboost imported at module level'")
    subprocess.run([sys.executable, "-c", code], check=True)
