"""Zone tables and probabilities a planner can quote (issue 16, items 1 and 2).

- Zone tables (zones.json, the report, the console) split the landslides the map model
  never saw (a prediction rate: skill) from those it was trained on (a success rate);
  with ``--shots all`` every table says it is a success rate and names the nested-CV skill.
- Every probability output says which landslide share (base rate) it carries; a table
  region whose landslide share is known (every unit listed) gets corrected probabilities
  by default.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lsm.cli import main
from lsm.mapping.zones import zone_statistics
from lsm.workflows.predict import unit_zone_statistics


def test_zone_statistics_split_heldout_from_seen_landslides() -> None:
    zones = np.array([[1, 2, 3, 4, 5],
                      [5, 5, 4, 0, 1]], dtype=np.uint8)
    rows = np.array([0, 0, 1, 1, 1, 0, 1])
    cols = np.array([4, 3, 0, 1, 3, 0, 2])  # zones 5, 4, 5, 5, nodata, 1, 4
    seen = np.array([True, True, True, False, False, False, False])
    t = zone_statistics(zones, rows, cols, seen=seen)
    assert t["n_landslides"].tolist() == [1, 0, 0, 2, 3]  # all six in valid zones
    assert t["n_seen"].tolist() == [0, 0, 0, 1, 2]
    assert t["n_heldout"].tolist() == [1, 0, 0, 1, 1]  # the nodata one is not counted
    assert t["heldout_share"].sum() == pytest.approx(1.0)
    assert t["seen_share"].sum() == pytest.approx(1.0)
    # zone 5: 3 of 9 valid pixels; 1 of 3 counted held-out landslides
    assert t.loc[5, "heldout_density_ratio"] == pytest.approx((1 / 3) / (3 / 9))
    assert t.loc[5, "seen_density_ratio"] == pytest.approx((2 / 3) / (3 / 9))
    with pytest.raises(ValueError, match="seen has 2 flags for 7 landslides"):
        zone_statistics(zones, rows, cols, seen=[True, False])


def test_unit_zone_statistics_split() -> None:
    z = np.array([1, 1, 2, 3, 4, 5, 5, 5])
    landslide = np.array([0, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    t = unit_zone_statistics(z, landslide, seen=np.array([True, False, True, False, False]))
    assert t["n_landslides"].tolist() == [1, 0, 0, 1, 3]
    assert t["n_seen"].tolist() == [1, 0, 0, 0, 1]
    assert t["n_heldout"].tolist() == [0, 0, 0, 1, 2]


@pytest.fixture(scope="module")
def source_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "src"
    assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
                 "--factors", "elevation,rainfall,ndvi,slope,aspect,curvature",
                 "--out", str(out), "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    return out


def _zones_json(run: Path) -> dict:
    return json.loads(next((run / "maps").glob("*_delivered_zones.json")).read_text())


def test_fine_tune_zone_tables_tell_held_out_from_trained_landslides(
        source_run: Path, demo_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ft"
    assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                 str(source_run), "--shots", "15", "--repeats", "2", "--out", str(out),
                 "--no-explain", "-q"]) == 0
    z = _zones_json(out)
    rates = z["zone_rates"]
    test = pd.read_parquet(out / "test_predictions.parquet")
    assert rates["basis"] == "prediction"
    assert rates["n_heldout"] == z["n_unseen_landslides"] <= int(test["label"].sum())
    assert rates["n_seen"] == z["n_seen_landslides"] > 0
    table = pd.DataFrame(z["zone_statistics"])
    assert table["n_heldout"].sum() == rates["n_heldout"]
    assert (table["n_heldout"] + table["n_seen"] == table["n_landslides"]).all()
    # every probability output says which base rate it carries
    assert "50%" in z["base_rate"]["text"] and "--prevalence" in z["base_rate"]["text"]
    import rasterio

    with rasterio.open(z["probability"] if Path(z["probability"]).is_absolute()
                       else Path.cwd() / z["probability"]) as src:
        assert "landslide share" in src.descriptions[0]
        assert float(src.tags()["PREVALENCE"]) == pytest.approx(0.5)
    report = (out / "report.md").read_text()
    assert "held-out landslides (prediction rate)" in report
    assert "all landslides (success rate)" in report
    assert "Base rate: P assumes a 50% landslide share" in report
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--uncertainty", "0"]) == 0
    con = capsys.readouterr().out
    assert "held-out landslides (prediction rate)" in con
    assert f"{rates['n_seen']} it was" in " ".join(con.split())  # caption: how many trained
    assert "P assumes a 50% landslide share" in " ".join(con.split())


def test_shots_all_zone_tables_are_success_rates_with_the_nested_cv_skill(
        source_run: Path, demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    assert main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
                 str(source_run), "--shots", "all", "--out", str(out), "--no-explain",
                 "-q"]) == 0
    z = _zones_json(out)
    rates = z["zone_rates"]
    assert rates["basis"] == "success" and rates["n_heldout"] == 0 and rates["n_seen"] > 0
    assert "success rate only" in rates["text"] and "nested-CV AUC" in rates["text"]
    report = (out / "report.md").read_text()
    assert "landslides trained on (success rate)" in report
    assert "prediction rate" not in report.split("## Susceptibility map")[1].split(
        "![rate curves]")[0]


def _imbalanced_table(demo_dir: Path, folder: Path) -> tuple[Path, float]:
    """The demo target's points as a table region that lists 1 landslide per 8 others."""
    from lsm.config.spec import load_region
    from lsm.workflows.region import load_region_data

    data = load_region_data(load_region(demo_dir / "demo-target.yaml"), progress=False)
    t = data.table
    factors = ["elevation", "rainfall", "ndvi", "slope", "aspect", "curvature"]
    pos = t.index[t["label"] == 1]
    keep = t.index[t["label"] == 0].union(pos[::8])
    df = t.loc[keep, ["x", "y", *factors]].copy()
    df["landslide"] = t.loc[keep, "label"].to_numpy()
    df.to_csv(folder / "units.csv", index=False)
    spec = {"name": "units", "crs": "EPSG:32617",
            "samples": {"path": "units.csv", "label": "landslide", "x": "x", "y": "y"},
            "factors": {f: {"column": f} for f in factors}}
    p = folder / "units.yaml"
    p.write_text(yaml.safe_dump(spec, sort_keys=False))
    return p, float(df["landslide"].mean())


