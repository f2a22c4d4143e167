"""A fifth model family declared in this file alone runs fit, finetune, predict and explain.

The family wraps scikit-learn's Gaussian naive Bayes (a generative model, unlike
the four built-in families).  Its artifact format is one ``.npz`` of its fitted
arrays (the payload hooks); the base class writes and checks ``meta.json`` and
the manifest.  It takes the generic transfer stages and the permutation SHAP
explainer of the base class.  Nothing outside this file knows about it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.naive_bayes import GaussianNB
from sklearn.utils.validation import check_is_fitted, validate_data

from lsm.io.artifacts import read_arrays, write_arrays
from lsm.models.base import FAMILIES, LsmClassifier, check_weights, register

STATE = "state.npz"


class NaiveBayesModel(LsmClassifier):
    """Gaussian naive Bayes on the design matrix (test-only family ``nbx``)."""

    family = "nbx"
    label = "naive Bayes (test)"
    short_label = "NB"
    order = 50

    def __init__(self, *, var_smoothing: float = 1e-9, random_state: int | None = 0) -> None:
        self.var_smoothing = var_smoothing
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> NaiveBayesModel:
        X, y = validate_data(self, X, y, dtype=np.float64)
        est = GaussianNB(var_smoothing=self.var_smoothing)
        est.fit(X, y, sample_weight=check_weights(sample_weight, X))
        self.classes_ = est.classes_
        self.theta_, self.var_, self.class_prior_ = est.theta_, est.var_, est.class_prior_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        jll = np.log(self.class_prior_) - 0.5 * (
            np.log(2 * np.pi * self.var_).sum(axis=1)
            + (((X[:, None, :] - self.theta_) ** 2) / self.var_).sum(axis=2))
        jll -= jll.max(axis=1, keepdims=True)
        p = np.exp(jll)
        return p / p.sum(axis=1, keepdims=True)

    # the artifact format: state.npz beside the base class's meta.json and manifest
    artifacts = (STATE,)

    def _save_payload(self, directory: Path, meta: dict[str, Any]) -> list[Path]:
        return [write_arrays(directory / STATE, {"theta": self.theta_, "var": self.var_,
                                                 "prior": self.class_prior_})]

    def _load_payload(self, directory: Path, meta: dict[str, Any]) -> None:
        a = read_arrays(directory / STATE)
        self.theta_, self.var_, self.class_prior_ = a["theta"], a["var"], a["prior"]


@pytest.fixture(scope="module")
def family() -> Any:
    register(NaiveBayesModel)
    yield NaiveBayesModel
    FAMILIES.pop("nbx", None)


@pytest.fixture(scope="module")
def runs(family: Any, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lsm.cli import main

    base = tmp_path_factory.mktemp("extra")
    src, ft = base / "src", base / "ft"
    assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr,nbx",
                 "--out", str(src), "-q"]) == 0
    assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                 str(src), "--shots", "10", "--repeats", "2", "--out", str(ft), "-q"]) == 0
    return {"src": src, "ft": ft}


def test_the_family_is_everywhere_a_family_name_is_asked(family: Any) -> None:
    from lsm.config.run import FitConfig
    from lsm.models.base import FAMILY_NAMES, get_family, parse_families

    assert "nbx" in FAMILY_NAMES and get_family("nbx") is family
    assert parse_families("all")[-1] == "nbx"
    assert FitConfig(source="demo-source", models=["nbx"]).models == ["nbx"]


def test_fit_finetune_predict_explain(runs: dict) -> None:
    from lsm.workflows.runs import load_run

    src = load_run(runs["src"])
    assert isinstance(src.models["nbx"], NaiveBayesModel)
    cv = json.loads((runs["src"] / "metrics.json").read_text())["cv"]["nbx"]["summary"]
    assert 0.6 < cv["auc"]["mean"] <= 1.0  # naive Bayes learns the demo susceptibility
    m = json.loads((runs["ft"] / "metrics.json").read_text())
    arms = m["models"]["nbx"]
    assert set(arms) == {"source_only", "target_only", "stage1", "stage2"}
    assert all(np.isfinite(arms[a]["auc"]["mean"]) for a in arms)
    assert m["anchor_chosen"]["nbx"]  # the generic grid was searched
    ft = load_run(runs["ft"])  # the saved stage-2 model loads from its own meta.json
    stage2 = ft.models["nbx"]
    cols = [str(c) for c in stage2.feature_names_in_]
    import pandas as pd

    assert stage2.predict_proba(pd.DataFrame(np.zeros((3, len(cols))), columns=cols)
                                ).shape == (3, 2)
    assert list(runs["ft"].rglob("*.tif")), "finetune wrote no map"


def test_explain_on_the_extra_family(runs: dict, family: Any) -> None:
    import pandas as pd

    from lsm.explain.shap_values import explain_model
    from lsm.workflows.runs import load_run

    run = load_run(runs["src"])
    model = run.models["nbx"]
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(60, model.n_features_in_)),
                     columns=[str(c) for c in model.feature_names_in_])
    res = explain_model(model, X, X.iloc[:10], seed=0)
    assert res.family == "nbx" and res.explainer == "Permutation"
    p = model.predict_proba(X.iloc[:10])[:, 1]
    np.testing.assert_allclose(res.output, np.log(p) - np.log1p(-p), atol=1e-6)


def test_artifacts_round_trip(family: Any, tmp_path: Path) -> None:
    from lsm.models.base import load_model

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(80, 3)), rng.integers(0, 2, 80)
    model = family().fit(X, y)
    model.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, family)
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
