"""Stage-2 anchoring chosen by cross-validation on the shots."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lsm.models.lr import LogisticModel
from lsm.transfer import adapt, anchor_grid, finetune_auto


def _data(rng: np.random.Generator, coef: np.ndarray, n: int) -> tuple[pd.DataFrame, np.ndarray]:
    X = rng.normal(size=(n, coef.size))
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ coef)))).astype(int)
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(coef.size)]), y


def test_weak_anchor_when_the_target_contradicts_the_source() -> None:
    rng = np.random.default_rng(0)
    src_coef = np.array([2.0, -2.0, 1.0, 0.0])
    source = LogisticModel().fit(*_data(rng, src_coef, 5000))
    Xs, ys = _data(rng, -src_coef, 200)  # the target says the opposite
    s1 = adapt(source, Xs, ys)
    model, chosen = finetune_auto(s1, Xs, ys, source=source)
    assert chosen == anchor_grid(source)[-1] or chosen["lam"] <= 1.0
    assert np.sign(model.coef_.ravel()[0]) == -1  # it followed the target, not the source


def test_strong_anchor_when_the_source_is_right() -> None:
    rng = np.random.default_rng(1)
    coef = np.array([1.5, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    source = LogisticModel().fit(*_data(rng, coef, 5000))
    Xs, ys = _data(rng, coef, 20)  # few, noisy shots from the same relationship
    model, chosen = finetune_auto(adapt(source, Xs, ys), Xs, ys, source=source)
    assert chosen["lam"] >= 10.0
    Xt, yt = _data(rng, coef, 4000)
    p = np.clip(model.predict_proba(Xt)[:, 1], 1e-6, 1 - 1e-6)
    scratch = LogisticModel().fit(Xs, ys).predict_proba(Xt)[:, 1]
    ll = -np.mean(yt * np.log(p) + (1 - yt) * np.log(1 - p))
    ll_scratch = -np.mean(yt * np.log(scratch) + (1 - yt) * np.log(1 - scratch))
    assert ll < ll_scratch


def test_every_family_has_a_grid() -> None:
    from lsm.models.base import FAMILY_NAMES, get_family

    for fam in FAMILY_NAMES:
        grid = anchor_grid(get_family(fam)())
        assert len(grid) >= 2 and all(isinstance(g, dict) for g in grid)


def test_a_family_without_a_grid_is_a_clear_error() -> None:
    import pytest

    class NoGrid(LogisticModel):
        anchor_grid = ()

    with pytest.raises(ValueError, match="declares no anchor_grid"):
        anchor_grid(NoGrid())
