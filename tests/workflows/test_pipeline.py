"""``lsm run``: pipeline validation, the demo pipeline end to end, resume after a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from lsm.cli import main
from lsm.config.pipeline import load_pipeline, parse_pipeline, pipeline_template
from lsm.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("study, key, words", [
    ({"kind": "shots", "sourc": "hongkong", "targets": ["ecuador"]}, "studies.0.sourc",
     "did you mean 'source'"),
    ({"kind": "shots", "source": "hongkong", "targets": ["jiangxi-yusan"]},
     "studies.0.targets.0", "did you mean 'jiangxi-yushan'"),
    ({"kind": "shots", "source": "hongkong", "targets": ["ecuador"], "shots": [0]},
     "studies.0.shots.0", "greater than or equal to 1"),
    ({"kind": "progressive", "chain": ["hongkong", "ecuador"]}, "studies.0.chain",
     "at least 3"),
    ({"kind": "source_scale", "source": "hongkong", "target": "ecuador",
      "fractions": [0.5, 1.5]}, "studies.0.fractions.1", "less than or equal to 1"),
    ({"kind": "shot", "source": "hongkong"}, "studies.0", "'shots'"),
])
def test_invalid_pipeline_one_line_error(tmp_path: Path, study: dict[str, Any], key: str,
                                         words: str) -> None:
    path = _write(tmp_path / "p.yaml", {"name": "x", "studies": [study]})
    with pytest.raises(SpecError) as e:
        load_pipeline(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert words in msg


def test_top_level_typo_and_cli_exit_status(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "p.yaml", {"name": "x", "studys": []})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: studys: unknown key 'studys' (did you mean 'studies'?)" in \
        " ".join(err.split())


def test_derived_region_checks(tmp_path: Path) -> None:
    base = {"name": "x", "studies": [{"kind": "shots", "source": "a", "targets": ["b"]}]}
    with pytest.raises(SpecError, match=r"regions.a.from: circular"):
        parse_pipeline({**base, "regions": {"a": {"from": "b", "fraction": 0.5},
                                            "b": {"from": "a", "fraction": 0.5}}},
                       source="p.yaml")
    with pytest.raises(SpecError, match="regions.hongkong: a built-in region"):
        parse_pipeline({**base, "regions": {"hongkong": {"from": "ecuador", "fraction": 0.5}}},
                       source="p.yaml")
    with pytest.raises(SpecError, match=r"studies.0.targets.0: no such region spec file"):
        parse_pipeline({"name": "x", "studies": [{"kind": "shots", "source": "hongkong",
                                                   "targets": ["nope.yaml"]}]},
                       source="p.yaml", base_dir=tmp_path)


@pytest.mark.parametrize("name, n_steps", [
    ("shots_curve", {"fit": 2, "finetune": 12}),  # HK -> 2 targets, Yongxin -> Yushan
    ("source_scale", {"derive": 4, "fit": 4, "finetune": 4}),
    ("progressive", {"fit": 1, "finetune": 3}),
    ("demo", {"derive": 4, "fit": 4, "finetune": 7}),
])
def test_shipped_pipelines_validate_and_plan(name: str, n_steps: dict[str, int]) -> None:
    from lsm.workflows.pipeline import build_plan

    cfg = load_pipeline(PIPELINES / f"{name}.yaml")
    assert cfg.name == name
    plan = build_plan(cfg.model_copy(deep=True))
    kinds = [s.kind for s in plan.steps.values()]
    assert {k: kinds.count(k) for k in set(kinds)} == n_steps
    # upstream steps always come first
    order = list(plan.steps)
    for s in plan.steps.values():
        assert all(order.index(u) < order.index(s.name) for u in s.upstream)


def test_template_is_a_valid_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--template"]) == 0
    text = capsys.readouterr().out
    assert text == pipeline_template()
    cfg = parse_pipeline(yaml.safe_load(text), source="template")
    assert [s.kind for s in cfg.studies] == ["shots", "source_scale", "progressive"]
    assert "# Shot draws per fine-tune." in text


# ---------------------------------------------------------------------------
# derived regions


def test_block_subsets_are_nested() -> None:
    from lsm.workflows.pipeline import block_subset

    rng = np.random.default_rng(0)
    t = pd.DataFrame({"x": rng.uniform(0, 1000, 2000), "y": rng.uniform(0, 800, 2000)})
    for order in ("random", "compact"):
        masks = [block_subset(t, f, order=order, seed=3)[0] for f in (0.1, 0.25, 0.5, 1.0)]
        for small, big in zip(masks, masks[1:]):
            assert (small <= big).all()
        assert masks[-1].all()
        assert abs(masks[0].mean() - 0.1) < 0.03
        rest, _ = block_subset(t, 0.5, part="rest", order=order, seed=3)
        assert (rest == ~masks[2]).all()
    # compact: one area, so the subset's bounding box is much smaller than the whole
    m, _ = block_subset(t, 0.1, order="compact", seed=3)
    assert np.ptp(t["x"][m]) * np.ptp(t["y"][m]) < 0.4 * 1000 * 800
    # no coordinates: every row is a block
    m, bs = block_subset(pd.DataFrame({"a": range(100)}), 0.3, seed=0)
    assert bs is None and m.sum() == 30


def test_derived_region_reads_back(tmp_path: Path) -> None:
    from lsm.config.spec import load_region
    from lsm.workflows.pipeline import write_derived_region
    from lsm.workflows.region import load_region_data

    rng = np.random.default_rng(1)
    n = 400
    pd.DataFrame({
        "X": rng.uniform(0, 5000, n), "Y": rng.uniform(0, 5000, n),
        "slope_deg": rng.uniform(0, 40, n), "ndvi_x": rng.integers(0, 9000, n),
        "geo": rng.choice([1, 2, 3], n), "label": rng.integers(0, 2, n),
    }).to_csv(tmp_path / "s.csv", index=False)
    _write(tmp_path / "r.yaml", {
        "name": "r", "crs": "EPSG:32633",
        "samples": {"path": "s.csv", "label": "label", "x": "X", "y": "Y",
                    "crs": "EPSG:32633"},
        "factors": {"slope": {"column": "slope_deg"},
                    "ndvi": {"column": "ndvi_x", "scale": 0.0001},
                    "lithology": {"column": "geo",
                                  "categories": {1: "granite", 2: "shale", 3: "sandstone"}}},
    })
    data = load_region_data(load_region(tmp_path / "r.yaml"), progress=False)
    info = write_derived_region(data, tmp_path / "half", name="r-half", fraction=0.5,
                                part="first", order="random", block_size=None, seed=0,
                                source_name="r")
    back = load_region_data(load_region(tmp_path / "half" / "region.yaml"), progress=False)
    assert len(back.table) == info["n"] and 0.4 < info["share"] < 0.7
    assert back.kinds == data.kinds
    assert set(back.table["lithology"]) <= {"granite", "shale", "sandstone"}
    merged = back.table.merge(data.table, on=["x", "y"], suffixes=("", "_orig"))
    assert len(merged) == len(back.table)
    for f in ("slope", "ndvi", "lithology", "label"):
        assert (merged[f] == merged[f"{f}_orig"]).all()
    spec = load_region(tmp_path / "half" / "region.yaml")
    assert spec.factors["lithology"].categories  # shared legend kept: transferable


# ---------------------------------------------------------------------------
# the demo pipeline end to end


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``lsm run pipelines/demo.yaml`` once for the module (about a minute)."""
    tmp = tmp_path_factory.mktemp("demo-pipeline")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSM_DEMO_DIR", str(tmp / "demo"))
        mp.setenv("LSM_CACHE", str(tmp / "cache"))
        mp.chdir(REPO)
        rc = main(["run", "pipelines/demo.yaml", "--out", str(tmp / "out"), "-q"])
        yield {"rc": rc, "out": tmp / "out", "mp": mp}


