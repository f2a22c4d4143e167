"""The shared save/load of :class:`lsm.models.base.LsmClassifier` around the payload hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lsm.errors import ArtifactError
from lsm.io.artifacts import read_json, write_json, write_manifest
from lsm.models.base import META, LsmClassifier, load_model
from lsm.models.delivered import DeliveredModel
from lsm.models.lr import COEF, LogisticModel
from lsm.models.mlp import WEIGHTS_FILE, MLPModel

COLS = ["slope", "twi", "ndvi"]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(120, 3)), columns=COLS)
    return X, (X["slope"] - X["twi"] + rng.normal(size=120) > 0).astype(int).to_numpy()


@pytest.fixture(scope="module")
def lr(data: Any) -> LogisticModel:
    return LogisticModel().fit(*data)


class _Prior(LsmClassifier):
    """The smallest family: predicts the class shares it saw (one JSON payload file)."""

    family = "prior_test"
    artifacts = ("prior.json",)

    def __init__(self, *, random_state: int | None = 0) -> None:
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _Prior:
        from sklearn.utils.validation import validate_data

        X, y = validate_data(self, X, y)
        self.classes_, counts = np.unique(y, return_counts=True)
        self.prior_ = counts / counts.sum()
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.tile(self.prior_, (len(X), 1))

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        meta["n_classes"] = len(self.prior_)
        return [write_json(directory / "prior.json", {"prior": self.prior_.tolist()})]

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        self.prior_ = np.asarray(read_json(directory / "prior.json")["prior"], dtype=float)
        if self.prior_.shape != (meta["n_classes"],):
            raise ValueError("prior does not match n_classes")


def test_save_writes_payload_meta_and_a_manifest_of_them(data: Any, tmp_path: Path) -> None:
    model = _Prior().fit(*data)
    files = model.save(tmp_path / "m")
    assert [f.name for f in files] == ["prior.json", META, "manifest.json"]
    assert set(read_json(tmp_path / "m" / "manifest.json")["files"]) == {"prior.json", META}
    meta = read_json(tmp_path / "m" / META)
    assert meta["family"] == "prior_test" and meta["format"] == 1 and meta["n_classes"] == 2
    assert meta["feature_names_in"] == COLS and meta["params"] == {"random_state": 0}
    back = _Prior.load(tmp_path / "m")
    np.testing.assert_array_equal(back.prior_, model.prior_)
    assert list(back.feature_names_in_) == COLS and back.classes_.tolist() == [0, 1]


def test_payload_hook_errors_become_one_line_artifact_errors(data: Any, tmp_path: Path) -> None:
    _Prior().fit(*data).save(tmp_path)
    write_json(tmp_path / "prior.json", {"prior": [0.5, 0.3, 0.2]})
    write_manifest(tmp_path, [tmp_path / "prior.json", tmp_path / META])
    with pytest.raises(ArtifactError, match="malformed 'prior_test' model .*ValueError") as err:
        _Prior.load(tmp_path)
    assert "\n" not in str(err.value)
    write_json(tmp_path / "prior.json", {"weights": []})
    write_manifest(tmp_path, [tmp_path / "prior.json", tmp_path / META])
    with pytest.raises(ArtifactError, match="KeyError"):
        _Prior.load(tmp_path)


def test_a_family_without_payload_hooks_says_so(data: Any, tmp_path: Path) -> None:
    class Bare(_Prior):
        _save_payload = LsmClassifier._save_payload

    with pytest.raises(NotImplementedError, match="Bare defines no _save_payload"):
        Bare().fit(*data).save(tmp_path)


def test_newer_format_is_refused(lr: LogisticModel, tmp_path: Path) -> None:
    lr.save(tmp_path)
    meta = read_json(tmp_path / META)
    for bad in (2, "1", None):
        write_json(tmp_path / META, {**meta, "format": bad})
        write_manifest(tmp_path, [tmp_path / COEF, tmp_path / META])
        with pytest.raises(ArtifactError, match=r"meta\.json: model format .*newer lsm"):
            LogisticModel.load(tmp_path)


def test_payload_missing_from_the_manifest_is_refused(lr: LogisticModel, tmp_path: Path) -> None:
    """A manifest that omits the payload would leave that file unchecked: refuse it."""
    lr.save(tmp_path)
    write_manifest(tmp_path, [tmp_path / META])
    with pytest.raises(ArtifactError, match=r"coef\.json: not listed in .*manifest\.json"):
        LogisticModel.load(tmp_path)
    write_manifest(tmp_path, [tmp_path / COEF])
    with pytest.raises(ArtifactError, match=r"meta\.json: not listed"):
        LogisticModel.load(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match=r"manifest\.json: malformed"):
        LogisticModel.load(tmp_path)


def test_mlp_folder_of_the_earlier_layout_loads(data: Any, tmp_path: Path) -> None:
    """Before the shared save, mlp's meta.json named its inputs n_features/feature_names
    and had no format or versions: such folders (earlier runs) still load."""
    X, y = data
    model = MLPModel(hidden_layer_sizes=(4,), max_epochs=3, device="cpu").fit(X, y)
    model.save(tmp_path)
    meta = read_json(tmp_path / META)
    old = {k: v for k, v in meta.items()
           if k not in ("format", "lsm_version", "sklearn_version", "n_features_in",
                        "feature_names_in")}
    old.update(n_features=meta["n_features_in"], feature_names=meta["feature_names_in"])
    write_json(tmp_path / META, old)
    write_manifest(tmp_path, [tmp_path / WEIGHTS_FILE, tmp_path / META])
    back = load_model(tmp_path)
    assert isinstance(back, MLPModel) and back.get_params() == model.get_params()
    assert list(back.feature_names_in_) == COLS
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))


def test_delivered_folder_of_the_earlier_layout_loads(lr: LogisticModel, data: Any,
                                                      tmp_path: Path) -> None:
    """Earlier delivered folders kept only family, format and strategy in meta.json."""
    X, _ = data
    model = DeliveredModel.assemble(strategy="recal(lr)", members={"source": lr},
                                    weights={"source": 0.8}, intercept=-0.1, n_features=3,
                                    feature_names=COLS)
    model.save(tmp_path)
    assert read_json(tmp_path / META)["params"] == {"strategy": "recal(lr)"}
    write_json(tmp_path / META, {"family": "delivered", "format": 1, "strategy": "recal(lr)"})
    write_manifest(tmp_path)
    back = load_model(tmp_path)
    assert isinstance(back, DeliveredModel) and back.strategy == "recal(lr)"
    assert list(back.feature_names_in_) == COLS and back.classes_.tolist() == [0, 1]
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
