"""xgb stage 1 must adapt a source trained at another prevalence."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsm.models.xgb import XGBModel
from lsm.transfer import adapt, finetune


def test_stage1_moves_an_imbalanced_source_to_the_shots_base_rate() -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(8000, 4)), columns=list("abcd"))
    y = (rng.random(8000) < 1 / (1 + np.exp(-(-3.5 + 1.5 * X.a - X.b)))).astype(int)
    source = XGBModel(n_estimators=100).fit(X, y)  # about 8 % landslides
    idx = np.r_[np.flatnonzero(y == 1)[:10], np.flatnonzero(y == 0)[:10]]  # balanced shots
    Xs, ys = X.iloc[idx], y[idx]
    assert source.predict_proba(Xs)[:, 1].mean() < 0.3
    s1 = adapt(source, Xs, ys)
    assert abs(s1.predict_proba(Xs)[:, 1].mean() - 0.5) < 0.05
    s2 = finetune(s1, Xs, ys, source=source)
    assert not np.allclose(s2.predict_proba(X)[:, 1], s1.predict_proba(X)[:, 1])