def test_demo_pipeline_outputs(demo_run: dict[str, Any]) -> None:
    assert demo_run["rc"] == 0
    out = demo_run["out"]
    df = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(
        df, pd.read_parquet(out / "results.parquet").astype(df.dtypes.to_dict()),
        check_dtype=False)
    for col in ("study", "source", "target", "family", "arm", "shots", "repeat", "norm",
                "fraction", "chain", "auc", "log_loss", "brier", "accuracy"):
        assert col in df.columns
    arms = {"source_only", "target_only", "stage1", "stage2"}
    lsm_arms = {"source_only", "target_only", "delivered"}
    shots = df[df["study"] == "shots"]
    assert set(map(tuple, shots[["family", "arm", "shots"]].drop_duplicates().to_numpy())) == \
        {(f, a, k) for f in ("lr", "xgb") for a in arms for k in (10, 25)} | \
        {("lsm", a, k) for a in lsm_arms for k in (10, 25)}
    # (families x arms + the delivered row) x K x repeats
    assert len(shots) == (2 * 4 + 3) * 2 * 2
    scale = df[df["study"] == "source_scale"]
    assert sorted(scale["fraction"].unique()) == [0.5, 1.0]
    n_src = scale.groupby("fraction")["n_source"].first()
    assert n_src[0.5] < n_src[1.0]
    prog = df[df["study"] == "progressive"]
    assert set(prog["chain"]) == {"demo-a>demo-b", "demo-a>demo-b>demo-target",
                                  "demo-a>demo-target"}
    assert set(prog["route"]) == {"chain", "direct"}
    final = prog[prog["target"] == "demo-target"]
    # same test set: the target-only arm does not depend on the route
    t_only = final[final["arm"] == "target_only"].pivot_table(
        index=["family", "repeat"], columns="route", values="auc")
    np.testing.assert_allclose(t_only["chain"], t_only["direct"])
    assert df[["auc", "log_loss"]].notna().all().all()

    summary = pd.read_csv(out / "summary.csv")
    assert {"auc_mean", "auc_std", "log_loss_mean", "n"} <= set(summary.columns)
    md = (out / "summary.md").read_text()
    for study in ("shots", "source_scale", "progressive"):
        assert f"## Study `{study}`" in md
    assert "chain − direct" in md and "± " in md
    assert "Paired differences" in md and "delivered − target_only (lsm)" in md
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figs) == 6
    for p in (out / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{p.name}" in md
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["status"] == "complete"
    assert meta["machine"]["cpu_count"] and "commit" in meta["git"]
    assert meta["config"]["studies"][0]["repeats"] == 2
    assert all(s["status"] == "ran" for s in meta["steps"])


def test_demo_pipeline_resumes_without_rerunning(demo_run: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import lsm.workflows.pipeline as wp

    out = demo_run["out"]
    monkeypatch.setenv("LSM_DEMO_DIR", str(out.parent / "demo"))
    monkeypatch.chdir(REPO)
    before = {p: p.stat().st_mtime_ns for p in out.glob("steps/*/step.json")}
    calls = _count_calls(monkeypatch, wp)
    assert main(["run", "pipelines/demo.yaml", "--out", str(out), "-q"]) == 0
    assert calls == {"fit": 0, "finetune": 0}
    assert {p: p.stat().st_mtime_ns for p in out.glob("steps/*/step.json")} == before
    meta = json.loads((out / "pipeline.json").read_text())
    assert {s["status"] for s in meta["steps"]} == {"reused"}


def _count_calls(monkeypatch: pytest.MonkeyPatch, wp: Any, *, fail_finetune: int | None = None
                 ) -> dict[str, int]:
    calls = {"fit": 0, "finetune": 0}
    real_fit, real_ft = wp.run_fit, wp.run_finetune

    def fit(cfg: Any) -> Any:
        calls["fit"] += 1
        return real_fit(cfg)

    def finetune(cfg: Any) -> Any:
        calls["finetune"] += 1
        if calls["finetune"] == fail_finetune:
            # a crash mid-write: what lsm's atomic writes leave (a temp file beside)
            (Path(cfg.out) / ".metrics.json.tmp-crash").write_text("{half")
            raise RuntimeError("simulated crash")
        return real_ft(cfg)

    monkeypatch.setattr(wp, "run_fit", fit)
    monkeypatch.setattr(wp, "run_finetune", finetune)
    return calls


# ---------------------------------------------------------------------------
# resume after a crash, changed inputs, skipped K


def test_resume_after_crash_and_changed_input(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import lsm.workflows.pipeline as wp

    monkeypatch.setenv("LSM_DEMO_DIR", str(tmp_path / "demo"))
    path = _write(tmp_path / "small.yaml", {
        "name": "small",
        "studies": [{"kind": "shots", "source": "demo-source", "targets": ["demo-target"],
                     "models": ["lr"], "shots": [5, 10, 15, 500], "repeats": 1}],
    })
    out = tmp_path / "out"
    argv = ["run", str(path), "--out", str(out), "-q"]

    # 1: the second fine-tune crashes
    with monkeypatch.context() as m:
        calls = _count_calls(m, wp, fail_finetune=2)
        m.setenv("LSM_DEBUG", "1")  # unexpected errors propagate (else: one line, exit 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main(argv)
    assert calls == {"fit": 1, "finetune": 2}
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["status"] == "failed"
    assert [s["status"] for s in meta["steps"]] == ["ran", "ran", "not run", "not run",
                                                    "not run"]
    crashed = out / "steps" / "ft-demo-source-to-demo-target-k10-target"
    assert crashed.is_dir() and not (crashed / "step.json").exists()

    # 2: rerun: the fit and the first fine-tune are reused; the crashed one and later run
    with monkeypatch.context() as m:
        calls = _count_calls(m, wp)
        assert main(argv) == 0
    assert calls == {"fit": 0, "finetune": 3}
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["shots"].unique()) == [5, 10, 15]  # K=500 > pool: skipped
    assert "ft-demo-source-to-demo-target-k500-target: skipped" in \
        (out / "summary.md").read_text()
    steps = {s["name"]: s["status"] for s in json.loads((out / "pipeline.json").read_text())
             ["steps"]}
    assert list(steps.values()) == ["reused", "reused", "ran", "ran", "skipped"]

    # 3: nothing changed: nothing runs, not even the skipped K
    with monkeypatch.context() as m:
        calls = _count_calls(m, wp)
        assert main(argv) == 0
    assert calls == {"fit": 0, "finetune": 0}

    # 4: more repeats: every fine-tune again, the fit is kept
    with monkeypatch.context() as m:
        calls = _count_calls(m, wp)
        assert main([*argv, "--repeats", "2"]) == 0
    assert calls == {"fit": 0, "finetune": 4}
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["repeat"].unique()) == [0, 1]

    # 5: an output changed on disk: only that step is redone
    (out / "steps" / "ft-demo-source-to-demo-target-k15-target" / "metrics.json").write_text("{}")
    with monkeypatch.context() as m:
        calls = _count_calls(m, wp)
        assert main([*argv, "--repeats", "2"]) == 0
    assert calls == {"fit": 0, "finetune": 1}

    # 6: --force redoes everything
    with monkeypatch.context() as m:
        calls = _count_calls(m, wp)
        assert main([*argv, "--repeats", "2", "--force"]) == 0
    assert calls == {"fit": 1, "finetune": 4}
