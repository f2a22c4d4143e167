"""``lsm fit``: pretrain source models in a data-rich region."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lsm.config.spec import dump_region, load_region
from lsm.io.artifacts import write_json
from lsm.models.base import FAMILY_NAMES, get_family
from lsm.stack.features import FeatureSchema, design_matrix
from lsm.workflows.progress import progress_bar
from lsm.workflows.region import RegionData, load_region_data
from lsm.workflows.runs import save_models, write_run_meta


class FitConfig(BaseModel):
    """Options of ``lsm fit``."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Built-in region name or path to a region spec.")
    models: list[Literal["rf", "lr", "xgb", "mlp"]] = Field(
        default_factory=lambda: list(FAMILY_NAMES), min_length=1)
    out: Path | None = Field(None, description="Run folder; default runs/<region>.")
    seed: int = 0
    factors: list[str] | None = Field(None, description="Factor subset; default all that transfer.")
    norm: Literal["target", "source", "quantile", "none"] = "target"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cv: bool = Field(True, description="Run spatial cross-validation before the final fit.")
    progress: bool = True
    command: str | None = Field(None, description="Command line that reproduces the run.")


def model_params(family: str, *, seed: int, device: str = "auto") -> dict[str, Any]:
    """Constructor parameters every workflow uses for ``family``."""
    cls = get_family(family)
    names = cls().get_params()
    params: dict[str, Any] = {}
    if "random_state" in names:
        params["random_state"] = seed
    if "device" in names:
        params["device"] = device
    return params


def make_model(family: str, *, seed: int, device: str = "auto") -> Any:
    return get_family(family)(**model_params(family, seed=seed, device=device))


def train_matrix(data: RegionData, schema: FeatureSchema, norm: str):
    """Design matrix of a region's own table under ``norm`` (own stats = source stats)."""
    return design_matrix(data.table, schema, norm=norm, region_stats=data.stats,
                         source_stats=data.stats)


def fit_models(data: RegionData, schema: FeatureSchema, families: list[str], *, norm: str,
               seed: int, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train each family on the whole table of ``data``."""
    X = train_matrix(data, schema, norm)
    y = data.table["label"].to_numpy()
    models = {}
    with progress_bar("training final models", len(families), enabled=progress) as bar:
        for fam in families:
            bar.describe(f"training {fam}")
            models[fam] = make_model(fam, seed=seed, device=device).fit(X, y)
            bar.advance()
    return models


def run_fit(cfg: FitConfig) -> dict[str, Any]:
    """Pretrain, cross-validate and save source models; return the metrics."""
    from lsm.evaluate.cv import cross_validate

    spec = load_region(cfg.source)
    factors = cfg.factors or spec.transfer_factor_names
    data = load_region_data(spec, progress=cfg.progress, factors=factors)
    schema = FeatureSchema.from_table(data.table, data.kinds)
    out = Path(cfg.out or Path("runs") / spec.name)
    out.mkdir(parents=True, exist_ok=True)

    X = train_matrix(data, schema, cfg.norm)
    y = data.table["label"].to_numpy()
    folds = data.table["fold"].to_numpy()
    metrics: dict[str, Any] = {"region": spec.name, "n": int(len(y)),
                               "n_landslides": int(y.sum()), "split": data.split,
                               "n_folds": int(len(np.unique(folds))), "norm": cfg.norm,
                               "factors": factors, "cv": {}}
    if cfg.cv:
        n_steps = len(cfg.models) * len(np.unique(folds))
        with progress_bar("cross-validation", n_steps, enabled=cfg.progress) as bar:
            for fam in cfg.models:
                bar.describe(f"cross-validating {fam}")
                res = cross_validate(lambda fam=fam: make_model(fam, seed=cfg.seed,
                                                                device=cfg.device),
                                     X, y, folds, on_fold=bar.advance)
                metrics["cv"][fam] = {"summary": res["summary"], "folds": res["folds"]}
                data.table[f"oof_{fam}"] = res["oof"]

    models = fit_models(data, schema, list(cfg.models), norm=cfg.norm, seed=cfg.seed,
                        device=cfg.device, progress=cfg.progress)
    save_models(out, models)
    data.table.to_parquet(out / "training_table.parquet")
    write_json(out / "metrics.json", metrics)
    write_run_meta(out, {
        "command": cfg.command, "kind": "fit", "region": spec.name, "chain": [spec.name],
        "families": list(cfg.models),
        "schema": schema.to_dict(), "norm": cfg.norm, "stats": data.stats,
        "source_stats": data.stats, "training_prevalence": float(y.mean()), "seed": cfg.seed,
        "split": data.split, "notes": data.notes, "checksums": data.checksums,
        "spec": dump_region(spec), "spec_file": str(spec.source_file or spec.name),
    })
    return metrics
