"""The whole fit -> finetune -> predict -> explain -> report path on the demo regions,
through the CLI, plus the factor-intersection and error paths of ``finetune``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from lsm.cli import main
from lsm.workflows.runs import load_run


@pytest.fixture(scope="module")
def source_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "src"
    rc = main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr,xgb",
               "--out", str(out), "-q"])
    assert rc == 0
    return out


def test_fit_writes_run(source_run: Path) -> None:
    meta = json.loads((source_run / "model.json").read_text())
    assert meta["kind"] == "fit" and meta["families"] == ["lr", "xgb"]
    assert meta["norm"] == "target"
    assert set(meta["schema"]["factors"]) >= {"slope", "aspect", "lithology", "rainfall"}
    assert meta["schema"]["categories"]["lithology"] == ["granite", "sandstone", "shale"]
    assert meta["command"].startswith("lsm fit")
    metrics = json.loads((source_run / "metrics.json").read_text())
    for fam in ("lr", "xgb"):
        s = metrics["cv"][fam]["summary"]
        assert 0.7 < s["auc"]["mean"] <= 1.0  # the demo's susceptibility is learnable
        assert {"auc", "log_loss", "brier", "accuracy"} <= set(s)
    assert (source_run / "model" / "xgb" / "model.ubj").exists()
    assert (source_run / "training_table.parquet").exists()


def test_fit_maps_match_stack_grid(source_run: Path, demo_dir: Path) -> None:
    from lsm.config.spec import load_region
    from lsm.stack.build import build_stack

    ds = build_stack(load_region(demo_dir / "demo-source.yaml"))
    probs = list((source_run / "maps").glob("*_probability.tif"))
    zones = list((source_run / "maps").glob("*_zones.tif"))
    assert len(probs) == 1 and len(zones) == 1
    with rasterio.open(probs[0]) as src:
        assert src.crs == ds.rio.crs
        assert src.transform.almost_equals(ds.rio.transform())
        assert (src.height, src.width) == (ds.sizes["y"], ds.sizes["x"])
        a = src.read(1)
        assert np.isnan(src.nodata)
        fin = a[np.isfinite(a)]
        assert fin.size > 0.9 * a.size and fin.min() >= 0 and fin.max() <= 1
        # pixels with a missing factor stay nodata
        missing = ~ds.to_array().notnull().all("variable").compute().to_numpy()
        missing &= ds["aspect"].notnull().compute().to_numpy() | ds["slope"].isnull().compute(
        ).to_numpy()
        assert np.isnan(a[missing]).all()
    with rasterio.open(zones[0]) as src:
        z = src.read(1)
        assert src.nodata == 0 and set(np.unique(z)) <= {0, 1, 2, 3, 4, 5}
        assert src.colormap(1)[5][:3] != src.colormap(1)[1][:3]
    for png in ("roc.png", "reliability.png", "shap_importance_xgb.png",
                "shap_beeswarm_lr.png"):
        assert (source_run / "figures" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (source_run / "report.md").read_text()
    assert "## Model performance" in report and "lsm fit" in report
    assert "density ratio" in report
    # the mapped family was chosen by the CV that reports its skill: the report says so
    assert "the same cross-validation that reports its skill" in report


@pytest.fixture(scope="module")
def finetune_run(source_run: Path, demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ft"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "10", "--repeats", "2", "--out", str(out), "-q"])
    assert rc == 0
    return out


def test_finetune_metrics_have_four_arms(finetune_run: Path) -> None:
    m = json.loads((finetune_run / "metrics.json").read_text())
    assert m["shots"] == 10 and m["repeats"] == 2 and m["split"] == "spatial"
    assert m["test_size"] > 0 and m["norm"] == "target" and "lithology" in m["factors"]
    for fam in ("lr", "xgb"):
        assert set(m["models"][fam]) == {"source_only", "target_only", "stage1", "stage2"}
        for arm in m["models"][fam].values():
            for k in ("auc", "log_loss", "brier", "accuracy"):
                assert set(arm[k]) == {"mean", "std"} and np.isfinite(arm[k]["mean"])
        # the zero-shot source arm is the same model on the same test set every repeat
        assert m["models"][fam]["source_only"]["auc"]["std"] == 0
    meta = json.loads((finetune_run / "model.json").read_text())
    assert meta["chain"] == ["demo-source", "demo-target"]
    assert (finetune_run / "figures" / "arms.png").exists()
    assert list((finetune_run / "figures").glob("shap_shift_*.png"))
    assert list((finetune_run / "maps").glob("demo-target_*_probability.tif"))


def test_finetuned_run_loads_and_chains(finetune_run: Path, demo_dir: Path,
                                        tmp_path: Path) -> None:
    run = load_run(finetune_run)
    assert set(run.models) == {"lr", "xgb", "delivered"}
    out = tmp_path / "chain"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(finetune_run), "--shots", "10", "--repeats", "1", "--model", "lr", "--out",
               str(out), "-q", "--no-predict", "--no-explain"])
    assert rc == 0
    assert json.loads((out / "model.json").read_text())["chain"] == [
        "demo-source", "demo-target", "demo-target"]


def _variant(demo_dir: Path, tmp_path: Path, edit) -> Path:
    spec = yaml.safe_load((demo_dir / "demo-target.yaml").read_text())
    edit(spec)
    for f in spec["factors"].values():  # keep the paths valid from the new folder
        f["path"] = str(demo_dir / f["path"])
    spec["inventory"]["path"] = str(demo_dir / spec["inventory"]["path"])
    p = tmp_path / "variant.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_missing_factor_repretrains_source(source_run: Path, demo_dir: Path,
                                           tmp_path: Path) -> None:
    spec = _variant(demo_dir, tmp_path, lambda s: s["factors"].pop("ndvi"))
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(spec), "--from", str(source_run), "--shots",
               "10", "--repeats", "1", "--out", str(out), "-q", "--no-predict",
               "--no-explain"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["source_retrained"] is True and "ndvi" not in m["factors"]
    assert any("re-pretrained" in n for n in m["notes"])
    assert load_run(out).schema.factors == m["factors"]


def test_unmatched_legend_is_dropped(source_run: Path, demo_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec = _variant(demo_dir, tmp_path, lambda s: s["factors"]["lithology"].pop("categories"))
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(spec), "--from", str(source_run), "--shots",
               "10", "--repeats", "1", "--out", str(out), "-q", "--no-predict",
               "--no-explain"])
    assert rc == 0
    printed = capsys.readouterr()
    notes = [ln for ln in (printed.out + printed.err).splitlines()
             if ln.startswith("note:") and "lithology" in ln]
    assert len(notes) == 1, notes  # the CLI shows the warning once, as a note
    assert "UserWarning" not in printed.err
    assert "lithology" not in json.loads((out / "metrics.json").read_text())["factors"]


def test_finetune_errors(source_run: Path, demo_dir: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    target = str(demo_dir / "demo-target.yaml")
    rc = main(["finetune", "--target", target, "--from", str(source_run), "--shots", "5000",
               "--out", str(tmp_path / "a"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--shots 5000" in err and "error:" in err
    rc = main(["finetune", "--target", target, "--from", str(tmp_path / "nope"), "-q"])
    assert rc == 2 and "no such run folder" in capsys.readouterr().err
    spec = _variant(demo_dir, tmp_path, lambda s: [s["factors"].pop(k) for k in
                                                   ("elevation", "ndvi", "rainfall")]
                    and s.pop("derive") and s["factors"]["lithology"].pop("categories"))
    rc = main(["finetune", "--target", str(spec), "--from", str(source_run), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "no factor in common" in err and "legends cannot be matched" in err


def test_tampered_artifact_is_refused(source_run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(source_run, bad)
    f = bad / "model" / "xgb" / "model.ubj"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    rc = main(["predict", "--run", str(bad), "-q"])
    assert rc == 2 and "checksum" in capsys.readouterr().err


def test_prevalence_correction_reported(source_run: Path, demo_dir: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "10", "--repeats", "1", "--model", "lr",
               "--prevalence", "0.05", "--out", str(out), "-q", "--no-explain"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    arm = m["models"]["lr"]["stage2"]
    assert "log_loss_uncorrected" in arm and arm["log_loss"] != arm["log_loss_uncorrected"]
    zones = json.loads(next((out / "maps").glob("*_zones.json")).read_text())
    assert zones["prevalence"] == 0.05
    with rasterio.open(zones["probability"]) as src:
        a = src.read(1)
    # prior shift to 5 % prevalence: the map's mean probability drops well below 0.5
    assert np.nanmean(a) < 0.2


def test_norm_override_repretrains_with_that_norm(source_run: Path, demo_dir: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "10", "--repeats", "1", "--model", "lr", "--norm",
               "none", "--out", str(out), "-q", "--no-predict", "--no-explain"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["norm"] == "none" and m["source_retrained"] is True
    assert json.loads((out / "model.json").read_text())["norm"] == "none"


def test_predict_with_thresholds_updates_the_report(source_run: Path, demo_dir: Path,
                                                    tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    rc = main(["predict", "--run", str(run), "--thresholds", "0.1,0.3,0.5,0.7", "-q"])
    assert rc == 0
    report = (run / "report.md").read_text()
    assert "0.100, 0.300, 0.500, 0.700 (user)" in report
    rc = main(["predict", "--run", str(run), "--thresholds", "0.5,0.3,0.6,0.7", "-q"])
    assert rc != 0


def test_bad_options_are_one_line_errors(demo_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    src = str(demo_dir / "demo-source.yaml")
    if not torch.cuda.is_available():
        assert main(["fit", "--source", src, "--device", "cuda", "-q"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert main(["fit", "--source", src, "--norm", "bogus", "-q"]) == 2
    assert "norm" in capsys.readouterr().err


def test_shap_maps_of_finetuned_xgb_add_up_to_the_margin(finetune_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    """Fine-tuned trees have nodes no shot reached: the maps must still hold real values."""
    import shutil

    import xgboost as xgb

    from lsm.explain.shap_values import pixel_contributions
    from lsm.workflows.outputs import _table_and_matrix

    run_dir = tmp_path / "run"
    shutil.copytree(finetune_run, run_dir)
    rc = main(["explain", "--run", str(run_dir), "--shap-maps", "--model", "xgb", "--top", "2",
               "-q"])
    assert rc == 0, capsys.readouterr().err
    maps = sorted((run_dir / "maps").glob("demo-target_xgb_shap_*.tif"))
    assert len(maps) == 2
    run = load_run(run_dir)
    model = run.models["xgb"]
    table, X = _table_and_matrix(run)
    c = pixel_contributions(model, X, X)
    margin = model.booster_.predict(xgb.DMatrix(X.to_numpy(dtype=np.float32), missing=np.nan),
                                    output_margin=True)
    np.testing.assert_allclose(c.sum(axis=1) + c.attrs["base_value"], margin, atol=1e-4)
    assert c.attrs["units"] == "log-odds"
    for path in maps:
        factor = path.stem.split("_shap_")[1]
        with rasterio.open(path) as src:
            a = src.read(1)
            assert src.descriptions[0] == f"SHAP contribution of {factor} (log-odds)"
            assert src.units[0] == "log-odds"
            assert src.tags()["FACTOR"] == factor
        valid = a[np.isfinite(a)]
        assert valid.size > 0 and np.abs(valid).max() > 1e-3  # not all zero
        at_rows = a[table["row"].to_numpy(), table["col"].to_numpy()]
        np.testing.assert_allclose(at_rows, c[factor], rtol=1e-4, atol=1e-5)
