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
