"""Verdict lines and the near-chance gate of the zones map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lsm.cli import main
from lsm.workflows.verdict import NEAR_CHANCE_AUC, skill_check, verdict_line, verdicts


def _d(mean: float, lo: float, hi: float) -> dict[str, float]:
    return {"mean_diff": mean, "ci95_low": lo, "ci95_high": hi}


def _metrics(auc_delivered: float = 0.8) -> dict:
    arm = lambda auc: {"auc": {"mean": auc}, "log_loss": {"mean": 0.5}}  # noqa: E731
    return {
        "models": {"lr": {"source_only": arm(0.7), "target_only": arm(0.7),
                          "stage2": arm(0.72)},
                   "lsm": {"source_only": arm(0.7), "target_only": arm(0.7),
                           "delivered": arm(auc_delivered)}},
        "paired": {
            "lsm: delivered - target_only": {"auc": _d(0.02, 0.01, 0.03),
                                             "log_loss": _d(-0.02, -0.03, -0.01)},
            "lsm: delivered - source_only": {"auc": _d(-0.01, -0.03, 0.01),
                                             "log_loss": _d(0.0, -0.01, 0.01)},
            "lr: stage2 - target_only": {"auc": _d(-0.05, -0.08, -0.02),
                                         "log_loss": _d(0.1, 0.05, 0.2)},
            "lr: stage2 - source_only": {"auc": _d(0.02, 0.01, 0.03),
                                         "log_loss": _d(0.1, 0.05, 0.2)},
        }}


def test_verdict_words_follow_the_intervals() -> None:
    v = {x["row"]: x for x in verdicts(_metrics())}
    assert list(v) == ["lsm", "lr"]  # the delivered model first
    assert v["lsm"]["vs"]["target_only"]["word"] == "better"
    assert v["lsm"]["vs"]["source_only"]["word"] == "no clear difference"
    assert v["lr"]["vs"]["target_only"]["word"] == "worse"
    assert v["lr"]["vs"]["source_only"]["word"] == "mixed"  # AUC up, log-loss worse
    line = verdict_line(v["lsm"])
    assert line.startswith("verdict delivered: vs target_only better (ΔAUC +0.020")
    assert "vs source_only no clear difference" in line


def test_verdict_uses_the_prior_corrected_log_loss_where_the_run_has_it() -> None:
    m = _metrics()
    m["paired"]["lsm: delivered - source_only"]["log_loss_prior_corrected"] = \
        _d(-0.05, -0.08, -0.02)  # plain log-loss: no clear difference; corrected: better
    v = verdicts(m)[0]
    # ΔAUC spans 0: the claim names the metric that carries it
    assert v["vs"]["source_only"]["word"].startswith("better on log-loss (prior-corr.) only")
    assert "Δlog-loss (prior-corr.) -0.050" in verdict_line(v)
    assert "Δlog-loss -0.020" in verdict_line(v)  # target_only has no corrected value


def test_skill_check_flags_near_chance() -> None:
    assert not skill_check(_metrics())["near_chance"]
    m = _metrics(auc_delivered=0.55)
    for arms in m["models"].values():
        for s in arms.values():
            s["auc"]["mean"] = min(s["auc"]["mean"], 0.55)
    sk = skill_check(m)
    assert sk["near_chance"] and sk["best_auc"] == pytest.approx(0.55)
    assert f"< {NEAR_CHANCE_AUC:.2f}" in sk["message"] and "--force-zones" in sk["message"]


@pytest.fixture(scope="module")
def source_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "src"
    assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
                 "--out", str(out), "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    return out


def _no_skill_table(demo_dir: Path, folder: Path) -> Path:
    """The demo target's points as a table region, labels shuffled: nothing to learn."""
    from lsm.config.spec import load_region
    from lsm.workflows.region import load_region_data

    data = load_region_data(load_region(demo_dir / "demo-target.yaml"), progress=False)
    t = data.table
    factors = [f for f in data.kinds if f != "lithology"]
    df = t[["x", "y", *factors]].copy()
    df["landslide"] = np.random.default_rng(3).permutation(t["label"].to_numpy())
    df.to_csv(folder / "noskill.csv", index=False)
    spec = {"name": "noskill", "crs": "EPSG:32617",
            "samples": {"path": "noskill.csv", "label": "landslide", "x": "x", "y": "y"},
            "factors": {f: {"column": f} for f in factors},
            "folds": {"n_folds": 5, "block_size": 1000.0}}
    p = folder / "noskill.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p


def test_no_skill_run_warns_and_withholds_zones(source_run: Path, demo_dir: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    spec = _no_skill_table(demo_dir, tmp_path)
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(spec), "--from", str(source_run), "--shots", "15",
               "--repeats", "3", "--out", str(out), "--no-explain", "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skill"]["near_chance"], metrics["skill"]
    assert "verdict delivered:" in cap.out
    assert "no demonstrated skill" in cap.out + cap.err
    units = pd.read_parquet(next((out / "maps").glob("*_units.parquet")))
    assert "probability" in units and "zone" not in units.columns
    assert "Zones withheld" in (out / "report.md").read_text() or \
        "zones withheld" in (out / "report.md").read_text()
    # forced: the zones are written
    assert main(["predict", "--run", str(out), "--force-zones", "-q"]) == 0
    units = pd.read_parquet(next((out / "maps").glob("*_units.parquet")))
    assert set(units["zone"].unique()) <= {1, 2, 3, 4, 5}


def test_skilled_run_writes_zones_and_says_what_made_the_map(
        source_run: Path, demo_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "15", "--repeats", "2", "--out", str(out),
               "--no-explain", "-q"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics["skill"]["near_chance"]
    assert list((out / "maps").glob("*_zones.tif"))
    # the delivered map model was trained on every labelled point outside the hold-out:
    # only the hold-out's landslides count as unseen in the prediction-rate curve
    test = pd.read_parquet(out / "test_predictions.parquet")
    zones = json.loads(next((out / "maps").glob("*_delivered_zones.json")).read_text())
    held_ls = test[test["label"] == 1]
    assert zones["n_unseen_landslides"] == len(held_ls) > 0
    assert zones["n_seen_landslides"] > 10 * 15 // 10  # far more than one repeat's 15 shots
    report = (out / "report.md").read_text()
    assert "**Verdict**" in report and "- delivered: vs target_only" in report
    assert "arm `delivered`, strategy" in report and "not on the shots of any one repeat" \
        in report
