"""Production mode (``--shots all``): the plain fit on the target alone is a candidate of
the delivered model, chosen by inner cross-validation only, and delivered when better."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from lsm.cli import main
from lsm.models import DeliveredModel, LogisticModel, get_family
from lsm.transfer import select as S


def _labels(logit: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(logit.size) < expit(logit)).astype(int)


def _light(fam: str, seed: int):
    model = get_family(fam)(random_state=seed)
    if "n_jobs" in model.get_params():
        model.set_params(n_jobs=1)
    return model


@pytest.fixture(scope="module")
def source() -> LogisticModel:
    """A source model of ``2a - b`` on the two factors source and target share."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(3000, 2)), columns=["a", "b"])
    return LogisticModel().fit(X, _labels(2 * X["a"] - X["b"], 1))


def test_plain_fit_is_delivered_when_it_is_clearly_better(source: LogisticModel,
                                                          tmp_path: Path) -> None:
    """Many points, a strong interaction with a factor the source lacks: the transfer
    (source + linear target models on the shared factors) underfits; the fit does not."""
    rng = np.random.default_rng(5)
    n = 600
    F = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "e"])
    y = _labels(4.0 * np.sign(F["a"] * F["e"]) + 0.5 * F["a"], 6)
    X = F[["a", "b"]]
    model, sel = S.fit_delivered({"lr": source}, X, y, make_target=_light,
                                 target_families=["lr"], stages=False, fit_matrix=F,
                                 fit_families=["xgb", "lr"], make_fit=_light)
    assert sel.chosen.name == "fit(xgb)"
    assert sel.versus["transfer"] and sel.versus["fit"] == "fit(xgb)"
    assert sel.versus["fit_cv_log_loss"] < sel.versus["transfer_cv_log_loss"] - 0.1
    assert "plain fit" in sel.rule and sel.to_dict()["transfer_vs_fit"] == sel.versus
    # the delivered model takes the fit's own columns and is the fitted family, one member
    assert list(model.feature_names_in_) == ["a", "b", "e"]
    assert list(model.members_) == ["fit_xgb"] and model.weights_ == {"fit_xgb": 1.0}
    member = model.members_["fit_xgb"]
    p_member = np.clip(member.predict_proba(F)[:, 1], 1e-3, 1 - 1e-3)
    np.testing.assert_allclose(model.predict_proba(F)[:, 1], p_member, rtol=1e-6)
    # code-free artifacts: a delivered model with one member saves and loads as before
    model.save(tmp_path / "delivered")
    loaded = DeliveredModel.load(tmp_path / "delivered")
    np.testing.assert_allclose(loaded.predict_proba(F), model.predict_proba(F))


def test_transfer_stays_when_the_plain_fit_is_not_better(source: LogisticModel) -> None:
    """Few points whose relation is the source's: the full-capacity fit does not win."""
    rng = np.random.default_rng(7)
    X = pd.DataFrame(rng.normal(size=(80, 2)), columns=["a", "b"])
    y = _labels(2 * X["a"] - X["b"], 8)
    model, sel = S.fit_delivered({"lr": source}, X, y, make_target=_light,
                                 target_families=["lr", "xgb"], stages=False, fit_matrix=X,
                                 fit_families=["xgb"], make_fit=_light)
    assert sel.chosen.kind != S.FIT
    assert sel.versus["transfer_cv_log_loss"] <= sel.versus["fit_cv_log_loss"]
    assert not any(k.startswith("fit_") for k in model.members_)
    # study mode (no fit matrix) is unchanged: no plain-fit candidate, no comparison
    _, sel2 = S.fit_delivered({"lr": source}, X, y, make_target=_light,
                              target_families=["lr", "xgb"], stages=False)
    assert not sel2.versus and not any(n.startswith("fit(") for n in sel2.cv_loss)


