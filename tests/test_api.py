"""The Python API (``lsm.fit`` ... ``lsm.Run``) on tiny synthetic table regions, the
table-region outputs of ``predict``, the uncertainty column, and the fine-tune
figures (ROC / reliability on the test set, SHAP shift against re-pretrained sources)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import lsm


def test_import_is_cheap_and_the_api_is_documented() -> None:
    code = ("import sys, lsm; heavy = [m for m in ('torch', 'xgboost', 'shap', 'pandas') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    for name in lsm.__all__:
        obj = getattr(lsm, name)
        if callable(obj):
            doc = obj.__doc__ or ""
            assert doc.strip(), name
    doc = lsm.finetune.__doc__
    for part in ("Parameters", "Returns", "Example", "shots", "source_run"):
        assert part in doc


def test_version_and_short_help(capsys: pytest.CaptureFixture[str]) -> None:
    from lsm.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lsm {lsm.__version__}"
    assert main(["-h"]) == 0
    assert "finetune" in capsys.readouterr().out


def _table_region(folder: Path, name: str, *, n: int, seed: int, shift: float,
                  extra: bool, xy: bool) -> Path:
    """A points table whose landslides follow slope and rainfall (and a categorical)."""
    rng = np.random.default_rng(seed)
    slope = rng.uniform(0, 45, n) + shift
    rain = rng.normal(1500, 300, n)
    geo = rng.integers(1, 4, n)
    z = 0.12 * (slope - 22) + 0.004 * (rain - 1500) + 0.6 * (geo == 2)
    label = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    df = pd.DataFrame({"slp": slope, "rain": rain, "geo": geo, "landslide": label})
    factors = {"slope": {"column": "slp"}, "rainfall": {"column": "rain"},
               "lithology": {"column": "geo", "categories": {1: "granite", 2: "shale",
                                                             3: "sandstone"}}}
    if extra:
        df["twi_col"] = rng.normal(8, 2, n)
        factors["twi"] = {"column": "twi_col"}
    samples: dict = {"path": {"path": f"{name}.csv"}, "label": "landslide"}
    if xy:
        df["X"] = 600_000 + rng.uniform(0, 5000, n)
        df["Y"] = 4_000_000 + rng.uniform(0, 5000, n)
        samples.update(x="X", y="Y", crs="EPSG:32650")
    df.to_csv(folder / f"{name}.csv", index=False)
    spec = {"name": name, "samples": samples, "factors": factors,
            "folds": {"n_folds": 3, **({"block_size": 1000} if xy else {})}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("api")
    src_spec = _table_region(d, "tab-source", n=600, seed=1, shift=0.0, extra=True, xy=True)
    tgt_spec = _table_region(d, "tab-target", n=300, seed=2, shift=5.0, extra=False,
                             xy=False)
    src = lsm.fit(src_spec, models="lr,xgb", out=d / "src")
    ft = lsm.finetune(tgt_spec, src, shots=15, repeats=2, out=d / "ft")
    return {"dir": d, "src": src, "ft": ft, "src_spec": src_spec, "tgt_spec": tgt_spec}


def test_fit_returns_a_run_with_metrics_schema_and_norm(api_runs: dict) -> None:
    src = api_runs["src"]
    assert isinstance(src, lsm.Run) and src.kind == "fit"
    assert src.families == ["lr", "xgb"]
    assert set(src.factors) == {"slope", "rainfall", "lithology", "twi"}
    assert src.normalisation["method"] == "target"
    assert 0.6 < src.metrics["cv"]["xgb"]["summary"]["auc"]["mean"] <= 1.0
    again = lsm.load_run(src.path, models="lr")
    assert again.families == ["lr"]


def test_run_predict_applies_schema_and_normalisation(api_runs: dict) -> None:
    from lsm.stack.features import design_matrix

    src = api_runs["src"]
    table = src.training_table().head(50)
    p = src.predict(table, model="lr")
    X = design_matrix(table, src.schema, norm=src.norm, region_stats=src.stats,
                      source_stats=src.stats)
    assert np.allclose(p.to_numpy(), src.models["lr"].predict_proba(X)[:, 1])
    assert p.name == "lr" and p.index.equals(table.index)
    both = src.predict(table, model="all")
    assert list(both.columns) == ["lr", "xgb"]
    with pytest.raises(lsm.LsmError, match="twi"):
        src.predict(table.drop(columns="twi"))


def test_table_region_predictions_are_written(api_runs: dict) -> None:
    src = api_runs["src"]
    units = list((src.path / "maps").glob("*_units.parquet"))
    assert len(units) == 1  # fit wrote them after training
    m = lsm.predict(src, out=api_runs["dir"] / "units", model="lr")
    assert {"table", "csv", "gpkg"} <= set(m.files)
    df = m.units()
    assert len(df) == 600 and set(df["zone"]) == {1, 2, 3, 4, 5}
    assert df["probability"].between(0, 1).all()
    # zones rise with the probability, and the cut points are the thresholds
    assert (df.groupby("zone")["probability"].max().diff().dropna() > 0).all()
    t = m.thresholds
    assert (df.loc[df["probability"] < t[0], "zone"] == 1).all()
    csv = pd.read_csv(m.files["csv"])
    assert np.allclose(csv["probability"], df["probability"])
    import geopandas as gpd

    g = gpd.read_file(m.files["gpkg"])
    assert len(g) == 600 and g.crs.to_epsg() == 32650
    assert np.allclose(g.geometry.x, df["x"])
    # the same probabilities as scoring the region's table directly
    table = lsm.load_region(api_runs["src_spec"]).table
    assert np.allclose(src.predict(table, model="lr").to_numpy(), df["probability"])
    assert m.zone_statistics["n_units"].sum() == 600


def test_finetune_run_outputs(api_runs: dict) -> None:
    ft = api_runs["ft"]
    assert ft.kind == "finetune" and ft.default_model == "delivered"
    assert "delivered" in ft.metrics["models"]["lsm"]
    figs = ft.path / "figures"
    for png in ("roc.png", "reliability.png", "arms.png"):
        assert (figs / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the target lacks 'twi': sources were re-pretrained, kept, and compared in SHAP
    assert ft.meta["source_models"]["families"] == ["lr", "xgb"]
    assert (figs / "shap_shift_xgb.png").exists()
    e = lsm.explain(ft)
    assert set(e.source_importance) == {"lr", "xgb"}
    assert "twi" not in e.source_importance["xgb"].index
    # units without coordinates: Parquet + CSV, no GeoPackage; uncertainty column on
    units = sorted((ft.path / "maps").glob("*_units.*"))
    assert [p.suffix for p in units] == [".csv", ".parquet"]
    df = pd.read_parquet(units[1])
    assert (df["uncertainty"] >= 0).all() and df["uncertainty"].max() > 0
    report = (ft.path / "report.md").read_text()
    assert "Uncertainty: std of P(landslide) across 10 bootstrap refits" in report
    assert "roc.png" in report


def test_reprs_are_short_and_say_what_the_object_is(api_runs: dict) -> None:
    """A notebook shows these: a line (and a small HTML table), never the whole
    normalisation statistics (26,690-39,547 characters before)."""
    src, ft = api_runs["src"], api_runs["ft"]
    r = repr(src)
    assert len(r) < 300 and "kind='fit'" in r and "families=[lr, xgb]" in r
    auc = src.metrics["cv"][src.default_model]["summary"]["auc"]["mean"]
    assert f"spatial-CV AUC {auc:.3f}" in r
    r = repr(ft)
    auc = ft.metrics["models"]["lsm"]["delivered"]["auc"]["mean"]
    assert len(r) < 300 and "kind='finetune'" in r and f"hold-out AUC {auc:.3f}" in r
    html = ft._repr_html_()
    assert html.startswith("<table>") and "finetune" in html and len(html) < 1000
    m = lsm.predict(src, out=api_runs["dir"] / "repr-units", model="lr")
    assert len(repr(m)) < 300 and "files=[" in repr(m) and "<td" in m._repr_html_()
    e = lsm.explain(src)
    assert len(repr(e)) < 400 and "top factors" in repr(e)


def test_uncertainty_off_and_refits_change_with_rows(api_runs: dict) -> None:
    ft = api_runs["ft"]
    m = ft.predict_map(out=api_runs["dir"] / "no-unc", uncertainty=0)
    assert "uncertainty" not in m.units().columns
    from lsm.workflows.uncertainty import bootstrap_models

    a, b = bootstrap_models(ft, "delivered", replicates=2, seed=0)
    X = pd.read_parquet(ft.path / "delivered_rows.parquet").drop(columns="label")
    assert not np.allclose(a.predict_proba(X), b.predict_proba(X))
    with pytest.raises(lsm.LsmError, match="at least 2"):
        ft.predict_map(out=api_runs["dir"] / "one", uncertainty=1)


def test_real_table_region(shared_data: Path, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSM_DATA_DIR", str(shared_data))
    run = lsm.fit("jiangxi-yushan", models="lr", out=tmp_path / "ys", cv=False,
                  explain=False)
    units = pd.read_parquet(next((run.path / "maps").glob("*_units.parquet")))
    assert len(units) == 7598 and units["label"].sum() == 175
    # landslide units sit in the higher zones
    assert units.loc[units["label"] == 1, "zone"].mean() > units["zone"].mean() + 0.5
