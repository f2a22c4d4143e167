"""``lsm fit``: pretrain source models in a data-rich region (or several, pooled).

With several sources (``--source hongkong,jiangxi-yongxin``) each region's rows
are normalised with its own statistics and weighted so that every region
counts the same; see :mod:`lsm.workflows.sources`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.config.run import FitConfig
from lsm.config.spec import dump_region, load_region
from lsm.models.base import get_family
from lsm.stack.features import FeatureSchema, design_matrix
from lsm.workflows.progress import progress_bar
from lsm.workflows.region import RegionData, load_region_data
from lsm.workflows.region_record import RECORD, record_region
from lsm.workflows.runs import claim_run_dir, write_run


def model_params(family: str, *, seed: int, device: str = "auto",
                 params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor parameters every workflow uses for ``family`` (plus ``params``, e.g.
    tuned hyper-parameters validated by :func:`lsm.config.params.validate_params`)."""
    cls = get_family(family)
    names = cls().get_params()
    out: dict[str, Any] = dict(params or {})
    if "random_state" in names:
        out["random_state"] = seed
    if "device" in names:
        out["device"] = device
    return out


def make_model(family: str, *, seed: int, device: str = "auto",
               params: dict[str, Any] | None = None) -> Any:
    return get_family(family)(**model_params(family, seed=seed, device=device, params=params))


def train_matrix(data: RegionData, schema: FeatureSchema, norm: str):
    """Design matrix of a region's own table under ``norm`` (own stats = source stats)."""
    return design_matrix(data.table, schema, norm=norm, region_stats=data.stats,
                         source_stats=data.stats)