@pytest.fixture(scope="module")
def weak_source(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A source run on elevation alone: the transfer shares one weak factor with the target,
    while 'lsm fit' on the target uses all of them."""
    out = tmp_path_factory.mktemp("runs") / "weak"
    rc = main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
               "--factors", "elevation", "--out", str(out), "-q", "--no-cv", "--no-predict",
               "--no-explain"])
    assert rc == 0
    return out


def test_shots_all_delivers_the_plain_fit_chosen_on_inner_folds_only(
        demo_dir: Path, weak_source: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lsm.workflows import finetune as ft
    from lsm.workflows.runs import load_run

    seen: list[tuple[set, set]] = []
    folds: list[np.ndarray] = []
    real_select, real_cv = S.select_strategy, ft._plain_fit_cv

    def spy_select(strategies, shots, y, ctx, **kw):
        seen.append((set(shots.X.index), set(shots.F.index)))
        return real_select(strategies, shots, y, ctx, **kw)

    def spy_cv(cfg, s, fit, fold):
        folds.append(np.asarray(fold))
        return real_cv(cfg, s, fit, fold)

    monkeypatch.setattr(S, "select_strategy", spy_select)
    monkeypatch.setattr(ft, "_plain_fit_cv", spy_cv)
    out = tmp_path / "prod"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(weak_source), "--shots", "all", "--out", str(out), "-q", "--no-explain"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    fold = folds[0]
    n_folds = len(np.unique(fold))
    # the chooser of each outer fold never saw that fold's rows; the map model's saw all
    assert len(seen) == n_folds + 1
    for k, (rows_x, rows_f) in enumerate(seen[:n_folds]):
        test = set(np.flatnonzero(fold == k))
        assert rows_x == rows_f == set(np.flatnonzero(fold != k))
        assert not rows_x & test
    assert seen[-1][0] == set(range(m["n"]))
    # the outer folds are those 'lsm fit' cross-validates on (the spec's folds)
    from lsm.config.spec import load_region
    from lsm.workflows.region import load_region_data

    data = load_region_data(load_region(str(demo_dir / "demo-target.yaml")), progress=False)
    np.testing.assert_array_equal(fold, data.table["fold"].to_numpy())

    # the inner folds group the same spatial blocks as the outer ones
    assert all(c["folds"].startswith("the skill folds' spatial blocks")
               for c in m["delivered"]["choices"])
    prod = m["production"]
    assert prod["delivered_is_fit"] and prod["map_model"] == "fit(lr)"
    assert set(prod["fit_cv"]) == {"lr", "best"} and prod["fit_cv"]["best"] == "lr"
    assert [r["model"] for r in prod["table"]][-1] == "delivered (nested CV)"
    fit_ll = prod["fit_cv"]["lr"]["log_loss"]["mean"]
    assert prod["delivered_cv"]["log_loss"]["mean"] <= fit_ll + 1e-6
    assert prod["delivered_cv"]["auc"]["mean"] >= prod["fit_cv"]["lr"]["auc"]["mean"] - 1e-6
    assert m["delivered"]["map_model"]["chosen"] == "fit(lr)"
    assert any("plain fit" in n for n in m["notes"])
    # the run maps the plain fit with the target's own factors and normalisation
    run = load_run(out)
    assert len(run.schema.factors) > 1 and run.norm == "target"
    dm = run.models["delivered"]
    assert list(dm.members_) == ["fit_lr"]
    assert list(dm.feature_names_in_) == run.schema.columns
    assert list((out / "maps").glob("demo-target_delivered_probability.tif"))
    # its uncertainty layer refits the plain fit on bootstrap resamples of its own rows
    assert list((out / "maps").glob("demo-target_delivered_uncertainty.tif"))
    report = (out / "report.md").read_text()
    assert "transfer vs fit on the target alone" in report.lower()


def test_inner_folds_keep_whole_blocks_together() -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 30, size=400)
    y = rng.integers(0, 2, size=400)
    folds, how = S.shot_folds(y, n_splits=5, n_repeats=2, seed=0, blocks=blocks)
    assert len(folds) == 10 and how.startswith("the skill folds' spatial blocks")
    for tr, va in folds:
        assert not set(blocks[tr]) & set(blocks[va])
    # too few blocks for a class: the usual folds
    _, how = S.shot_folds(y, n_splits=5, n_repeats=1, seed=0, blocks=blocks % 3)
    assert how.startswith("stratified")
