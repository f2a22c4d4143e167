"""Curves (ROC, success/prediction rate, reliability) and the figures drawn from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsm.evaluate.curves import (
    prediction_rate_curve,
    reliability,
    roc_points,
    success_rate_curve,
)
from lsm.evaluate.figures import (
    plot_arms,
    plot_rate_curves,
    plot_reliability,
    plot_roc,
    plot_shots_curve,
    save_figure,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _forecast(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = 1.5 * (y - 0.5) + rng.normal(size=n)
    return y, 1.0 / (1.0 + np.exp(-z))


def _assert_png(path: Path) -> None:
    assert path.is_file()
    head = path.read_bytes()[:8]
    assert head == PNG_SIGNATURE
    assert path.stat().st_size > 5_000
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temp files left behind: {leftovers}"


def _metrics() -> dict:
    rng = np.random.default_rng(1)
    arms = ("source_only", "target_only", "stage1", "stage2")
    models = {}
    for fam in ("rf", "lr", "xgb", "mlp"):
        models[fam] = {}
        for i, arm in enumerate(arms):
            models[fam][arm] = {
                "auc": {"mean": 0.65 + 0.05 * i + 0.02 * rng.random(), "std": 0.02},
                "log_loss": {"mean": 0.75 - 0.06 * i, "std": 0.03},
                "brier": {"mean": 0.24 - 0.02 * i, "std": 0.01},
            }
    return {"source_region": "A", "target": "B", "shots": 25, "repeats": 5, "models": models}


# ---------------------------------------------------------------------- curves
def test_roc_endpoints_and_auc() -> None:
    y, p = _forecast()
    c = roc_points(y, p)
    assert (c.fpr[0], c.tpr[0]) == (0.0, 0.0)
    assert (c.fpr[-1], c.tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(c.fpr) >= 0) and np.all(np.diff(c.tpr) >= 0)
    assert 0.75 < c.auc < 0.95
    assert c.auc == pytest.approx(np.trapezoid(c.tpr, c.fpr))


def test_roc_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="landslides and non-landslides"):
        roc_points([1, 1, 1], [0.2, 0.5, 0.9])


def test_success_rate_curve_is_monotone_and_ends_at_one() -> None:
    rng = np.random.default_rng(3)
    p_all = rng.uniform(size=20_000)
    ls = rng.choice(p_all, 300, p=p_all / p_all.sum())  # landslides favour high p
    c = success_rate_curve(ls, p_all)
    assert (c.area[0], c.landslides[0]) == (0.0, 0.0)
    assert c.area[-1] == pytest.approx(1.0) and c.landslides[-1] == pytest.approx(1.0)
    assert np.all(np.diff(c.area) >= 0) and np.all(np.diff(c.landslides) >= 0)
    assert len(c.area) <= 2000
    assert 0.6 < c.auc < 0.8


def test_success_rate_auc_perfect_and_random() -> None:
    rng = np.random.default_rng(4)
    p_all = rng.uniform(size=50_000)
    perfect = np.sort(p_all)[-200:]  # landslides exactly on the most susceptible pixels
    assert success_rate_curve(perfect, p_all).auc > 0.99
    random_ls = rng.choice(p_all, 2_000, replace=False)
    assert success_rate_curve(random_ls, p_all).auc == pytest.approx(0.5, abs=0.03)


def test_rate_curve_ignores_nan_and_handles_ties() -> None:
    c = success_rate_curve([0.9, np.nan], np.array([[0.5, 0.5], [0.9, np.nan]]))
    assert c.area.tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    assert c.landslides.tolist() == [0.0, 1.0, 1.0]
    assert prediction_rate_curve([0.9], [0.5, 0.5, 0.9]).auc == pytest.approx(c.auc)


def test_reliability_counts_sum_to_n() -> None:
    y, p = _forecast(n=537)
    t = reliability(y, p, n_bins=10)
    assert len(t) == 10
    assert t["count"].sum() == 537
    used = t[t["count"] > 0]
    assert ((used["mean_predicted"] >= used["bin_lower"]) &
            (used["mean_predicted"] <= used["bin_upper"])).all()
    assert used["observed"].between(0, 1).all()
    # p == 1 goes in the last bin, empty bins stay with NaN means
    t2 = reliability([1, 0], [1.0, 0.0], n_bins=4)
    assert t2["count"].tolist() == [1, 0, 0, 1]
    assert np.isnan(t2["observed"].iloc[1])


# ---------------------------------------------------------------------- figures
def test_plot_roc_rate_reliability_write_pngs(tmp_path: Path) -> None:
    y, p = _forecast()
    y2, p2 = _forecast(seed=5)
    _assert_png(plot_roc({"rf": (y, p), "lr": (y2, p2)}, tmp_path / "roc.png", "ROC"))
    rng = np.random.default_rng(0)
    p_all = rng.uniform(size=5_000)
    s = success_rate_curve(rng.choice(p_all, 100, p=p_all / p_all.sum()), p_all)
    q = prediction_rate_curve(rng.choice(p_all, 50), p_all)
    _assert_png(plot_rate_curves(s, q, tmp_path / "rate.png", "rates"))
    _assert_png(plot_rate_curves((s.area, s.landslides), None, tmp_path / "rate1.png", "r"))
    _assert_png(plot_reliability({"rf": (y, p), "lr": (y2, p2)}, tmp_path / "rel.png", "rel"))
    with pytest.raises(ValueError):
        plot_rate_curves(None, None, tmp_path / "none.png", "x")


def test_plot_arms_and_shots_curve(tmp_path: Path) -> None:
    metrics = _metrics()
    metrics["models"]["lr"]["stage1"]["auc"] = {"mean": float("nan"), "std": float("nan")}
    out = tmp_path / "sub" / "arms.png"  # the folder is created
    _assert_png(plot_arms(metrics, out))
    _assert_png(plot_arms({"models": {"rf": metrics["models"]["rf"]}}, tmp_path / "a1.png",
                          "one family", metric_names=("auc", "log_loss", "brier")))
    rows = [{"family": f, "arm": a, "shots": k, "mean": 0.6 + 0.001 * k + 0.02 * i,
             "std": 0.03}
            for f in ("rf", "xgb", "mlp") for i, a in enumerate(
                ("source_only", "target_only", "stage1", "stage2"))
            for k in (10, 25, 50, 100)]
    _assert_png(plot_shots_curve(pd.DataFrame(rows), tmp_path / "shots.png", "auc"))
    with pytest.raises(ValueError, match="lacks columns"):
        plot_shots_curve(pd.DataFrame({"family": []}), tmp_path / "bad.png", "auc")


def test_save_figure_is_atomic_on_failure(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "fig.notaformat")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
    save_figure(fig, target)
    assert target.read_bytes()[:8] == PNG_SIGNATURE


def test_curve_styles_stay_distinct_past_the_colour_cycle() -> None:
    """A fine-tune's ROC and reliability plots have 9 curves for 8 colours."""
    from lsm.evaluate.figures import _line

    styles = {tuple(sorted(_line(i).items())) for i in range(12)}
    assert len(styles) == 12