def test_table_region_with_a_known_landslide_share_gets_corrected_probabilities(
        source_run: Path, demo_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from lsm.transfer.prior import prior_shift
    from lsm.workflows.runs import load_run

    spec, share = _imbalanced_table(demo_dir, tmp_path)
    assert share < 0.2
    train = float(load_run(source_run).meta["training_prevalence"])
    capsys.readouterr()
    assert main(["predict", "--run", str(source_run), "--region", str(spec), "--out",
                 str(tmp_path / "corr"), "--uncertainty", "0"]) == 0
    con = " ".join(capsys.readouterr().out.split())
    assert "P corrected to" in con and "the table's landslide share" in con
    z = json.loads(next((tmp_path / "corr").glob("*_zones.json")).read_text())
    assert z["base_rate"]["source"] == "table"
    assert z["base_rate"]["carried"] == pytest.approx(share)
    corr = pd.read_parquet(next((tmp_path / "corr").glob("*_units.parquet")))
    assert corr["base_rate"].to_numpy() == pytest.approx(share)
    # the same model at the training share (--prevalence = training share: no shift)
    assert main(["predict", "--run", str(source_run), "--region", str(spec), "--out",
                 str(tmp_path / "raw"), "--uncertainty", "0", "--prevalence",
                 str(train), "-q"]) == 0
    raw = pd.read_parquet(next((tmp_path / "raw").glob("*_units.parquet")))
    np.testing.assert_allclose(corr["probability"],
                               prior_shift(raw["probability"].to_numpy(), train, share),
                               rtol=1e-6, atol=1e-9)
    assert corr["probability"].mean() < raw["probability"].mean()
    # the ranking (and the quantile zones) do not change
    assert (corr["zone"] == raw["zone"]).all()


def _captured_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    from lsm.evaluate import figures

    figs: list = []
    real = figures.save_figure

    def keep(fig, path):  # noqa: ANN001, ANN202
        figs.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    return figs


def test_reliability_figure_shows_delivered_and_best_other_with_counts_outside_legend(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's figure: 9 curves from 107 points, legend over the data, P of an imbalanced
    target drawn at the 50 % base rate of the shots."""
    from lsm.evaluate.figures import plot_reliability
    from lsm.transfer.prior import prior_shift
    from lsm.workflows.outputs import _reliability_curves

    rng = np.random.default_rng(0)
    y = (rng.uniform(size=400) < 0.05).astype(int)
    curves = {"delivered (map model)": (y, np.clip(0.3 + 0.4 * y + rng.normal(0, .1, 400),
                                                   0.01, 0.99))}
    for i in range(8):
        curves[f"fam{i} stage2"] = (y, np.clip(0.5 + (0.05 * i) * (2 * y - 1)
                                               + rng.normal(0, .1, 400), 0.01, 0.99))
    metrics = {"mode": "study", "prevalence": None, "pool_prevalence": 0.05}
    rel, note = _reliability_curves(curves, metrics)
    assert len(rel) == 2
    assert list(rel)[0] == "delivered (map model)"
    assert list(rel)[1] == "fam7 stage2 (best other by log-loss here)"
    np.testing.assert_allclose(rel["delivered (map model)"][1],
                               prior_shift(curves["delivered (map model)"][1], 0.5, 0.05))
    assert "5.0%" in note and "not the test labels" in note
    figs = _captured_figures(monkeypatch)
    plot_reliability(rel, tmp_path / "rel.png", "t", note=note)
    fig = figs[-1]
    ax = fig.axes[0]
    assert ax.get_legend() is None and len(fig.legends) == 1  # legend off the axes
    counts = [t.get_text() for t in ax.texts]
    assert counts and all(c.isdigit() for c in counts)  # points per bin on every marker
    assert sum(int(c) for c in counts) == 2 * 400


def test_arms_figure_has_no_na_labels_for_arms_a_row_does_not_have(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lsm.evaluate.figures import plot_arms

    s = {"auc": {"mean": 0.8, "std": 0.0}, "log_loss": {"mean": 0.5, "std": 0.0}}
    m = {"repeats": 1, "models": {"lr": {"source_only": s, "target_only": s, "stage1": s,
                                         "stage2": s},
                                  "lsm": {"source_only": s, "target_only": s,
                                          "delivered": s}}}
    figs = _captured_figures(monkeypatch)
    plot_arms(m, tmp_path / "arms.png")
    fig = figs[-1]
    assert not [t for ax in fig.axes for t in ax.texts if t.get_text() == "n/a"]
    assert "one repeat, no spread" in fig._suptitle.get_text()


# ---------------------------------------------------------------- real data (skipped when
# ../shared/data is absent)
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

@pytest.fixture(scope="module")
def real_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} does not exist")
    out = tmp_path_factory.mktemp("real") / "hk"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSM_DATA_DIR", str(SHARED_DATA))
        assert main(["fit", "--source", "hongkong", "--model", "lr", "--out", str(out),
                     "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    return out


def _real_finetune(src: Path, target: str, out: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    monkeypatch.setenv("LSM_DATA_DIR", str(SHARED_DATA))
    capsys.readouterr()
    assert main(["finetune", "--target", target, "--from", str(src), "--shots", "50",
                 "--repeats", "2", "--out", str(out), "--no-explain"]) == 0
    return _zones_json(out), " ".join(capsys.readouterr().out.split())


def test_real_ecuador_zone_table_counts_only_held_out_landslides_as_skill(
        real_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Hong Kong -> Ecuador, K = 50: the delivered map model trained on 123 of the 175
    landslides; the issue's table counted all 175 as if they were skill."""
    z, con = _real_finetune(real_source, "ecuador", tmp_path / "ec", monkeypatch, capsys)
    rates = z["zone_rates"]
    assert rates["basis"] == "prediction"
    assert rates["n_heldout"] + rates["n_seen"] == 175
    assert rates["n_seen"] == z["n_seen_landslides"] == 123
    table = pd.DataFrame(z["zone_statistics"])
    assert table["n_heldout"].sum() == rates["n_heldout"] == 52
    assert "52 held-out landslide pixels the map model never saw" in con
    assert "P assumes a 50% landslide share" in con
    report = (tmp_path / "ec" / "report.md").read_text()
    assert "held-out landslides (prediction rate)" in report


def test_real_yushan_units_carry_the_table_landslide_share(
        real_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Yushan: 2.3 % of units are landslides; the issue saw a mean unit P of 0.345."""
    z, con = _real_finetune(real_source, "jiangxi-yushan", tmp_path / "yu", monkeypatch,
                            capsys)
    assert z["base_rate"]["source"] == "table"
    assert z["base_rate"]["carried"] == pytest.approx(175 / 7598)
    units = pd.read_parquet(next((tmp_path / "yu" / "maps").glob("*_units.parquet")))
    assert units["probability"].mean() < 0.05
    assert "P corrected to 2.3%, the table's landslide share (175 of 7,598 units)" in con
    assert z["zone_rates"]["n_heldout"] > 0 and z["zone_rates"]["n_seen"] > 0