def fit_models(data: RegionData, schema: FeatureSchema, families: list[str], *, norm: str,
               seed: int, device: str = "auto", progress: bool = True,
               params: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train each family on the whole table of ``data``."""
    X = train_matrix(data, schema, norm)
    y = data.table["label"].to_numpy()
    params = params or {}
    models = {}
    with progress_bar("training final models", len(families), enabled=progress) as bar:
        for fam in families:
            bar.describe(f"training {fam}")
            models[fam] = make_model(fam, seed=seed, device=device,
                                     params=params.get(fam)).fit(X, y)
            bar.advance()
    return models


def run_dir(cfg: FitConfig, region: str) -> Path:
    """The run folder of a fit in ``region`` (several sources: their joined name)."""
    return Path(cfg.out or Path("runs") / region)


def run_fit(cfg: FitConfig) -> dict[str, Any]:
    """Pretrain, cross-validate and save source models; return the metrics."""
    from lsm.evaluate.cv import cross_validate
    from lsm.workflows.sources import source_names

    names = source_names(cfg.source)
    if len(names) > 1:
        return run_fit_sources(cfg, names)
    spec = load_region(names[0])
    factors = cfg.factors or spec.transfer_factor_names
    data = load_region_data(spec, progress=cfg.progress, factors=factors)
    schema = FeatureSchema.from_table(data.table, data.kinds)
    out = claim_run_dir(run_dir(cfg, spec.name), kind="fit")

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
                                                                device=cfg.device,
                                                                params=cfg.params.get(fam)),
                                     X, y, folds, on_fold=bar.advance)
                metrics["cv"][fam] = {"summary": res["summary"], "folds": res["folds"]}
                data.table[f"oof_{fam}"] = res["oof"]
        metrics["skill_caveat"] = _cv_caveat(int(y.sum()), data.split)

    weak = weak_skill(metrics["cv"], cfg.params)
    if weak:
        metrics["warnings"] = weak
    models = fit_models(data, schema, list(cfg.models), norm=cfg.norm, seed=cfg.seed,
                        device=cfg.device, progress=cfg.progress, params=cfg.params)
    write_run(out, models=models, table=data.table, metrics=metrics, meta={
        "command": cfg.command, "kind": "fit", "region": spec.name, "chain": [spec.name],
        "families": list(cfg.models),
        "schema": schema.to_dict(), "norm": cfg.norm, "stats": data.stats,
        "source_stats": data.stats, "training_prevalence": float(y.mean()), "seed": cfg.seed,
        "split": data.split, "notes": data.notes + weak, "checksums": data.checksums,
        "spec": dump_region(spec), "spec_file": str(spec.source_file or spec.name),
        RECORD: {spec.name: record_region(spec, progress=cfg.progress)},
    })
    return metrics


#: A family whose cross-validated AUC is at most this is reported as having no skill.
WEAK_AUC = 0.55


def weak_skill(cv: dict[str, Any], params: dict[str, dict[str, Any]]) -> list[str]:
    """One warning line per family whose mean cross-validated AUC is at most
    :data:`WEAK_AUC` (or undefined): its map would rank pixels no better than chance,
    often because of its hyper-parameters (``--params``)."""
    out = []
    for fam, res in cv.items():
        auc = res.get("summary", {}).get("auc", {}).get("mean")
        if auc is None or not np.isfinite(auc) or auc <= WEAK_AUC:
            shown = "undefined" if auc is None or not np.isfinite(auc) else f"{auc:.3f}"
            why = (f" with the --params values {params[fam]}" if params.get(fam)
                   else "")
            out.append(f"{fam}: cross-validated AUC {shown} <= {WEAK_AUC}: no skill above "
                       f"chance{why}; do not use its map")
    return out


def _cv_caveat(n_landslides: int, split: str) -> dict[str, Any] | None:
    """The caveat of cross-validated skill from too few landslides (also a warning)."""
    import warnings

    from lsm.evaluate.sample_size import skill_caveat

    caveat = skill_caveat(n_landslides, what=f"{split} cross-validation, each landslide "
                          "scored once out of fold")
    if caveat is not None:
        warnings.warn(caveat["text"], UserWarning, stacklevel=3)
    return caveat


#: How a multi-source run weights its pooled rows (see lsm.workflows.sources.source_weights).
WEIGHTING = "region- and class-balanced"


def cross_validate_sources(make: Any, X: Any, y: np.ndarray, folds: np.ndarray,
                           regions: np.ndarray, *, on_fold: Any = None) -> dict[str, Any]:
    """Cross-validation of a pooled multi-region table on each region's own folds.

    Fold ``k`` holds out fold ``k`` of every region at once (a region with fewer
    folds simply has no rows in the higher ones); the model is trained on the
    rest with region- and class-balanced weights (recomputed on the training rows).
    Returns pooled per-fold metrics and summary, the same per region, and the
    out-of-fold probabilities.
    """
    from lsm.evaluate.metrics import binary_metrics, summarize
    from lsm.workflows.sources import source_weights

    oof = np.full(len(y), np.nan)
    pooled: list[dict[str, Any]] = []
    per_region: dict[str, list[dict[str, Any]]] = {r: [] for r in pd.unique(regions)}
    for k in np.unique(folds):
        test = folds == k
        if len(np.unique(y[~test])) < 2:
            continue
        model = make().fit(X[~test], y[~test],
                           sample_weight=source_weights(regions[~test], y[~test]))
        oof[test] = model.predict_proba(X[test])[:, 1]
        pooled.append({"fold": int(k), "n": int(test.sum()),
                       **binary_metrics(y[test], oof[test])})
        for r in per_region:
            rows = test & (regions == r)
            if rows.any():
                per_region[r].append({"fold": int(k), "n": int(rows.sum()),
                                      **binary_metrics(y[rows], oof[rows])})
        if on_fold is not None:
            on_fold()

    def summary(folds_: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize([{m: v for m, v in f.items() if m not in ("fold", "n")}
                          for f in folds_])

    return {"folds": pooled, "summary": summary(pooled), "oof": oof,
            "per_region": {r: {"summary": summary(f), "folds": f}
                           for r, f in per_region.items()}}


def run_fit_sources(cfg: FitConfig, names: list[str]) -> dict[str, Any]:
    """Pretrain on several source regions pooled; cross-validate, save, return the metrics.

    ``stats``, ``source_stats`` and ``spec`` of the run are the first region's
    (what ``source`` normalisation and anything that needs one region read);
    ``region_stats`` and ``regions`` describe every region.
    """
    import warnings

    from lsm.errors import FactorMismatchError, SpecError
    from lsm.workflows.sources import JOIN, common_factors, pooled_matrix, source_weights

    specs = [load_region(n) for n in names]
    dup = sorted({s.name for s in specs if [t.name for t in specs].count(s.name) > 1})
    if dup:
        raise SpecError(f"--source {','.join(names)}: region name(s) {dup} appear more than "
                        "once")
    factors, notes = common_factors(specs, cfg.factors)
    if not factors:
        raise FactorMismatchError(f"--source {','.join(names)}: the regions share no factor"
                                  f"{''.join('; ' + n for n in notes)}")
    for n in notes:
        warnings.warn(n, UserWarning, stacklevel=2)
    datas = [load_region_data(s, progress=cfg.progress, factors=factors) for s in specs]
    region = JOIN.join(s.name for s in specs)
    first = specs[0].name
    notes.append(f"multi-source run ({', '.join(s.name for s in specs)}): each region's rows "
                 "are normalised with its own statistics ('region_stats') and weighted so that "
                 "every region counts the same and, within a region, landslides and "
                 "non-landslides weigh the same; 'stats', 'source_stats' and 'spec' are those "
                 f"of the first region, {first}")
    tables = []
    for s, d in zip(specs, datas, strict=True):
        notes += [f"{s.name}: {n}" for n in d.notes]
        tables.append(d.table.assign(region=s.name))
    table = pd.concat(tables, ignore_index=True)
    schema = FeatureSchema.from_table(table, datas[0].kinds)
    region_stats = {s.name: d.stats for s, d in zip(specs, datas, strict=True)}
    regions = table["region"].to_numpy()
    X = pooled_matrix(table, schema, norm=cfg.norm, region_stats=region_stats,
                      source_stats=datas[0].stats)
    y = table["label"].to_numpy()
    w = source_weights(regions, y)
    folds = table["fold"].to_numpy()
    out = claim_run_dir(run_dir(cfg, region), kind="fit")
    split = " + ".join(f"{d.split} ({s.name})" for s, d in zip(specs, datas, strict=True))
    metrics: dict[str, Any] = {
        "region": region, "regions": [s.name for s in specs], "n": int(len(y)),
        "n_landslides": int(y.sum()), "split": split, "n_folds": int(len(np.unique(folds))),
        "norm": cfg.norm, "factors": factors, "weighting": WEIGHTING,
        "per_region": {s.name: {"n": int(len(d.table)),
                                "n_landslides": int(d.table["label"].sum()),
                                "split": d.split}
                       for s, d in zip(specs, datas, strict=True)},
        "cv": {}}
    if cfg.cv:
        n_steps = len(cfg.models) * len(np.unique(folds))
        with progress_bar("cross-validation", n_steps, enabled=cfg.progress) as bar:
            for fam in cfg.models:
                bar.describe(f"cross-validating {fam}")
                res = cross_validate_sources(
                    lambda fam=fam: make_model(fam, seed=cfg.seed, device=cfg.device,
                                               params=cfg.params.get(fam)),
                    X, y, folds, regions, on_fold=bar.advance)
                metrics["cv"][fam] = {"summary": res["summary"], "folds": res["folds"],
                                      "per_region": res["per_region"]}
                table[f"oof_{fam}"] = res["oof"]
    weak = weak_skill(metrics["cv"], cfg.params)
    if weak:
        metrics["warnings"] = weak
        notes += weak
        metrics["skill_caveat"] = _cv_caveat(int(y.sum()), split)
    models = {}
    with progress_bar("training final models", len(cfg.models), enabled=cfg.progress) as bar:
        for fam in cfg.models:
            bar.describe(f"training {fam}")
            models[fam] = make_model(fam, seed=cfg.seed, device=cfg.device,
                                     params=cfg.params.get(fam)).fit(X, y, sample_weight=w)
            bar.advance()
    checksums = {f"{s.name}:{k}": v for s, d in zip(specs, datas, strict=True)
                 for k, v in d.checksums.items()}
    write_run(out, models=models, table=table, metrics=metrics, meta={
        "command": cfg.command, "kind": "fit", "region": region, "chain": [region],
        "regions": [s.name for s in specs], "families": list(cfg.models),
        "schema": schema.to_dict(), "norm": cfg.norm, "stats": datas[0].stats,
        "source_stats": datas[0].stats, "region_stats": region_stats,
        "weighting": WEIGHTING,
        # what the models learnt: the weighted landslide share of the pooled rows
        "training_prevalence": float(np.average(y, weights=w)), "seed": cfg.seed,
        "split": split, "notes": notes, "checksums": checksums,
        "spec": dump_region(specs[0]), "specs": {s.name: dump_region(s) for s in specs},
        "spec_file": str(specs[0].source_file or specs[0].name),
        "spec_files": {s.name: str(s.source_file or s.name) for s in specs},
        RECORD: {s.name: record_region(s, progress=cfg.progress) for s in specs},
    })
    return metrics
