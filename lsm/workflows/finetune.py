"""``lsm finetune``: adapt source models to a data-scarce target in two stages.

For every repeat, K landslide and K non-landslide "shots" are drawn from the
target's training pool; four arms are scored on the same held-out target
test set:

- ``source_only``: the source model applied zero-shot (with the run's norm);
- ``target_only``: the same family trained from scratch on the shots;
- ``stage1``: the source model with its head re-estimated on the shots;
- ``stage2``: stage 1 fine-tuned as a whole, anchored at the source.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from lsm.config.spec import dump_region, load_region, parse_region
from lsm.errors import ArtifactError, FactorMismatchError
from lsm.evaluate.metrics import binary_metrics, summarize
from lsm.io.artifacts import write_json
from lsm.sampling.shots import draw_shots, holdout_mask
from lsm.stack.features import design_matrix
from lsm.transfer import adapt, finetune, finetune_auto
from lsm.transfer.prior import prior_shift
from lsm.workflows.fit import make_model
from lsm.workflows.progress import progress_bar
from lsm.workflows.region import RegionData, load_region_data
from lsm.workflows.runs import Run, load_run, save_models, write_run_meta

ARMS = ("source_only", "target_only", "stage1", "stage2")


class FinetuneConfig(BaseModel):
    """Options of ``lsm finetune``."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="Built-in region name or path to a region spec.")
    source_run: Path = Field(Path("runs/hongkong"), description="A fit or finetune run folder.")
    shots: int = Field(50, ge=1, le=100_000, description="Landslides (and as many non-landslides).")
    repeats: int = Field(10, ge=1, le=1000)
    models: list[Literal["rf", "lr", "xgb", "mlp"]] | None = None
    seed: int = 0
    out: Path | None = None
    norm: Literal["target", "source", "quantile", "none"] | None = Field(
        None, description="Default: the source run's normalisation.")
    prevalence: float | None = Field(None, gt=0, lt=1,
                                     description="Expected landslide share in the target.")
    test_fraction: float = Field(0.3, gt=0.05, lt=0.9)
    anchor: Literal["auto", "fixed"] = Field(
        "auto", description="Stage-2 anchoring strength: chosen by cross-validation on the "
        "shots (auto) or each family's fixed default.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    reweight: bool = Field(False, description="Re-train the source models with importance "
                           "weights p(target|x)/p(source|x) from a domain classifier between "
                           "the source rows and unlabelled target rows (fit runs only).")
    progress: bool = True
    command: str | None = Field(None, description="Command line that reproduces the run.")


def shared_factors(run: Run, target: RegionData) -> tuple[list[str], list[str]]:
    """Factors both regions share (same name and kind), and warnings for dropped ones.

    A categorical factor is shared only when both specs map their codes to a
    shared legend (``categories``); otherwise local codes cannot be compared.
    For a run pretrained on several regions every source spec must map it.
    """
    src_schema = run.schema
    texts = run.meta.get("specs") or {run.region: run.meta["spec"]}
    src_specs = [parse_region(yaml.safe_load(t), source=str(run.path / "model.json"))
                 for t in texts.values()]
    notes: list[str] = []
    shared: list[str] = []
    for f in src_schema.factors:
        if f not in target.kinds:
            continue
        if target.kinds[f] != src_schema.kinds[f]:
            notes.append(f"factor {f!r} is {src_schema.kinds[f]} in the source but "
                         f"{target.kinds[f]} in the target: dropped")
            continue
        if src_schema.kinds[f] == "categorical":
            s_ok = all(s.factors.get(f) and s.factors[f].categories for s in src_specs)
            t_cat = target.spec.factors.get(f)
            if not (s_ok and t_cat and t_cat.categories):
                notes.append(f"categorical factor {f!r}: legends cannot be matched (map both "
                             "specs' codes with 'categories' to a shared legend): dropped")
                continue
        shared.append(f)
    return shared, notes


