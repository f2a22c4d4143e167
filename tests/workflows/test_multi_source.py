"""Pretraining on several source regions (``lsm fit --source a,b``) and fine-tuning from it,
through the CLI, on the two demo regions; plus importance re-weighting (``--reweight``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lsm.cli import main
from lsm.errors import SpecError
from lsm.stack.features import design_matrix
from lsm.workflows.runs import load_run


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lsm.datasets.demo import generate_demo

    d = tmp_path_factory.mktemp("demo")
    generate_demo(d)
    return d


@pytest.fixture(scope="module")
def multi_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "multi"
    sources = f"{demo_dir / 'demo-source.yaml'},{demo_dir / 'demo-target.yaml'}"
    rc = main(["fit", "--source", sources, "--model", "lr,xgb", "--out", str(out), "-q",
               "--no-explain"])
    assert rc == 0
    return out


def test_multi_source_fit_writes_a_pooled_run(multi_run: Path) -> None:
    meta = json.loads((multi_run / "model.json").read_text())
    assert meta["kind"] == "fit" and meta["region"] == "demo-source+demo-target"
    assert meta["regions"] == ["demo-source", "demo-target"]
    assert set(meta["region_stats"]) == {"demo-source", "demo-target"}
    # 'stats' / 'spec' are the first region's
    assert meta["stats"] == meta["region_stats"]["demo-source"]
    assert yaml.safe_load(meta["spec"])["name"] == "demo-source"
    assert set(meta["specs"]) == {"demo-source", "demo-target"}
    assert meta["schema"]["categories"]["lithology"] == ["granite", "sandstone", "shale"]
    assert any("multi-source run" in n for n in meta["notes"])
    table = pd.read_parquet(multi_run / "training_table.parquet")
    counts = table["region"].value_counts()
    assert set(counts.index) == {"demo-source", "demo-target"}
    assert counts["demo-source"] > 2 * counts["demo-target"]  # unequal sizes, so weights matter
    m = json.loads((multi_run / "metrics.json").read_text())
    for fam in ("lr", "xgb"):
        cv = m["cv"][fam]
        assert 0.6 < cv["summary"]["auc"]["mean"] <= 1.0
        assert set(cv["per_region"]) == {"demo-source", "demo-target"}
        for r in cv["per_region"].values():
            assert np.isfinite(r["summary"]["auc"]["mean"]) and len(r["folds"]) == 5
        assert np.isfinite(table[f"oof_{fam}"]).all()
    assert not (multi_run / "maps").exists()  # no single grid: maps skipped
    assert "## Model performance" in (multi_run / "report.md").read_text()


def test_each_region_is_normalised_with_its_own_statistics(multi_run: Path) -> None:
    from lsm.workflows.sources import run_matrix, run_weights, source_weights

    run = load_run(multi_run)
    table = run.training_table()
    X = run_matrix(run, table, run.schema)
    for region, stats in run.meta["region_stats"].items():
        rows = table["region"] == region
        own = design_matrix(table[rows], run.schema, norm="target", region_stats=stats)
        pd.testing.assert_frame_equal(X[rows.to_numpy()], own)
    w = run_weights(run, table)
    y = table["label"].to_numpy()
    np.testing.assert_allclose(w, source_weights(table["region"].to_numpy(), y))
    r = rows.to_numpy()
    assert w[r].sum() == pytest.approx(w[~r].sum())  # every region counts the same
    assert w[r & (y == 1)].sum() == pytest.approx(w[r & (y == 0)].sum())  # classes too
    # the saved lr is the weighted fit of that matrix
    from lsm.models import LogisticModel

    ref = LogisticModel(random_state=0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(run.models["lr"].coef_, ref.coef_, rtol=1e-6, atol=1e-8)


def test_finetune_from_a_multi_source_run(multi_run: Path, demo_dir: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(multi_run), "--shots", "10", "--repeats", "2", "--out", str(out), "-q",
               "--no-predict", "--no-explain"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["source_region"] == "demo-source+demo-target" and m["source_retrained"] is False
    assert set(m["models"]) >= {"lr", "xgb"}
    for fam in ("lr", "xgb"):
        assert np.isfinite(m["models"][fam]["stage2"]["auc"]["mean"])
    meta = json.loads((out / "model.json").read_text())
    assert meta["chain"] == ["demo-source+demo-target", "demo-target"]


def _without_ndvi(demo_dir: Path, tmp_path: Path) -> Path:
    spec = yaml.safe_load((demo_dir / "demo-target.yaml").read_text())
    spec["factors"].pop("ndvi")
    for f in spec["factors"].values():
        f["path"] = str(demo_dir / f["path"])
    spec["inventory"]["path"] = str(demo_dir / spec["inventory"]["path"])
    p = tmp_path / "no-ndvi.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_repretrain_keeps_regions_apart_and_reweights(multi_run: Path, demo_dir: Path,
                                                      tmp_path: Path) -> None:
    """A target without ndvi: the pooled source is re-trained on the shared factors, each
    region with its own statistics and balanced weights, then importance-weighted."""
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(_without_ndvi(demo_dir, tmp_path)), "--from",
               str(multi_run), "--shots", "10", "--repeats", "1", "--model", "lr", "--out",
               str(out), "-q", "--no-predict", "--no-explain", "--reweight"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["source_retrained"] is True and "ndvi" not in m["factors"]
    note = next(n for n in m["notes"] if "effective sample size" in n)
    assert "re-weighted towards demo-target" in note


def test_repretrain_matches_a_weighted_per_region_fit(multi_run: Path) -> None:
    from lsm.models import LogisticModel
    from lsm.workflows.finetune import _repretrain
    from lsm.workflows.sources import source_weights

    run = load_run(multi_run)
    factors = [f for f in run.schema.factors if f != "ndvi"]
    got = _repretrain(run, factors, ["lr"], norm="target", seed=0, device="cpu",
                      progress=False)["lr"]
    table = run.training_table()
    schema = run.schema.restrict(factors)
    parts = [design_matrix(table[table["region"] == r], schema, norm="target",
                           region_stats=s) for r, s in run.meta["region_stats"].items()]
    X = pd.concat(parts).loc[table.index]
    y = table["label"].to_numpy()
    ref = LogisticModel(random_state=0).fit(X, y, sample_weight=source_weights(table["region"], y))
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-6, atol=1e-8)


def test_reweight_from_a_single_source_run(demo_dir: Path, tmp_path: Path) -> None:
    """--reweight re-trains even when nothing else would; the note records the ESS."""
    src = tmp_path / "src"
    assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
                 "--out", str(src), "-q", "--no-cv", "--no-predict", "--no-explain"]) == 0
    assert "region" not in pd.read_parquet(src / "training_table.parquet").columns
    out = tmp_path / "ft"
    assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                 str(src), "--shots", "10", "--repeats", "1", "--out", str(out), "-q",
                 "--no-predict", "--no-explain", "--reweight"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["source_retrained"] is True
    assert any("effective sample size" in n for n in m["notes"])


def test_common_factors_and_bad_sources(demo_dir: Path, tmp_path: Path) -> None:
    from lsm.config.spec import load_region
    from lsm.workflows.sources import common_factors, source_names

    assert source_names("a") == ["a"] and source_names(["a", " b"]) == ["a", "b"]
    with pytest.raises(SpecError, match="more than once"):
        source_names("a,a")
    spec = yaml.safe_load((demo_dir / "demo-target.yaml").read_text())
    spec["factors"]["lithology"].pop("categories")
    spec["name"] = "no-legend"
    p = tmp_path / "no-legend.yaml"
    p.write_text(yaml.safe_dump(spec))
    specs = [load_region(demo_dir / "demo-source.yaml"), load_region(p)]
    factors, notes = common_factors(specs)
    assert "lithology" not in factors and "slope" in factors
    assert any("lithology" in n and "no-legend" in n for n in notes)
    with pytest.raises(SpecError, match="no factor"):
        common_factors(specs, ["slope", "soil"])
