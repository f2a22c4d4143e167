"""Verdicts a reader can quote (issue 16, item 3).

- "better" only where the paired 95 % interval of the metric named excludes 0 (and the
  difference is not a rounding +0.000);
- the best arm on the test set is named whenever it is not the delivered model;
- ``--shots all`` has no "paired differences" header with "no paired baselines" under it,
  and shows the target-only nested-CV figure on the same folds where the run has one;
- one repeat prints no intervals (no ``± 0.000``, no ``[+nan, +nan]``).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lsm.cli import main
from lsm.workflows import verdict as V
from lsm.workflows.report import print_finetune_metrics
from lsm.workflows.report_md import _verdict_section
from lsm.workflows.verdict import verdict_line, verdicts

NAN = float("nan")


def _d(mean: float, lo: float, hi: float) -> dict[str, float]:
    return {"mean_diff": mean, "ci95_low": lo, "ci95_high": hi, "win_rate": 0.5,
            "wilcoxon_p": 0.5}


def _s(auc: float, ll: float = 0.55, std: float = 0.02) -> dict[str, dict[str, float]]:
    return {k: {"mean": v, "std": std} for k, v in
            (("auc", auc), ("log_loss", ll), ("brier", 0.2), ("accuracy", 0.7))}


def _study(repeats: int = 5) -> dict:
    """Hong Kong -> Ecuador as the issue saw it: lr target_only 0.771 beat delivered 0.749;
    on Yushan the delivered-vs-target_only verdict rested on a prior-corrected
    Δlog-loss of -0.002 while ΔAUC spanned 0; xgb stage 2 'better' by ΔAUC +0.000."""
    return {
        "mode": "study", "source_region": "hongkong", "target": "ecuador", "shots": 50,
        "repeats": repeats, "test_size": 70, "split": "spatial", "norm": "target",
        "models": {
            "lsm": {"source_only": _s(0.70), "target_only": _s(0.76),
                    "delivered": _s(0.749)},
            "lr": {"source_only": _s(0.70), "target_only": _s(0.771), "stage2": _s(0.75)},
            "xgb": {"source_only": _s(0.65), "target_only": _s(0.70), "stage2": _s(0.7002)},
        },
        "paired": {
            "lsm: delivered - target_only": {
                "auc": _d(-0.011, -0.04, 0.02), "log_loss": _d(0.01, -0.02, 0.04),
                "log_loss_prior_corrected": _d(-0.002, -0.003, -0.001)},
            "lsm: delivered - source_only": {"auc": _d(0.05, 0.02, 0.08),
                                             "log_loss": _d(-0.05, -0.08, -0.02)},
            "xgb: stage2 - target_only": {"auc": _d(0.0002, 0.0001, 0.0003),
                                          "log_loss": _d(0.0, -0.01, 0.01)},
        },
    }


def test_better_only_where_the_interval_of_the_metric_named_excludes_zero() -> None:
    v = {x["row"]: x for x in verdicts(_study())}
    word = v["lsm"]["vs"]["target_only"]["word"]
    assert word != "better"  # ΔAUC spans 0: the log-loss alone makes no overall "better"
    assert word.startswith("better on log-loss (prior-corr.) only")
    assert "AUC no clear difference" in word
    line = verdict_line(v["lsm"])
    assert "vs target_only better on log-loss (prior-corr.) only" in line
    assert "vs source_only better (ΔAUC +0.050" in line  # both intervals exclude 0
    # an interval that excludes 0 around a difference that prints as +0.000 is no claim
    assert v["xgb"]["vs"]["target_only"]["word"] == "no clear difference"
    assert "better" not in verdict_line(v["xgb"])


def test_old_stored_verdicts_are_reworded_from_their_intervals() -> None:
    """metrics.json of earlier runs stores word 'better'; the printed line recomputes it."""
    v = verdicts(_study())[0]
    v["vs"]["target_only"]["word"] = "better"
    assert "vs target_only better (" not in verdict_line(v)


def test_the_best_arm_is_named_when_it_is_not_the_delivered_one() -> None:
    m = _study()
    msg = V.beaten_by(m)
    assert msg is not None and msg.startswith("lr target_only 0.771 beat delivered 0.749 "
                                              "on this test set")
    con = _console()
    print_finetune_metrics(m, con)
    out = con.file.getvalue()
    assert "lr target_only 0.771 beat delivered 0.749 on this test set" in out
    assert "lr target_only 0.771 beat delivered 0.749" in "\n".join(_verdict_section(m))
    # the delivered model best: nothing to name
    m["models"]["lsm"]["delivered"] = _s(0.80)
    assert V.beaten_by(m) is None


def _production(with_fit: bool) -> dict:
    m = {"mode": "production", "source_region": "hongkong", "target": "ecuador",
         "shots": "all", "n": 350, "n_landslides": 175, "split": "5-fold spatial block "
         "cross-validation", "norm": "target",
         "models": {"lr": {"source_only": _s(0.70)}, "rf": {"source_only": _s(0.72)},
                    "lsm": {"delivered": _s(0.800, 0.566)}}}
    if with_fit:
        m["production"] = {"target_only_cv": {"rf": {"auc": {"mean": 0.822},
                                                     "log_loss": {"mean": 0.526}},
                                              "lr": {"auc": {"mean": 0.79},
                                                     "log_loss": {"mean": 0.55}},
                                              "best": "rf"}}
    return m


@pytest.mark.parametrize("with_fit", [False, True])
def test_shots_all_says_no_paired_header_and_shows_the_target_only_figure(
        with_fit: bool) -> None:
    m = _production(with_fit)
    section = "\n".join(_verdict_section(m))
    assert "paired differences" not in section
    assert "no paired baselines" not in section
    con = _console()
    print_finetune_metrics(m, con)
    out = con.file.getvalue()
    assert "no paired baselines" not in out
    line = verdict_line(verdicts(m)[0])
    assert "delivered 0.800" in line and "nested" in line
    assert "source only (rf" in line
    if with_fit:
        assert "target-only fit (rf) 0.822 AUC" in line and "same folds" in line
        assert "behind by 0.022" in line
        assert "rf target-only fit 0.822 beat delivered 0.800" in out
    else:
        assert "no target-only nested-CV figure on the same folds" in line


def test_the_fit_cv_key_of_the_deliver_branch_is_read_too() -> None:
    m = _production(True)
    m["production"] = {"fit_cv": m["production"]["target_only_cv"]}
    assert "target-only fit (rf) 0.822" in verdict_line(verdicts(m)[0])


def _one_repeat() -> dict:
    m = _study(repeats=1)
    for arms in m["models"].values():
        for s in arms.values():
            for v in s.values():
                v["std"] = 0.0
    for d in m["paired"].values():
        for v in d.values():
            v.update(ci95_low=NAN, ci95_high=NAN, wilcoxon_p=NAN)
    return m


def test_one_repeat_prints_no_intervals() -> None:
    m = _one_repeat()
    con = _console()
    print_finetune_metrics(m, con)
    out = con.file.getvalue()
    assert "±" not in out and "nan" not in out.lower(), out
    section = "\n".join(_verdict_section(m))
    assert "nan" not in section.lower() and "±" not in section
    assert "no interval" in section
    assert "better" not in section and "worse" not in section


def _console():  # noqa: ANN202
    from rich.console import Console

    return Console(file=io.StringIO(), width=400, color_system=None)


@pytest.fixture(scope="module")
def source_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "src"
    assert main(["fit", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
                 "--out", str(out), "--no-cv", "--no-explain", "--no-predict", "-q"]) == 0
    return out


def test_cli_one_repeat_run_prints_and_reports_no_intervals(
        source_run: Path, demo_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ft"
    rc = main(["finetune", "--target", str(demo_dir / "demo-target.yaml"), "--from",
               str(source_run), "--shots", "15", "--repeats", "1", "--out", str(out),
               "--no-explain", "-q"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "± 0.000" not in cap.out and "nan" not in cap.out.lower(), cap.out
    report = (out / "report.md").read_text()
    assert "± 0.000" not in report and "+nan" not in report
    assert "no interval" in report
