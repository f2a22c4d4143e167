"""Study kinds are one class each: a kind declared in this file alone runs through ``lsm run``;
planning a pipeline leaves its config untouched."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import pytest
import yaml
from pydantic import Field

from lsm.cli import main
from lsm.config.pipeline import STUDY_CONFIGS, StudyOptions, load_pipeline, parse_pipeline
from lsm.workflows.studies import STUDIES, StudyKind, Table, register_study
from lsm.workflows.studies.base import pivot

REPO = Path(__file__).resolve().parents[2]


class OneTargetConfig(StudyOptions):
    """Fit each source, fine-tune one target at one K: one number per source."""

    kind: Literal["one_target"] = Field(description="one_target: sources compared on a target.")
    sources: list[str] = Field(min_length=1, description="Regions to fit.")
    target: str = Field(description="Region every source is fine-tuned on.")
    shots: int = Field(10, ge=1, description="K of the fine-tunes.")
    region_fields: ClassVar[tuple[str, ...]] = ("sources", "target")


class OneTarget(StudyKind):
    config = OneTargetConfig

    def plan(self, plan: Any, study: Any, norm: str) -> None:
        tgt = plan.display(study.target)
        for source in study.sources:
            src = plan.display(source)
            fit = plan.fit(source, study, norm)
            ft = plan.finetune(study.target, fit, [src, tgt], study, norm, study.shots)
            plan.use(study, ft, fit, source=src, target=tgt, chain=f"{src}>{tgt}",
                     route="direct", norm=norm, shots=study.shots)

    def tables(self, cfg: Any, study: Any, summary: pd.DataFrame, *, metric: str,
               suffix: str) -> list[Table]:
        sources = list(dict.fromkeys(summary["source"]))
        h, b = pivot(summary, "source", {s: s for s in sources}, metric)
        return [Table(str(study.id), f"{metric} by source on {study.target}{suffix}", h, b)]


@pytest.fixture
def one_target_kind() -> Iterator[None]:
    register_study(OneTarget)
    try:
        yield
    finally:  # leave the registries as the other tests expect them
        STUDIES.pop("one_target", None)
        STUDY_CONFIGS.pop("one_target", None)


def test_unregistered_kind_is_a_one_line_error() -> None:
    from lsm.errors import SpecError

    with pytest.raises(SpecError, match=r"studies.0: unknown study kind 'one_target'"):
        parse_pipeline({"name": "x", "studies": [{"kind": "one_target", "sources": ["a"],
                                                   "target": "b"}]}, source="p.yaml")


def test_extra_study_kind_runs_through_lsm_run(one_target_kind: None, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSM_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.setenv("LSM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "tiny",
        "regions": {"demo-half": {"from": "demo-source", "fraction": 0.5}},
        "studies": [{"kind": "one_target", "sources": ["demo-source", "demo-half"],
                     "target": "demo-target", "models": ["lr"], "repeats": 1}],
    }, sort_keys=False), encoding="utf-8")
    # region checks reach the new kind's fields too
    with pytest.raises(Exception, match=r"studies.0.sources.1: unknown region 'demo-hal'"):
        parse_pipeline({"name": "x", "studies": [{"kind": "one_target", "target": "demo-target",
                                                   "sources": ["demo-source", "demo-hal"]}]},
                       source="p.yaml")

    assert main(["run", "p.yaml", "-q"]) == 0
    out = tmp_path / "runs" / "pipelines" / "tiny"  # the default: an ignored folder
    df = pd.read_csv(out / "results.csv")
    assert set(df["study"]) == {"one_target"} and set(df["kind"]) == {"one_target"}
    assert set(df["source"]) == {"demo-source", "demo-half"}
    assert set(df["family"]) == {"lr", "lsm"} and set(df["repeat"]) == {0}
    half = df[df["source"] == "demo-half"]["n_source"].iloc[0]
    assert half < df[df["source"] == "demo-source"]["n_source"].iloc[0]
    md = (out / "summary.md").read_text()
    assert "## Study `one_target` (one_target)" in md
    assert "### auc by source on demo-target" in md and "| lr | stage2 |" in md
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["demo", "source_scale", "shots_curve", "progressive"])
def test_build_plan_leaves_the_config_unchanged(name: str) -> None:
    from lsm.workflows.pipeline import build_plan

    cfg = load_pipeline(REPO / "pipelines" / f"{name}.yaml")
    before = copy.deepcopy(cfg)
    plan = build_plan(cfg)
    assert cfg.model_dump() == before.model_dump()
    assert list(cfg.regions) == list(before.regions)
    # the source_scale subsets are regions of the plan, with a derive step each
    derived = [s.config["name"] for s in plan.steps.values() if s.kind == "derive"]
    assert set(derived) <= set(plan.regions)
    if name in ("demo", "source_scale"):
        assert set(plan.regions) - set(cfg.regions)
