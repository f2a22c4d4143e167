"""The delivered model of ``lsm finetune``: chosen from the shots alone, reported with
paired statistics, mapped by default, and trained on every labelled point with
``--shots all``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lsm.cli import main
from lsm.workflows import finetune as ft
from lsm.workflows.finetune import FinetuneConfig, run_finetune
from lsm.workflows.runs import load_run


@pytest.fixture(scope="module")
def source_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "src"
    rc = main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr,xgb",
               "--out", str(out), "-q", "--no-cv", "--no-predict", "--no-explain"])
    assert rc == 0
    return out


def _cfg(demo_dir: Path, source_run: Path, out: Path, **kw) -> FinetuneConfig:
    base = dict(target=str(demo_dir / "demo-target.yaml"), source_run=source_run, shots=15,
                repeats=2, out=out, progress=False)
    return FinetuneConfig(**{**base, **kw})


def test_delivered_arm_is_reported_beside_the_baselines(demo_dir: Path, source_run: Path,
                                                        tmp_path: Path) -> None:
    m = run_finetune(_cfg(demo_dir, source_run, tmp_path / "ft"))
    assert set(m["models"]["lsm"]) == {"source_only", "target_only", "delivered"}
    assert len(m["repeats_detail"]["lsm"]["delivered"]) == 2
    # the baselines of row lsm are one family's own arm, picked per repeat on the shots
    for r, c in enumerate(m["delivered"]["choices"]):
        fam = c["source_only_family"]
        assert m["repeats_detail"]["lsm"]["source_only"][r] == \
            m["repeats_detail"][fam]["source_only"][r]
        assert c["chosen"] and c["folds"] and c["rule"]
    paired = m["paired"]["lsm: delivered - target_only"]["auc"]
    assert {"mean_diff", "ci95_low", "ci95_high", "win_rate", "wilcoxon_p"} <= set(paired)
    d = np.array([x["auc"] for x in m["repeats_detail"]["lsm"]["delivered"]]) - \
        np.array([x["auc"] for x in m["repeats_detail"]["lsm"]["target_only"]])
    assert paired["mean_diff"] == pytest.approx(d.mean())
    mm = m["delivered"]["map_model"]
    assert mm["n"] == m["pool_size"] and "outside the hold-out" in mm["trained_on"]
    run = load_run(tmp_path / "ft")
    assert "delivered" in run.models and run.meta["delivered"] == "delivered"


def test_delivered_model_never_sees_the_hold_out(demo_dir: Path, source_run: Path,
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Poison every hold-out label: the delivered choices and models must not change."""
    clean = run_finetune(_cfg(demo_dir, source_run, tmp_path / "clean"))
    real_holdout = ft.holdout_mask
    real_load = ft.load_region_data
    masks: dict[str, np.ndarray] = {}

    def fixed_holdout(table, **kw):  # the split of the clean labels, kept fixed
        test, split = real_holdout(table.assign(label=masks["y"]), **kw)
        masks["test"] = test
        return test, split

    def poisoned_load(spec, **kw):
        data = real_load(spec, **kw)
        y = data.table["label"].to_numpy().copy()
        masks["y"] = y.copy()
        test, _ = real_holdout(data.table, test_fraction=0.3, seed=0)
        y[test] = 1 - y[test]
        data.table["label"] = y
        return data

    monkeypatch.setattr(ft, "holdout_mask", fixed_holdout)
    monkeypatch.setattr(ft, "load_region_data", poisoned_load)
    poisoned = run_finetune(_cfg(demo_dir, source_run, tmp_path / "poisoned"))
    assert masks["test"].any()
    strip = [{k: v for k, v in c.items()} for c in clean["delivered"]["choices"]]
    assert [c["chosen"] for c in poisoned["delivered"]["choices"]] == [c["chosen"] for c in strip]
    assert poisoned["delivered"]["choices"] == strip
    assert poisoned["delivered"]["map_model"]["chosen"] == clean["delivered"]["map_model"]["chosen"]
    # the scores on the (poisoned) hold-out do change: the test really was poisoned
    assert poisoned["models"]["lsm"]["delivered"]["auc"]["mean"] < 0.5 < \
        clean["models"]["lsm"]["delivered"]["auc"]["mean"]
    a, b = load_run(tmp_path / "clean"), load_run(tmp_path / "poisoned")
    table = a.training_table()
    from lsm.stack.features import design_matrix

    X = design_matrix(table, a.schema, norm=a.norm, region_stats=a.stats,
                      source_stats=a.meta["source_stats"])
    np.testing.assert_array_equal(a.models["delivered"].predict_proba(X),
                                  b.models["delivered"].predict_proba(X))


def test_shots_all_trains_on_every_labelled_point(demo_dir: Path, source_run: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "prod"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "all", "--out", str(out), "-q", "--no-explain"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "production" and m["shots"] == "all"
    assert "spatial block cross-validation" in m["split"]
    n_folds = int(m["split"].split("-fold")[0])
    assert len(m["repeats_detail"]["lsm"]["delivered"]) == n_folds
    assert m["delivered"]["map_model"]["n"] == m["n"] > 100
    assert len(m["delivered"]["choices"]) == n_folds
    run = load_run(out)
    assert list(run.models) == ["delivered"]
    assert list((out / "maps").glob("demo-target_delivered_probability.tif"))
    report = (out / "report.md").read_text()
    assert "every labelled" in report and "cross-validation" in report


def test_shots_option_errors(demo_dir: Path, source_run: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("ten", "0", "-3"):
        rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                   str(source_run), "--shots", bad, "--out", str(tmp_path / "x"), "-q"])
        assert rc == 2
        err = capsys.readouterr().err
        assert "--shots" in err and "Traceback" not in err
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "5000", "--out", str(tmp_path / "y"), "-q"])
    assert rc == 2
    assert "--shots all" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
