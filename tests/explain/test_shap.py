"""SHAP values of the four families: additivity, units, factor grouping, and the plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsm.errors import FactorMismatchError
from lsm.explain.plots import plot_beeswarm, plot_importance_bar, plot_importance_shift
from lsm.explain.shap_values import (
    ShapResult,
    explain_model,
    factor_groups,
    factor_importance,
    global_importance,
    grouped_values,
)
from lsm.models import LogisticModel, MLPModel, RandomForestModel, XGBModel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_BACKGROUND = 150  # below max_background: the whole background is used, so E f(bg) is known


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    """Slope, aspect and lithology drive landslides; ``noise`` does not."""
    rng = np.random.default_rng(0)
    n = 500
    aspect = rng.uniform(0, 2 * np.pi, n)
    lith = rng.integers(0, 3, n)
    X = pd.DataFrame({
        "slope": rng.normal(size=n),
        "noise": rng.normal(size=n),
        "aspect_sin": np.sin(aspect),
        "aspect_cos": np.cos(aspect),
        "lithology=granite": (lith == 0).astype(float),
        "lithology=shale": (lith == 1).astype(float),
        "lithology=sandstone": (lith == 2).astype(float),
    })
    z = 2.5 * X["slope"] + 1.2 * X["aspect_sin"] + 1.5 * X["lithology=shale"] - 0.6
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return X, y


@pytest.fixture(scope="module")
def models(data: tuple[pd.DataFrame, np.ndarray]) -> dict[str, object]:
    X, y = data
    return {
        "rf": RandomForestModel(n_estimators=30, n_jobs=1).fit(X, y),
        "xgb": XGBModel(n_estimators=30, n_jobs=1).fit(X, y),
        "lr": LogisticModel().fit(X, y),
        "mlp": MLPModel(hidden_layer_sizes=(16,), max_epochs=150, learning_rate=1e-2,
                        device="cpu").fit(X, y),
    }


@pytest.fixture(scope="module")
def results(data: tuple[pd.DataFrame, np.ndarray], models: dict[str, object]
            ) -> dict[str, ShapResult]:
    X, _ = data
    return {f: explain_model(m, X.iloc[:N_BACKGROUND], X, max_background=200, max_explain=200,
                             seed=1)
            for f, m in models.items()}


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- values
def test_result_shape_and_metadata(results: dict[str, ShapResult],
                                   data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    expected = {"rf": ("TreeExplainer", "probability"), "xgb": ("TreeExplainer", "log-odds"),
                "lr": ("LinearExplainer", "log-odds"), "mlp": ("DeepExplainer", "log-odds")}
    for fam, res in results.items():
        assert res.values.shape == (200, X.shape[1])
        assert res.data.shape == res.values.shape
        assert np.isfinite(res.values).all()
        assert res.feature_names == list(X.columns)
        assert (res.family, (res.explainer, res.units)) == (fam, expected[fam])
        np.testing.assert_array_equal(res.data, X.loc[res.index].to_numpy())
        assert res.index.is_monotonic_increasing and res.index.is_unique


def test_rf_additivity_in_probability(results: dict[str, ShapResult], models: dict,
                                      data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    res, model = results["rf"], models["rf"]
    p = model.predict_proba(X.loc[res.index])[:, 1]
    np.testing.assert_allclose(res.base_value + res.values.sum(1), p, atol=1e-4)
    # interventional: the base value is the mean prediction over the background
    assert res.base_value == pytest.approx(
        model.predict_proba(X.iloc[:N_BACKGROUND])[:, 1].mean(), abs=1e-6)


def test_xgb_additivity_in_margin(results: dict[str, ShapResult], models: dict,
                                  data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    res, model = results["xgb"], models["xgb"]

    def margin(frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.booster_.inplace_predict(frame.to_numpy(np.float32),
                                                         predict_type="margin"), "float64")

    np.testing.assert_allclose(res.base_value + res.values.sum(1), margin(X.loc[res.index]),
                               atol=1e-4)
    assert res.base_value == pytest.approx(margin(X.iloc[:N_BACKGROUND]).mean(), abs=1e-4)
    # the margin is the log-odds of the delivered probability
    p = model.predict_proba(X.loc[res.index])[:, 1]
    np.testing.assert_allclose(res.output, _logit(p), atol=1e-3)


def test_lr_values_are_coef_times_centred_x(results: dict[str, ShapResult], models: dict,
                                            data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    res, model = results["lr"], models["lr"]
    mean_bg = X.iloc[:N_BACKGROUND].to_numpy().mean(axis=0)
    expected = model.coef_[0] * (X.loc[res.index].to_numpy() - mean_bg)
    np.testing.assert_allclose(res.values, expected, atol=1e-10)
    assert res.base_value == pytest.approx(model.intercept_[0] + model.coef_[0] @ mean_bg)
    np.testing.assert_allclose(res.output, model.decision_function(X.loc[res.index]),
                               atol=1e-10)


def test_mlp_additivity_in_logit(results: dict[str, ShapResult], models: dict,
                                 data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    res, model = results["mlp"], models["mlp"]
    f = _logit(model.predict_proba(X.loc[res.index])[:, 1])
    f_bg = _logit(model.predict_proba(X.iloc[:N_BACKGROUND])[:, 1])
    # DeepLIFT sums to f(x) - E f(background)
    np.testing.assert_allclose(res.values.sum(1), f - f_bg.mean(), atol=1e-3)
    assert res.additivity_error < 1e-3


def test_mlp_gradient_fallback(monkeypatch: pytest.MonkeyPatch, models: dict,
                               data: tuple[pd.DataFrame, np.ndarray]) -> None:
    import shap

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("hooks not supported")

    monkeypatch.setattr(shap, "DeepExplainer", broken)
    X, _ = data
    with pytest.warns(RuntimeWarning, match="GradientExplainer"):
        res = explain_model(models["mlp"], X.iloc[:60], X.iloc[:40], seed=0)
    assert res.explainer == "GradientExplainer"
    assert res.values.shape == (40, X.shape[1]) and np.isfinite(res.values).all()
    f = _logit(models["mlp"].predict_proba(X.iloc[:40])[:, 1])
    f_bg = _logit(models["mlp"].predict_proba(X.iloc[:60])[:, 1]).mean()
    # expected gradients are additive only in expectation: a loose check
    spread = np.abs(f - f_bg).mean()
    assert np.abs(res.values.sum(1) - (f - f_bg)).mean() < 0.25 * spread + 0.05


def test_informative_feature_beats_noise(results: dict[str, ShapResult]) -> None:
    for fam, res in results.items():
        imp = global_importance(res)
        assert imp.index[0] == "slope", fam
        assert imp["slope"] > 3 * imp["noise"], fam
        assert imp.attrs["units"] == res.units
        assert list(imp) == sorted(imp, reverse=True)


def test_permutation_fallback_for_unknown_models(data: tuple[pd.DataFrame, np.ndarray]) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = data
    model = LogisticRegression().fit(X, y)
    with pytest.warns(RuntimeWarning, match="permutation"):
        res = explain_model(model, X.iloc[:40], X, seed=0)
    assert res.explainer == "Permutation" and res.units == "log-odds"
    assert res.values.shape == (100, X.shape[1])
    np.testing.assert_allclose(res.output, model.decision_function(X.loc[res.index]),
                               atol=1e-6)


def test_columns_are_aligned_to_the_model(models: dict,
                                          data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    shuffled = X[X.columns[::-1]]
    a = explain_model(models["lr"], X.iloc[:50], X.iloc[:20])
    b = explain_model(models["lr"], shuffled.iloc[:50], shuffled.iloc[:20])
    assert b.feature_names == list(X.columns)
    np.testing.assert_allclose(a.values, b.values)
    with pytest.raises(FactorMismatchError, match="slope"):
        explain_model(models["lr"], X.drop(columns="slope"), X)


def test_no_warnings_on_the_normal_path(models: dict,
                                        data: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in models.values():
            explain_model(model, X.iloc[:30], X.iloc[:10])


# ---------------------------------------------------------------------- factors
def test_factor_groups() -> None:
    cols = ["slope", "aspect_sin", "aspect_cos", "lithology=granite", "lithology=a=b",
            "curv_sin", "landuse=forest"]
    assert factor_groups(cols) == {
        "slope": "slope", "aspect_sin": "aspect", "aspect_cos": "aspect",
        "lithology=granite": "lithology", "lithology=a=b": "lithology",
        "curv_sin": "curv_sin",  # no curv_cos partner: not a circular pair
        "landuse=forest": "landuse",
    }


def test_factor_importance_groups_derived_columns(results: dict[str, ShapResult]) -> None:
    res = results["xgb"]
    imp = factor_importance(res)
    assert set(imp.index) == {"slope", "noise", "aspect", "lithology"}
    v = res.to_frame()
    aspect = (v["aspect_sin"] + v["aspect_cos"]).abs().mean()
    lith = v[[c for c in v if c.startswith("lithology=")]].sum(axis=1).abs().mean()
    assert imp["aspect"] == pytest.approx(aspect)
    assert imp["lithology"] == pytest.approx(lith)
    assert imp["slope"] == pytest.approx(v["slope"].abs().mean())
    assert imp["lithology"] > imp["noise"] and imp["aspect"] > imp["noise"]
    summed = factor_importance(res, how="sum_abs")
    assert summed["lithology"] == pytest.approx(
        v[[c for c in v if c.startswith("lithology=")]].abs().sum(axis=1).mean())
    assert (summed >= imp.reindex(summed.index) - 1e-12).all()
    # grouped values keep additivity: base + row sums still give the output
    g = grouped_values(res)
    np.testing.assert_allclose(res.base_value + g.sum(axis=1).to_numpy(), res.output)
    custom = factor_importance(res, {"aspect_sin": "terrain", "aspect_cos": "terrain",
                                     "slope": "terrain"})
    assert "terrain" in custom.index and "lithology=shale" in custom.index
    with pytest.raises(ValueError, match="how"):
        factor_importance(res, how="max")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- plots
def test_plots_write_pngs(tmp_path: Path, results: dict[str, ShapResult]) -> None:
    res = results["rf"]
    _assert_png(plot_importance_bar(res, tmp_path / "bar.png", "rf"))
    _assert_png(plot_importance_bar(global_importance(results["xgb"]), tmp_path / "bar2.png",
                                    "xgb columns", top=4))
    _assert_png(plot_beeswarm(results["mlp"], tmp_path / "bees.png", "mlp"))
    _assert_png(plot_importance_shift(factor_importance(results["lr"]),
                                      factor_importance(results["xgb"]).drop("noise"),
                                      tmp_path / "shift.png", "lr -> xgb"))