def _scores(y: np.ndarray, p: np.ndarray, *, train_prev: float, prevalence: float | None,
            pool_prev: float, imbalanced: bool) -> dict[str, float]:
    """Metrics of one arm; prior-corrected variants where they matter.

    With ``--prevalence`` the headline log-loss/Brier/accuracy are those of the
    corrected probabilities (what the delivered map shows) and the raw ones are
    kept as ``*_uncorrected``.  Without it, on an imbalanced test set, the
    log-loss after a shift to the pool's landslide share (known from the
    inventory, not from the test labels) is added as ``log_loss_prior_corrected``.
    """
    m = binary_metrics(y, p)
    if prevalence is not None:
        corrected = binary_metrics(y, prior_shift(p, train_prev, prevalence))
        m["log_loss_uncorrected"] = m["log_loss"]
        m["brier_uncorrected"] = m["brier"]
        m.update({k: corrected[k] for k in ("log_loss", "brier", "accuracy")})
    elif imbalanced:
        m["log_loss_prior_corrected"] = binary_metrics(
            y, prior_shift(p, train_prev, pool_prev))["log_loss"]
    return m


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the four-arm comparison and write fine-tuned models; return the metrics."""
    run = load_run(cfg.source_run, families=list(cfg.models) if cfg.models else None)
    families = list(cfg.models or run.models)
    norm = cfg.norm or run.norm
    tspec = load_region(cfg.target)
    target = load_region_data(tspec, progress=cfg.progress)

    factors, notes = shared_factors(run, target)
    if not factors:
        raise FactorMismatchError(
            f"{tspec.source_file or tspec.name}: no factor in common with the source run "
            f"{run.path} (source: {', '.join(run.schema.factors)}; target: "
            f"{', '.join(target.kinds)}){''.join('; ' + n for n in notes)}")
    for n in notes:
        warnings.warn(n, UserWarning, stacklevel=2)
    models = run.models
    retrained = False
    if factors != run.schema.factors or norm != run.norm or cfg.reweight:
        why = (f"the target shares only {factors}" if factors != run.schema.factors
               else f"--norm {norm} differs from the run's {run.norm!r}" if norm != run.norm
               else "--reweight re-trains the source models")
        if run.meta.get("kind") != "fit":
            raise ArtifactError(
                f"{run.path}: this {run.meta.get('kind')} run uses factors {run.schema.factors}"
                f" and norm {run.norm!r}, but {why}; re-pretraining is possible from a fit run "
                "only (use 'lsm fit --factors ... --norm ...')")
        models = _repretrain(run, factors, families, norm=norm, seed=cfg.seed,
                             device=cfg.device, progress=cfg.progress,
                             reweight_to=target if cfg.reweight else None, notes=notes)
        retrained = True
        notes.append(f"source models re-pretrained on the {len(factors)} shared factors with "
                     f"norm {norm!r} (the source run used {len(run.schema.factors)} factors, "
                     f"norm {run.norm!r})")

    schema = run.schema.restrict(factors)
    # categories unseen in the source are "unknown" for the target: keep the source list
    table = target.table
    test, split = holdout_mask(table, test_fraction=cfg.test_fraction, seed=cfg.seed)
    if split == "random":
        notes.append("target has no coordinates: the test set is a random (stratified) hold-out")
    # "source" normalisation is anchored at the first region of a chain
    source_stats = run.meta.get("source_stats") or run.stats
    Xt = design_matrix(table, schema, norm=norm, region_stats=target.stats,
                       source_stats=source_stats)
    y = table["label"].to_numpy()
    X_test, y_test = Xt[test], y[test]
    pool = np.flatnonzero(~test)
    pool_prev = float(y[pool].mean())
    test_prev = float(y_test.mean())
    src_prev = float(run.meta.get("training_prevalence", 0.5))

    per_repeat: dict[str, dict[str, list[dict[str, float]]]] = {
        f: {a: [] for a in ARMS} for f in families}
    timings: dict[str, list[float]] = {f: [] for f in families}
    anchors: dict[str, list[dict[str, float]]] = {f: [] for f in families}
    delivered: dict[str, Any] = {}
    out = Path(cfg.out or Path("runs") / f"{run.region}-to-{tspec.name}-k{cfg.shots}")
    imbalanced = abs(test_prev - 0.5) > 0.1

    with progress_bar(f"fine-tuning on {cfg.shots} shots", cfg.repeats * len(families),
                      enabled=cfg.progress) as bar:
        for r in range(cfg.repeats):
            shots = pool[draw_shots(y[pool], cfg.shots, seed=cfg.seed + r)]
            if r == 0:
                first_shots = shots
            Xs, ys = Xt.iloc[shots], y[shots]
            for fam in families:
                bar.describe(f"repeat {r + 1}/{cfg.repeats}: {fam}")
                src = models[fam]
                t0 = time.perf_counter()
                arms = {
                    "source_only": (src, src_prev),
                    "target_only": (make_model(fam, seed=cfg.seed + r, device=cfg.device)
                                    .fit(Xs, ys), 0.5),
                }
                s1 = adapt(src, Xs, ys, random_state=cfg.seed + r)
                if cfg.anchor == "auto":
                    s2, chosen = finetune_auto(s1, Xs, ys, source=src, random_state=cfg.seed + r)
                    anchors[fam].append(chosen)
                else:
                    s2 = finetune(s1, Xs, ys, source=src, random_state=cfg.seed + r)
                timings[fam].append(time.perf_counter() - t0)
                arms["stage1"] = (s1, 0.5)
                arms["stage2"] = (s2, 0.5)
                for arm, (model, train_prev) in arms.items():
                    p = model.predict_proba(X_test)[:, 1]
                    m = _scores(y_test, p, train_prev=train_prev, prevalence=cfg.prevalence,
                                pool_prev=pool_prev, imbalanced=imbalanced)
                    per_repeat[fam][arm].append(m)
                if r == 0:
                    delivered[fam] = s2
                bar.advance()

    metrics: dict[str, Any] = {
        "source_run": str(run.path), "source_region": run.region, "target": tspec.name,
        "shots": cfg.shots, "repeats": cfg.repeats, "test_size": int(test.sum()),
        "test_landslides": int(y_test.sum()), "pool_size": int(pool.size),
        "split": split, "factors": factors, "norm": norm, "prevalence": cfg.prevalence,
        "test_prevalence": test_prev, "pool_prevalence": pool_prev,
        "source_retrained": retrained, "notes": notes,
        "models": {f: {a: summarize(per_repeat[f][a]) for a in ARMS} for f in families},
        "repeats_detail": {f: {a: per_repeat[f][a] for a in ARMS} for f in families},
        "seconds_per_repeat": {f: float(np.mean(timings[f])) for f in families},
        "anchor": cfg.anchor, "anchor_chosen": anchors,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_models(out, delivered)
    # the shots the delivered (repeat-0) models were trained on
    table.iloc[first_shots].to_parquet(out / "training_table.parquet")

    write_json(out / "metrics.json", metrics)
    write_run_meta(out, {
        "command": cfg.command, "kind": "finetune", "region": tspec.name,
        "chain": list(run.meta.get("chain", [run.region])) + [tspec.name],
        "families": families, "schema": schema.to_dict(), "norm": norm,
        "stats": target.stats, "source_stats": source_stats,
        "training_prevalence": 0.5, "prevalence": cfg.prevalence, "seed": cfg.seed,
        "shots": cfg.shots, "split": split, "notes": notes + target.notes,
        "checksums": target.checksums, "source_run": str(run.path),
        "spec": dump_region(tspec), "spec_file": str(tspec.source_file or tspec.name),
    })
    return metrics


def _repretrain(run: Run, factors: list[str], families: list[str], *, norm: str, seed: int,
                device: str, progress: bool, reweight_to: RegionData | None = None,
                notes: list[str] | None = None) -> dict[str, Any]:
    """Re-train the source families on ``factors`` from the run's training table.

    Rows of a multi-source run are normalised with their own region's statistics
    and keep their region- and class-balanced weights.  With ``reweight_to`` (the target)
    the weights are multiplied by importance weights p(target|x) / p(source|x)
    from a domain classifier between the source rows and unlabelled target rows
    in the same normalised design space; their effective sample size goes to
    ``notes``.
    """
    from lsm.transfer.reweight import effective_sample_size, importance_weights
    from lsm.workflows.sources import run_matrix, run_weights, unlabelled_rows

    table = run.training_table()
    schema = run.schema.restrict(factors)
    X = run_matrix(run, table, schema, norm)
    y = table["label"].to_numpy()
    w = base = run_weights(run, table)
    if reweight_to is not None:
        t = reweight_to
        rows = unlabelled_rows(t.spec, t.table, t.stack, factors, seed=seed)
        Xt = design_matrix(rows, schema, norm=norm, region_stats=t.stats,
                           source_stats=run.meta.get("source_stats") or run.stats,
                           warn_unknown=False)
        w, info = importance_weights(X.to_numpy(), Xt.to_numpy(), base_weight=w, seed=seed)
        if notes is not None:
            before = len(y) if base is None else effective_sample_size(base)
            notes.append(
                f"source rows re-weighted towards {t.spec.name} (importance weights from a "
                f"{info['classifier']} domain classifier on {info['n_target']} unlabelled "
                f"target rows; domain AUC {info['domain_auc']:.3f}, weights clipped to "
                f"[0.1, 10] x mean, {info['clipped']} rows at a bound): effective sample size "
                f"{info['ess']:.0f} of {len(y)} rows ({info['ess_fraction']:.1%}; "
                f"{before:.0f} before re-weighting)")
    out = {}
    with progress_bar("re-pretraining source on shared factors", len(families),
                      enabled=progress) as bar:
        for fam in families:
            out[fam] = make_model(fam, seed=seed, device=device).fit(X, y, sample_weight=w)
            bar.advance()
    return out
