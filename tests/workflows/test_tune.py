"""``lsm tune`` (Optuna study resumed from SQLite) and ``lsm fit --params``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lsm.cli import main
from lsm.config.params import load_params, validate_params
from lsm.errors import SpecError


def _n_trials(db: Path, study: str) -> int:
    import optuna

    return len(optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials)


@pytest.fixture(scope="module")
def tuned(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two calls of 2 trials each on one folder: the second resumes the first's study."""
    out = tmp_path_factory.mktemp("tune") / "t"
    args = ["tune", "--source", str(demo_dir / "demo-source.yaml"), "--model", "xgb",
            "--trials", "2", "--out", str(out), "-q"]
    assert main(args) == 0
    first = _n_trials(out / "study.db", "demo-source-xgb")
    assert main(args) == 0
    return {"out": out, "first": first, "source": demo_dir / "demo-source.yaml"}


def test_tune_resumes_the_sqlite_study(tuned: dict[str, Any]) -> None:
    out = tuned["out"]
    assert tuned["first"] == 2
    assert _n_trials(out / "study.db", "demo-source-xgb") == 4
    s = json.loads((out / "tune_xgb.json").read_text())
    assert s["n_trials"] == 4 and s["n_new"] == 2
    # trial 0 is the family's defaults, scored like every other trial
    assert s["default"]["number"] == 0
    assert s["default"]["params"]["max_depth"] == 4
    assert s["best"]["log_loss"] <= s["default"]["log_loss"]
    # the second call proposed new points, not the first call's again
    params = [json.dumps(t["params"], sort_keys=True) for t in s["trials"]]
    assert len(set(params)) == len(params)


def test_fit_params_uses_the_tuned_parameters(tuned: dict[str, Any],
                                              tmp_path: Path) -> None:
    out = tuned["out"]
    best = yaml.safe_load((out / "best_params.yaml").read_text())["xgb"]
    run = tmp_path / "fit"
    assert main(["fit", "--source", str(tuned["source"]), "--model", "xgb", "--params",
                 str(out), "--out", str(run), "--no-predict", "--no-explain", "-q"]) == 0
    saved = json.loads((run / "model" / "xgb" / "meta.json").read_text())["params"]
    assert {k: saved[k] for k in best} == best
    # same folds, same seed, same parameters: fit's CV is the best trial's score
    summary = json.loads((out / "tune_xgb.json").read_text())["best"]
    cv = json.loads((run / "metrics.json").read_text())["cv"]["xgb"]["summary"]
    assert cv["log_loss"]["mean"] == pytest.approx(summary["log_loss"], rel=1e-9)
    assert cv["auc"]["mean"] == pytest.approx(summary["auc"], rel=1e-9)


def test_tune_refuses_another_study_setup(tuned: dict[str, Any], capsys: Any) -> None:
    rc = main(["tune", "--source", str(tuned["source"]), "--model", "xgb", "--trials", "1",
               "--norm", "none", "--out", str(tuned["out"]), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "norm" in err and len(err.strip().splitlines()) == 1


def test_tune_other_family_same_folder_merges_best_params(demo_dir: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "t"
    src = str(demo_dir / "demo-source.yaml")
    for fam in ("lr", "rf"):
        assert main(["tune", "--source", src, "--model", fam, "--trials", "1", "--out",
                     str(out), "-q"]) == 0
    best = load_params(out)
    assert set(best) == {"lr", "rf"}
    assert best["lr"] == {"C": 1.0, "class_weight": None}  # trial 0: the defaults


@pytest.mark.parametrize("family", ["rf", "lr", "xgb", "mlp"])
def test_every_family_settable_from_a_file(family: str, tmp_path: Path) -> None:
    from lsm.models.base import get_family
    from lsm.workflows.fit import make_model

    value = {"rf": {"min_samples_leaf": 7, "max_features": 0.5, "max_depth": None},
             "lr": {"C": 0.25, "class_weight": "balanced"},
             "xgb": {"max_depth": 3, "learning_rate": 0.1, "n_estimators": 50},
             "mlp": {"hidden_layer_sizes": [16, 8], "dropout": 0.2}}[family]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({family: value}))
    params = load_params(path)[family]
    model = make_model(family, seed=3, params=params)
    got = model.get_params()
    for k, v in value.items():
        assert got[k] == (tuple(v) if isinstance(v, list) else v)
    assert got["random_state"] == 3
    assert isinstance(model, get_family(family))


@pytest.mark.parametrize(("raw", "needle"), [
    ({"xgbb": {"max_depth": 3}}, "xgbb: unknown model family (did you mean 'xgb'?)"),
    ({"xgb": {"max_dept": 3}}, "xgb.max_dept: unknown parameter (did you mean 'max_depth'?)"),
    ({"rf": {"random_state": 1}}, "rf.random_state: set by --seed"),
    ({"mlp": {"device": "cuda"}}, "mlp.device: set by --device"),
    ({"xgb": {"max_depth": "deep"}}, "xgb.max_depth: "),
    ({"lr": [1, 2]}, "lr: expected a mapping"),
    ([1], "expected a mapping of model family"),
])
def test_bad_parameter_file_is_one_line(raw: Any, needle: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_params(raw, source="p.yaml")
    msg = str(err.value)
    assert msg.startswith("p.yaml: ") and needle in msg and "\n" not in msg


def test_fit_params_errors_through_the_cli(demo_dir: Path, tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("xgb: {max_dept: 3}\n")
    src = str(demo_dir / "demo-source.yaml")
    assert main(["fit", "--source", src, "--params", str(bad), "-q"]) == 2
    assert "xgb.max_dept: unknown parameter" in capsys.readouterr().err
    empty = tmp_path / "not-a-tune-run"
    empty.mkdir()
    assert main(["fit", "--source", src, "--params", str(empty), "-q"]) == 2
    assert "best_params.yaml" in capsys.readouterr().err
