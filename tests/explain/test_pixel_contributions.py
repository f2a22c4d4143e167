"""Per-pixel SHAP contributions used by ``lsm explain --shap-maps``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lsm.explain.shap_values import pixel_contributions


@pytest.fixture
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"slope": rng.normal(size=400), "aspect_sin": rng.normal(size=400),
                      "aspect_cos": rng.normal(size=400), "ndvi": rng.normal(size=400)})
    y = (X["slope"] - 0.5 * X["ndvi"] + rng.normal(size=400) > 0).astype(int).to_numpy()
    return X, y


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


@pytest.mark.parametrize("family", ["lr", "xgb"])
def test_contributions_add_up_to_the_margin(family: str, data) -> None:
    from lsm.models import get_family

    X, y = data
    kw = {"n_estimators": 30} if family == "xgb" else {}
    model = get_family(family)(**kw).fit(X, y)
    c = pixel_contributions(model, X.iloc[:50], X)
    assert list(c.columns) == ["slope", "aspect", "ndvi"]  # sin/cos merged into aspect
    margin = _logit(model.predict_proba(X.iloc[:50])[:, 1])
    base = margin - c.sum(axis=1).to_numpy()
    # what is left is one constant: the expected output (lr) or the bias (xgb)
    assert np.ptp(base) < 1e-4
    assert c["slope"].abs().mean() > c["aspect"].abs().mean()  # informative beats noise


def test_finetuned_xgb_contributions_are_real(data) -> None:
    """A leaf refresh on a few shots leaves nodes with zero cover; TreeSHAP must survive it."""
    from lsm.explain.shap_values import explain_model, grouped_values
    from lsm.models import get_family
    from lsm.transfer import adapt, finetune

    X, y = data
    source = get_family("xgb")(n_estimators=60, max_depth=5).fit(X, y)
    rng = np.random.default_rng(1)
    shots = np.concatenate([rng.choice(np.flatnonzero(y == c), 8, replace=False)
                            for c in (0, 1)])
    stage1 = adapt(source, X.iloc[shots], y[shots])
    tuned = finetune(stage1, X.iloc[shots], y[shots], source=source)
    for model in (stage1, tuned):
        c = pixel_contributions(model, X.iloc[:100], X)
        assert np.isfinite(c.to_numpy()).all() and c["slope"].abs().max() > 1e-2
        margin = _logit(model.predict_proba(X.iloc[:100])[:, 1])
        np.testing.assert_allclose(c.sum(axis=1) + c.attrs["base_value"], margin, atol=1e-4)
        # the same attributions, near enough, as interventional SHAP on a background
        ref = grouped_values(explain_model(model, X, X.iloc[:100], max_explain=100))
        assert np.corrcoef(ref["slope"], c["slope"])[0, 1] > 0.9


def test_lr_contributions_carry_their_base_value(data) -> None:
    from lsm.models import get_family

    X, y = data
    model = get_family("lr")().fit(X, y)
    c = pixel_contributions(model, X.iloc[:50], X)
    margin = _logit(model.predict_proba(X.iloc[:50])[:, 1])
    np.testing.assert_allclose(c.sum(axis=1) + c.attrs["base_value"], margin, atol=1e-8)
    assert c.attrs["units"] == "log-odds"


def test_non_finite_contributions_are_an_error_not_zeros(data, monkeypatch) -> None:
    import lsm.explain.shap_values as sv
    from lsm.errors import ArtifactError
    from lsm.models import get_family

    X, y = data
    model = get_family("xgb")(n_estimators=5).fit(X, y)
    monkeypatch.setattr(sv, "_xgb_contributions",
                        lambda m, X: (np.full(X.shape, np.nan), 0.0))
    with pytest.raises(ArtifactError, match="not finite on 10 of 10 rows"):
        pixel_contributions(model, X.iloc[:10], X)
