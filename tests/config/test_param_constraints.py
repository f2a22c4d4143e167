"""Parameter files are checked by each family's own constraints before anything is fitted;
parameters of a family the fit does not train get a note; a family whose cross-validated
AUC is at chance gets a warning line; other values read at a boundary (JSON nesting, a
table's columns) give one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lsm.cli import main
from lsm.config.params import load_params, validate_params
from lsm.errors import ArtifactError, DataError, FactorMismatchError, SpecError

BAD_PARAMS = {
    "lr-negative-C": ("lr", "C", "-1", r"lr\.C: -1\.0 must be a float in the range \(0\.0"),
    "lr-nan-C": ("lr", "C", ".nan", r"lr\.C: nan must be"),
    "lr-zero-max-iter-ok-but-negative": ("lr", "max_iter", "-3", r"lr\.max_iter: -3 must"),
    "mlp-zero-layer": ("mlp", "hidden_layer_sizes", "[0]",
                       r"mlp\.hidden_layer_sizes: \(0,\) must be a list of layer widths"),
    "mlp-zero-learning-rate": ("mlp", "learning_rate", "0", r"mlp\.learning_rate: 0\.0 must"),
    "mlp-dropout-1": ("mlp", "dropout", "1.0", r"mlp\.dropout: 1\.0 must"),
    "rf-bad-max-features": ("rf", "max_features", "most",
                            r"rf\.max_features: 'most' must be"),
    "rf-depth-0": ("rf", "max_depth", "0", r"rf\.max_depth: 0 must be an int in the range"),
    "rf-inf-leaf": ("rf", "min_samples_leaf", ".inf", r"rf\.min_samples_leaf: .*\binf\b"),
    "xgb-learning-rate-0": ("xgb", "learning_rate", "0", r"xgb\.learning_rate: 0\.0 must"),
    "xgb-subsample-2": ("xgb", "subsample", "2", r"xgb\.subsample: 2\.0 must"),
    "xgb-depth-0": ("xgb", "max_depth", "0", r"xgb\.max_depth: 0 must"),
    "xgb-tree-method": ("xgb", "tree_method", "gpu_hist", r"xgb\.tree_method: 'gpu_hist'"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS))
def test_invalid_value_is_one_line_naming_file_family_key_value(case: str,
                                                                  tmp_path: Path) -> None:
    fam, key, value, pattern = BAD_PARAMS[case]
    p = tmp_path / "params.yaml"
    p.write_text(f"{fam}:\n  {key}: {value}\n")
    with pytest.raises(SpecError) as info:
        load_params(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(p)), msg
    assert re.search(pattern, msg), msg


def test_valid_values_pass_unchanged() -> None:
    raw = {"lr": {"C": 0.5}, "rf": {"max_features": 0.5, "max_depth": None},
           "xgb": {"learning_rate": 1.0, "subsample": 1.0},
           "mlp": {"hidden_layer_sizes": [8, 4], "dropout": 0.0}}
    out = validate_params(raw, source="p.yaml")
    assert out["mlp"]["hidden_layer_sizes"] == (8, 4) and out["rf"]["max_depth"] is None


def test_cli_fit_refuses_before_fitting(tmp_path: Path, demo_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``lsm fit --params`` with ``C: -1``: exit 2, one error line, no run folder."""
    p = tmp_path / "params.yaml"
    p.write_text("lr:\n  C: -1\n")
    rc = main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
               "--params", str(p), "--out", str(tmp_path / "run"), "--no-cv", "--no-explain",
               "--no-predict", "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "internal error" not in err, err
    assert re.search(r"params\.yaml: lr\.C: -1\.0 must be", " ".join(err.split())), err
    assert not (tmp_path / "run").exists()


def test_parameters_of_a_family_not_fitted_get_a_note() -> None:
    from lsm.config.run import FitConfig

    with pytest.warns(UserWarning, match=r"parameters of xgb are not used: this fit trains "
                                         r"lr"):
        FitConfig(source="demo-source", models=["lr"], params={"xgb": {"max_depth": 3}})


def test_meta_json_parameters_are_checked_on_load(tmp_path: Path) -> None:
    """The same constraints guard a saved model's ``meta.json`` (checksums recomputed)."""
    from lsm.io.artifacts import write_manifest
    from lsm.models.lr import LogisticModel

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    d = tmp_path / "lr"
    LogisticModel().fit(X, y).save(d)
    meta = json.loads((d / "meta.json").read_text())
    meta["params"]["C"] = -1
    (d / "meta.json").write_text(json.dumps(meta))
    write_manifest(d, [d / "meta.json", d / "coef.json"])
    with pytest.raises(ArtifactError, match=r"meta\.json: params\.C: -1 must be a float"):
        LogisticModel.load(d)


def test_weak_cv_auc_is_a_warning_line(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from lsm.workflows.fit import weak_skill
    from lsm.workflows.report import print_fit_metrics

    def cv(auc: float) -> dict:
        s = {k: {"mean": auc, "std": 0.0} for k in ("auc", "log_loss", "brier", "accuracy")}
        return {"summary": s, "folds": []}

    warned = weak_skill({"lr": cv(0.5), "rf": cv(0.8), "xgb": cv(float("nan"))},
                        {"lr": {"C": 1e-300}})
    assert len(warned) == 2
    assert warned[0].startswith("lr: cross-validated AUC 0.500 <= 0.55") and "1e-300" in warned[0]
    assert warned[1].startswith("xgb: cross-validated AUC undefined")
    console = Console(width=300)
    print_fit_metrics({"region": "r", "n_folds": 5, "split": "spatial", "n": 10,
                       "cv": {"lr": cv(0.5)}, "warnings": warned[:1]}, console)
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if ln.startswith("warning: lr: cross-validated AUC")]


def test_json_nesting_bomb_is_one_line(tmp_path: Path) -> None:
    from lsm.io.artifacts import read_json

    p = tmp_path / "model.json"
    p.write_text("[" * 500_000 + "]" * 500_000)
    with pytest.raises(ArtifactError, match=r"model\.json: JSON nested 500000 levels deep"):
        read_json(p)
    p.write_text(json.dumps({"a": "[" * 100 + '"' + "{" * 100}))  # an escaped quote
    assert read_json(p) == {"a": "[" * 100 + '"' + "{" * 100}  # strings do not count


def test_duplicate_columns_in_a_table_are_one_line(tmp_path: Path) -> None:
    from lsm.io.readers import read_table

    csv = tmp_path / "points.csv"
    csv.write_text("slope,elevation,slope\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"points\.csv: column 'slope' appears more than once"):
        read_table(csv)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([[1.0], [2.0]], names=["slope", "slope"]), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet: column 'slope' appears more than once"):
        read_table(tmp_path / "t.parquet")


def test_duplicate_factor_columns_in_a_frame_are_one_line() -> None:
    from lsm.stack.features import FeatureSchema, design_matrix

    schema = FeatureSchema(["slope", "rock"], {"slope": "continuous", "rock": "categorical"},
                           {"rock": ["a", "b"]})
    df = pd.DataFrame([[1.0, "a", "b"]], columns=["slope", "rock", "rock"])
    with pytest.raises(FactorMismatchError, match="'rock' appears more than once"):
        design_matrix(df, schema, norm="none")
