"""``lsm finetune``: adapt source models to a data-scarce target and measure the gain.

Study mode (``--shots K``): for every repeat, K landslide and K non-landslide
"shots" are drawn from the target's training pool; per model family four
arms are scored on the same held-out target test set:

- ``source_only``: the source model applied zero-shot (with the run's norm);
- ``target_only``: the same family trained from scratch on the shots;
- ``stage1``: the source model with its head re-estimated on the shots;
- ``stage2``: stage 1 fine-tuned as a whole, anchored at the source;

and in the row ``lsm``, the *delivered* model (chosen and trained on the
shots alone by :func:`lsm.transfer.select.fit_delivered`) beside the
source-only and target-only baselines whose family was also chosen on the
shots.  Every comparison is paired (same shots, same test set).  The map
model is the delivered procedure re-run on all labelled points outside the
hold-out.

Production mode (``--shots all``): the delivered model is trained on every
labelled target point; its skill is estimated by nested cross-validation
(spatial blocks where coordinates exist).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from lsm.config.run import FinetuneConfig
from lsm.config.spec import dump_region, load_region, parse_region
from lsm.errors import ArtifactError, FactorMismatchError, SamplingError
from lsm.evaluate.metrics import binary_metrics, paired_difference, summarize
from lsm.sampling.shots import draw_shots, holdout_mask
from lsm.stack.features import design_matrix
from lsm.transfer import adapt, finetune, finetune_auto
from lsm.transfer.prior import prior_shift
from lsm.transfer.select import fit_delivered, target_candidates
from lsm.workflows.fit import make_model
from lsm.workflows.progress import progress_bar
from lsm.workflows.region import RegionData, load_region_data
from lsm.workflows.region_record import RECORD, record_region, records, trained_names
from lsm.workflows.runs import Run, claim_run_dir, load_run, refuse_out_in_run, write_run
from lsm.workflows.verdict import skill_check, verdicts

ARMS = ("source_only", "target_only", "stage1", "stage2")
#: The row of the comparison that holds what the run delivers, beside the baselines a
#: user would have picked without the test set (best family of each, chosen on the shots).
CHOSEN = "lsm"
CHOSEN_ARMS = ("source_only", "target_only", "delivered")
#: Folder (family) name of the delivered model in a run.
DELIVERED = "delivered"
DELIVERED_HOW = (
    "default: the recalibrated mean logit of the source families blended with the mean "
    "logit of target-only rf, lr and xgb, the source weighted 20 / (20 + n) for n shots, "
    "recalibrated on its out-of-fold margins; every other candidate (recalibrated source, "
    "source logit + factors, residual boosting over the source, target-only, lr stages, "
    "blends) is scored by cross-validation on the shots alone and replaces the default "
    "only when its log-loss is lower by more than 3 paired standard errors; the evaluation "
    "hold-out never enters the choice. Baselines in row 'lsm': source_only = the source "
    "family that ranks the shots best; target_only = the family with the lowest "
    "cross-validated log-loss on the shots.")

#: What production mode adds to the candidates (metrics["delivered"]["how"]).
PRODUCTION_HOW = (
    " With every label (--shots all) the families trained as 'lsm fit' trains them on the "
    "target alone (its own factors and normalisation, default parameters) are candidates "
    "too, scored on the same inner folds (whole spatial blocks of the outer folds): the "
    "plain fit with the lowest cross-validated log-loss is delivered unless the transfer "
    "choice (recalibrated as delivered) beats it by more than 3 paired standard errors; "
    "the outer folds, the ones 'lsm fit' reports, only measure skill.")


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


def run_dir(cfg: FinetuneConfig, source_region: str, target: str) -> Path:
    """The run folder of a fine-tune from ``source_region`` to ``target``."""
    return Path(cfg.out or Path("runs") / f"{source_region}-to-{target}-k{cfg.shots}")


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the comparison (or the production fit) and write the run; return the metrics."""
    ctx = _prepare(cfg)
    if cfg.shots == "all":
        metrics, delivered_models = _production(cfg, ctx)
    else:
        metrics, delivered_models = _study(cfg, ctx)
    metrics["verdicts"] = verdicts(metrics)
    metrics["skill"] = skill_check(metrics)
    if metrics["skill"]["near_chance"]:
        warnings.warn(metrics["skill"]["message"], UserWarning, stacklevel=2)
    _write(cfg, ctx, metrics, delivered_models)
    return metrics


@dataclass
class _Setup:
    """Everything the study and production modes share."""

    run: Run
    families: list[str]
    norm: str
    tspec: Any
    target: RegionData
    factors: list[str]
    notes: list[str]
    models: dict[str, Any]
    retrained: bool
    schema: Any
    source_stats: dict[str, Any]
    X: Any
    y: np.ndarray
    xy: np.ndarray | None
    src_prev: float
    out: Path
    source_table: tuple[Any, np.ndarray] | None = None
    continuous: tuple[str, ...] = ()
    relations: dict[str, dict[str, Any]] | None = None
    holdout: tuple[np.ndarray, str] | None = None  # study mode: (test mask, split kind)


#: Columns of ``test_predictions.parquet`` that locate a test point, not a model's output.
PIXEL_COLUMNS = ("row", "col")
#: The same for a table target (no pixels): the row number of the point in the region's
#: table, which is the ``unit`` of its unit predictions.
UNIT_COLUMN = "unit"


def _prepare(cfg: FinetuneConfig) -> _Setup:
    run = load_run(cfg.source_run, families=list(cfg.models) if cfg.models else None)
    families = [f for f in (cfg.models or run.models) if f != DELIVERED]
    norm = cfg.norm or run.norm
    tspec = load_region(cfg.target)
    out = run_dir(cfg, run.region, tspec.name)
    refuse_out_in_run(out, run.path, option="--from")
    out = claim_run_dir(out, kind="finetune")
    target = load_region_data(tspec, progress=cfg.progress)

    factors, notes = shared_factors(run, target)
    if not factors:
        raise FactorMismatchError(
            f"{tspec.source_file or tspec.name}: no factor in common with the source run "
            f"{run.path} (source: {', '.join(run.schema.factors)}; target: "
            f"{', '.join(target.kinds)}){''.join('; ' + n for n in notes)}")
    for n in notes:
        warnings.warn(n, UserWarning, stacklevel=2)
    # study mode: the fixed test set, and the cheap check of K, before any re-training
    holdout = _holdout(cfg, target) if cfg.shots != "all" else None
    models = {f: run.models[f] for f in families}
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
    table = target.table
    # "source" normalisation is anchored at the first region of a chain
    source_stats = run.meta.get("source_stats") or run.stats
    X = design_matrix(table, schema, norm=norm, region_stats=target.stats,
                      source_stats=source_stats)
    has_xy = {"x", "y"} <= set(table.columns) and table[["x", "y"]].notna().all().all()
    xy = table[["x", "y"]].to_numpy(dtype=np.float64) if has_xy else None
    continuous = tuple(f for f in schema.factors if schema.kinds[f] == "continuous")
    return _Setup(run, families, norm, tspec, target, factors, notes, models, retrained,
                  schema, source_stats, X, table["label"].to_numpy(), xy,
                  float(run.meta.get("training_prevalence", 0.5)), out,
                  _source_table(run, schema, norm), continuous, holdout=holdout)


def _source_table(run: Run, schema: Any, norm: str) -> tuple[Any, np.ndarray] | None:
    """The source's design matrix and labels on the shared factors (to compare relations)."""
    try:
        table = run.training_table()
    except ArtifactError:
        return None  # a run without its table: relations are not compared
    if len(table) > 20_000:
        table = table.sample(20_000, random_state=0)
    from lsm.workflows.sources import run_matrix

    return run_matrix(run, table, schema, norm), table["label"].to_numpy()


def _make_target(device: str) -> Any:
    """Target-only candidate models: single-threaded (tens of rows), with the family's
    ``few_shot_params`` (a lighter forest)."""
    def make(fam: str, seed: int) -> Any:
        model = make_model(fam, seed=seed, device=device)
        params = model.get_params()
        if "n_jobs" in params:
            model.set_params(n_jobs=1)
        return model.set_params(**type(model).few_shot_params)
    return make


def _deliver(cfg: FinetuneConfig, s: _Setup, idx: np.ndarray, seed: int,
             fit: _PlainFit | None = None) -> tuple[Any, Any]:
    """The delivered model from the rows ``idx`` alone (shots, or all labelled points);
    with ``fit`` (production), the plain fits on the target alone are candidates too."""
    extra: dict[str, Any] = {}
    if fit is not None:
        extra = {"fit_matrix": fit.X.iloc[idx], "fit_families": fit.families,
                 # --seed, as 'lsm fit --seed' trains it: the same model on the same rows
                 "make_fit": lambda fam, _sd: make_model(fam, seed=cfg.seed, device=cfg.device),
                 "blocks": None if fit.blocks is None else fit.blocks[idx]}
    return fit_delivered(s.models, s.X.iloc[idx], s.y[idx], make_target=_make_target(cfg.device),
                         target_families=target_candidates(s.families),
                         seed=seed, n_repeats=1,
                         source_table=s.source_table, continuous=s.continuous,
                         xy=None if s.xy is None else s.xy[idx], **extra)


def _holdout(cfg: FinetuneConfig, target: RegionData) -> tuple[np.ndarray, str]:
    """The fixed test set of a study; a K the pool outside it cannot give is an error."""
    test, split = holdout_mask(target.table, test_fraction=cfg.test_fraction, seed=cfg.seed)
    y = target.table["label"].to_numpy()[~test]
    k = int(cfg.shots)
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    if k > min(n_pos, n_neg):
        raise SamplingError(
            f"--shots {k} needs {k} landslides and {k} non-landslides in the training pool "
            f"outside the hold-out, which has {n_pos} and {n_neg}; use --shots "
            f"{min(n_pos, n_neg)} or less, or --shots all")
    return test, split


def _study(cfg: FinetuneConfig, s: _Setup) -> tuple[dict[str, Any], dict[str, Any]]:
    """K shots x repeats: every arm scored on one fixed hold-out."""
    assert s.holdout is not None
    test, split = s.holdout
    if split == "random":
        s.notes.append("target has no coordinates: the test set is a random (stratified) "
                       "hold-out")
    X_test, y_test = s.X[test], s.y[test]
    pool = np.flatnonzero(~test)
    k = int(cfg.shots)
    n_pos = int(s.y[pool].sum())
    pool_prev = float(s.y[pool].mean())
    test_prev = float(y_test.mean())
    imbalanced = abs(test_prev - 0.5) > 0.1
    families = s.families

    def score(p: np.ndarray, train_prev: float) -> dict[str, float]:
        return _scores(y_test, p, train_prev=train_prev, prevalence=cfg.prevalence,
                       pool_prev=pool_prev, imbalanced=imbalanced)

    per_repeat: dict[str, dict[str, list[dict[str, float]]]] = {
        f: {a: [] for a in ARMS} for f in families}
    per_repeat[CHOSEN] = {a: [] for a in CHOSEN_ARMS}
    timings: dict[str, list[float]] = {f: [] for f in [*families, DELIVERED]}
    anchors: dict[str, list[dict[str, float]]] = {f: [] for f in families}
    choices: list[dict[str, Any]] = []
    stage2_r0: dict[str, Any] = {}
    test_p: dict[str, np.ndarray] = {}  # repeat 0 on the hold-out, for the figures

    with progress_bar(f"fine-tuning on {k} shots", cfg.repeats * (len(families) + 1),
                      enabled=cfg.progress) as bar:
        for r in range(cfg.repeats):
            shots = pool[draw_shots(s.y[pool], k, seed=cfg.seed + r)]
            if r == 0:
                shots_r0 = shots
            Xs, ys = s.X.iloc[shots], s.y[shots]
            for fam in families:
                bar.describe(f"repeat {r + 1}/{cfg.repeats}: {fam}")
                src = s.models[fam]
                t0 = time.perf_counter()
                arms = {
                    "source_only": (src, s.src_prev),
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
                    p_arm = model.predict_proba(X_test)[:, 1]
                    per_repeat[fam][arm].append(score(p_arm, train_prev))
                    if r == 0 and arm in ("source_only", "stage2"):
                        test_p[f"{fam} {arm}"] = _map_scale(p_arm, train_prev, cfg.prevalence)
                if r == 0:
                    stage2_r0[fam] = s2
                bar.advance()
            # the delivered arm and the baselines a user would pick, from the shots alone
            bar.describe(f"repeat {r + 1}/{cfg.repeats}: delivered")
            t0 = time.perf_counter()
            model, sel = _deliver(cfg, s, shots, cfg.seed + r)
            timings[DELIVERED].append(time.perf_counter() - t0)
            per_repeat[CHOSEN]["delivered"].append(score(model.predict_proba(X_test)[:, 1], 0.5))
            src_fam = _best_source_on_shots(s.models, Xs, ys, families)
            tgt_fam = _best_target_in_cv(sel, families)
            per_repeat[CHOSEN]["source_only"].append(per_repeat[src_fam]["source_only"][-1])
            per_repeat[CHOSEN]["target_only"].append(per_repeat[tgt_fam]["target_only"][-1])
            choices.append({"repeat": r, **sel.to_dict(), "source_only_family": src_fam,
                            "target_only_family": tgt_fam})
            bar.advance()

    delivered_models: dict[str, Any] = dict(stage2_r0)
    metrics_extra: dict[str, Any] = {}
    map_model: dict[str, Any] = {}
    if cfg.deliver:
        # the map: the same procedure on every labelled point outside the hold-out
        model, sel = _deliver(cfg, s, pool, cfg.seed)
        model = _rebase(model, pool_prev)
        delivered_models[DELIVERED] = model
        p = model.predict_proba(X_test)[:, 1]
        test_p = {"delivered (map model)": _map_scale(p, 0.5, cfg.prevalence), **test_p}
        metrics_extra["_delivered_fit"] = (s.X.iloc[pool], s.y[pool], sel, pool_prev)
        map_model = {"trained_on": "all labelled points outside the hold-out",
                     "n": int(pool.size), "n_landslides": n_pos, **sel.to_dict(),
                     "holdout": score(p, 0.5)}
        _flag_relations(s, sel.relations, "the labelled points outside the hold-out")
    metrics_extra["_test_predictions"] = (
        # row/col of the hold-out pixels (raster targets): the rate curves of the map
        # model tell the landslides it was trained on from those it never saw
        pd.DataFrame({**{c: s.target.table[c].to_numpy()[test] for c in PIXEL_COLUMNS
                         if c in s.target.table},
                      **({} if "row" in s.target.table else
                         {UNIT_COLUMN: np.flatnonzero(test)}), "label": y_test, **test_p}),
        f"the {split} hold-out ({int(test.sum())} points): the delivered map model and each "
        "family's source-only and stage-2 models of repeat 1, as the map shows them")
    arms_of = {f: ARMS for f in families} | {CHOSEN: CHOSEN_ARMS}
    metrics: dict[str, Any] = {
        "mode": "study", "source_run": str(s.run.path), "source_region": s.run.region,
        "target": s.tspec.name, "shots": k, "repeats": cfg.repeats,
        "test_size": int(test.sum()), "test_landslides": int(y_test.sum()),
        "pool_size": int(pool.size), "split": split, "factors": s.factors, "norm": s.norm,
        "prevalence": cfg.prevalence, "test_prevalence": test_prev,
        "pool_prevalence": pool_prev, "source_retrained": s.retrained, "notes": s.notes,
        "models": {f: {a: summarize(per_repeat[f][a]) for a in arms_of[f]} for f in arms_of},
        "repeats_detail": {f: {a: per_repeat[f][a] for a in arms_of[f]} for f in arms_of},
        "paired": paired_table(per_repeat, families),
        "delivered": {"choices": choices, "chosen_counts": _counts(
            [c["chosen"] for c in choices]), "map_model": map_model,
            "how": DELIVERED_HOW},
        "seconds_per_repeat": {f: float(np.mean(v)) for f, v in timings.items()},
        "anchor": cfg.anchor, "anchor_chosen": anchors,
        "factor_relations": s.relations,
    }
    metrics["skill_caveat"] = _caveat(int(y_test.sum()), f"the {split} hold-out")
    metrics["_shots_r0"] = shots_r0
    metrics.update(metrics_extra)
    return metrics, delivered_models


def _caveat(n_landslides: int, what: str) -> dict[str, Any] | None:
    """The caveat of a skill score from too few landslides (also a warning), or None."""
    from lsm.evaluate.sample_size import skill_caveat

    caveat = skill_caveat(n_landslides, what=what)
    if caveat is not None:
        warnings.warn(caveat["text"], UserWarning, stacklevel=3)
    return caveat


def _production(cfg: FinetuneConfig, s: _Setup) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--shots all``: deliver from every labelled point; skill by nested cross-validation."""
    from lsm.sampling.folds import random_folds, spatial_folds

    n = s.y.size
    n_pos = int(s.y.sum())
    if n_pos < 2 or n - n_pos < 2:
        raise SamplingError(f"{s.tspec.source_file or s.tspec.name}: --shots all needs at "
                            f"least 2 landslides and 2 non-landslides; the region has "
                            f"{n_pos} and {n - n_pos}")
    n_folds = int(min(cfg.cv_folds, n_pos, n - n_pos))
    # the outer folds are those 'lsm fit' cross-validates on (the spec's 'folds': block
    # size and seed), so the delivered model and the plain fit are scored on the same ones
    fs = s.tspec.folds
    if n_folds == fs.n_folds and "fold" in s.target.table:
        fold = s.target.table["fold"].to_numpy()
    elif s.xy is not None:
        fold = spatial_folds(s.xy[:, 0], s.xy[:, 1], n_folds=n_folds,
                             block_size=fs.block_size, seed=fs.seed)
    else:
        fold = random_folds(n, n_folds=n_folds, seed=fs.seed)
    how = (f"{n_folds}-fold spatial block cross-validation" if s.xy is not None else
           f"{n_folds}-fold random cross-validation (no coordinates)")
    fit = _plain_fit_setup(s)
    fit_cv = _plain_fit_cv(cfg, s, fit, fold)
    prev = float(s.y.mean())
    per_fold: dict[str, dict[str, list[dict[str, float]]]] = {
        f: {"source_only": []} for f in s.families}
    per_fold[CHOSEN] = {"delivered": []}
    choices = []
    oof = np.full(n, np.nan)
    with progress_bar("nested cross-validation of the delivered model", n_folds + 1,
                      enabled=cfg.progress) as bar:
        for k in range(n_folds):
            tr, va = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            if s.y[va].min() == s.y[va].max() or s.y[tr].min() == s.y[tr].max():
                s.notes.append(f"cross-validation fold {k + 1} holds one class only: skipped")
                bar.advance()
                continue
            model, sel = _deliver(cfg, s, tr, cfg.seed + k, fit=fit)
            Xv, yv = s.X.iloc[va], s.y[va]
            oof[va] = model.predict_proba(fit.X.iloc[va] if _is_fit(sel) else Xv)[:, 1]
            per_fold[CHOSEN]["delivered"].append(binary_metrics(yv, oof[va]))
            for f in s.families:
                p = prior_shift(s.models[f].predict_proba(Xv)[:, 1], s.src_prev, prev)
                per_fold[f]["source_only"].append(binary_metrics(yv, p))
            choices.append({"fold": k, **sel.to_dict()})
            bar.advance()
        done = len(per_fold[CHOSEN]["delivered"])
        if done < 2:
            raise SamplingError(f"{s.tspec.source_file or s.tspec.name}: only {done} of "
                                f"{n_folds} cross-validation folds hold both classes; too few "
                                "labelled points to estimate skill")
        bar.describe("delivered model on all labelled points")
        model, sel = _deliver(cfg, s, np.arange(n), cfg.seed, fit=fit)
        _flag_relations(s, sel.relations, "every labelled point")
        bar.advance()
    model = _rebase(model, prev)
    delivered_cv = summarize(per_fold[CHOSEN]["delivered"])
    production = _transfer_vs_fit(fit_cv, delivered_cv, sel, choices, how)
    X_delivered = s.X
    if _is_fit(sel):  # the map model is the plain fit: the run takes its factors and norm
        s.schema, s.norm, s.factors, X_delivered = fit.schema, fit.norm, fit.schema.factors, fit.X
        s.notes.append(production["message"])
    metrics: dict[str, Any] = {
        "mode": "production", "source_run": str(s.run.path), "source_region": s.run.region,
        "target": s.tspec.name, "shots": "all", "n": int(n), "n_landslides": n_pos,
        "split": how, "factors": s.factors, "norm": s.norm, "prevalence": cfg.prevalence,
        "pool_prevalence": prev, "source_retrained": s.retrained, "notes": s.notes,
        "models": {f: {a: summarize(v) for a, v in arms.items()} for f, arms in per_fold.items()},
        "repeats_detail": per_fold,
        "delivered": {"choices": choices, "chosen_counts": _counts([c["chosen"] for c in
                                                                    choices]),
                      "map_model": {"trained_on": "every labelled target point", "n": int(n),
                                    "n_landslides": n_pos, **sel.to_dict()},
                      "how": DELIVERED_HOW + PRODUCTION_HOW,
                      "skill": f"{how} of the whole procedure (selection included): each fold's "
                               "model was chosen and trained without that fold"},
        "factor_relations": s.relations,
        "production": production,
    }
    metrics["skill_caveat"] = _caveat(n_pos, f"{how}, each landslide scored once")
    metrics["_shots_r0"] = np.arange(n)
    done = np.isfinite(oof)
    metrics["_test_predictions"] = (
        pd.DataFrame({"label": s.y[done], "delivered (nested CV)": oof[done]}),
        f"{how}: each point scored by the delivered procedure run without its fold")
    metrics["_delivered_fit"] = (X_delivered, s.y, sel, prev)
    return metrics, {DELIVERED: model}


@dataclass
class _PlainFit:
    """The target's labelled points as ``lsm fit`` sees them, and the families it trains."""

    schema: Any
    norm: str
    X: Any
    families: list[str]
    blocks: np.ndarray | None = None  # spatial block of each row, as the outer folds'


def _plain_fit_setup(s: _Setup) -> _PlainFit:
    """``lsm fit --source <target>``'s design matrix: the target's own factors (less those
    its spec excludes from transfer) and 'lsm fit''s default normalisation."""
    from lsm.config.run import FitConfig
    from lsm.sampling.folds import block_ids, default_block_size
    from lsm.stack.features import FeatureSchema
    from lsm.workflows.fit import train_matrix

    norm = str(FitConfig.model_fields["norm"].default)
    factors = [f for f in s.tspec.transfer_factor_names if f in s.target.kinds]
    schema = FeatureSchema.from_table(s.target.table, s.target.kinds, factors)
    blocks = None
    if s.xy is not None:  # the inner folds group the same blocks as the outer ones
        x, y = s.xy[:, 0], s.xy[:, 1]
        blocks = block_ids(x, y, s.tspec.folds.block_size or default_block_size(x, y))
    return _PlainFit(schema, norm, train_matrix(s.target, schema, norm),
                     target_candidates(s.families), blocks)


def _plain_fit_cv(cfg: FinetuneConfig, s: _Setup, fit: _PlainFit,
                  fold: np.ndarray) -> dict[str, Any]:
    """Each family's plain fit, cross-validated as 'lsm fit' does, on the outer folds."""
    from lsm.evaluate.cv import cross_validate

    out = {}
    for fam in fit.families:
        res = cross_validate(lambda fam=fam: make_model(fam, seed=cfg.seed, device=cfg.device),
                             fit.X, s.y, fold)
        out[fam] = res["summary"]
    return out


def _is_fit(sel: Any) -> bool:
    from lsm.transfer.select import FIT

    return sel.chosen.kind == FIT


def _transfer_vs_fit(fit_cv: dict[str, Any], delivered: dict[str, Any], sel: Any,
                     choices: list[dict[str, Any]], how: str) -> dict[str, Any]:
    """metrics["production"]: the plain fit on the target alone beside the delivered model,
    both on the same outer folds, and what the map model is."""
    best = min(fit_cv, key=lambda f: fit_cv[f]["log_loss"]["mean"]) if fit_cv else None
    is_fit = _is_fit(sel)
    if is_fit:
        message = (f"the delivered model is the plain fit {sel.chosen.name} on the target alone "
                   "(the target's own factors and normalisation, as 'lsm fit' trains it): "
                   "in cross-validation on the labelled points the transfer "
                   f"({sel.versus.get('transfer', '?')}) did not beat it clearly in log-loss")
    else:
        message = (f"the delivered model is the transfer {sel.chosen.name}: in "
                   "cross-validation on the labelled points its log-loss was lower than that "
                   f"of the plain fit on the target alone ({sel.versus.get('fit', '?')}) by "
                   "more than 3 standard errors")
    table = [{"model": f"fit({f}) on the target alone", "cv": fit_cv[f]} for f in fit_cv]
    table.append({"model": "delivered (nested CV)", "cv": delivered})
    return {"fit_cv": {**fit_cv, "best": best}, "delivered_cv": delivered,
            "delivered_is_fit": is_fit, "map_model": sel.chosen.name,
            "chosen_per_fold": [c["chosen"] for c in choices], "folds": how,
            "table": table, "message": message,
            "chose_it": "cross-validation inside the training part of each outer fold (and, "
                        "for the map model, on every labelled point); the outer folds only "
                        "report skill"}


def _write(cfg: FinetuneConfig, s: _Setup, metrics: dict[str, Any],
           models: dict[str, Any]) -> None:
    shots_r0 = metrics.pop("_shots_r0")
    from lsm.workflows.extras import collect

    # the source models the run started from stay with it (the SHAP shift figure, the
    # refits of a stage strategy): the run never reads its source run again
    extras = collect(metrics, source_models=s.models)
    # the table: the rows the saved family models were trained on (repeat 0's shots)
    write_run(s.out, models=models, table=s.target.table.iloc[shots_r0], metrics=metrics,
              meta={
        "command": cfg.command, "kind": "finetune", "region": s.tspec.name,
        "chain": list(s.run.meta.get("chain", [s.run.region])) + [s.tspec.name],
        "families": list(models), "schema": s.schema.to_dict(), "norm": s.norm,
        "stats": s.target.stats, "source_stats": s.source_stats,
        "training_prevalence": 0.5, "prevalence": cfg.prevalence, "seed": cfg.seed,
        "shots": cfg.shots, "split": metrics["split"], "notes": s.notes + s.target.notes,
        "checksums": s.target.checksums, "source_run": str(s.run.path),
        "delivered": DELIVERED if DELIVERED in models else None,
        "spec": dump_region(s.tspec), "spec_file": str(s.tspec.source_file or s.tspec.name),
        # the target's record, and those of the source run's regions (its chain)
        RECORD: {**records(s.run), s.tspec.name: record_region(s.tspec,
                                                               progress=cfg.progress)},
        # every region the source models were trained on (their landslides: "seen")
        "source_regions": trained_names(s.run),
        **extras.meta,
    }, extras=extras, source_models=extras.source_models)


def _flag_relations(s: _Setup, relations: dict[str, dict[str, Any]], where: str) -> None:
    """Record factor relations and warn about factors whose sign differs between regions."""
    s.relations = relations
    bad = [c for c, r in relations.items() if r["disagree"]]
    if bad:
        msg = (f"factor(s) {', '.join(bad)}: related to landslides with the opposite sign in "
               f"the source and in the target ({where}); their meaning or units may differ "
               "between the regions (check the specs). The delivered model's candidates "
               "include the sources with these factors held at their mean.")
        s.notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)


def _map_scale(p: np.ndarray, train_prev: float, prevalence: float | None) -> np.ndarray:
    """Probabilities as a map shows them: shifted to ``--prevalence`` when given."""
    return prior_shift(p, train_prev, prevalence) if prevalence else p


def _rebase(model: Any, prevalence: float) -> Any:
    """Shift a model trained at ``prevalence`` to the runs' training prevalence of 0.5."""
    if 0 < prevalence < 1:
        model.intercept_ -= float(np.log(prevalence) - np.log1p(-prevalence))
    return model


def _best_source_on_shots(models: dict[str, Any], X: Any, y: np.ndarray,
                          families: list[str]) -> str:
    """The source family whose zero-shot ranking of the shots is best (AUC on the shots)."""
    from sklearn.metrics import roc_auc_score

    aucs = {f: roc_auc_score(y, models[f].predict_proba(X)[:, 1]) for f in families}
    return max(families, key=lambda f: aucs[f])


def _best_target_in_cv(sel: Any, families: list[str]) -> str:
    """The target-only family with the lowest cross-validated log-loss on the shots."""
    scores = {f: sel.cv_loss.get(f"target({f})", np.inf) for f in families}
    return min(families, key=lambda f: scores[f])


def _counts(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def paired_table(per_repeat: dict[str, dict[str, list[dict[str, float]]]],
                 families: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Paired differences (same shots, same test set) of the comparisons that matter."""
    pairs = [(CHOSEN, "delivered", CHOSEN, "source_only"),
             (CHOSEN, "delivered", CHOSEN, "target_only")]
    for f in families:
        pairs += [(CHOSEN, "delivered", f, "stage2"), (f, "stage2", f, "target_only"),
                  (f, "stage2", f, "source_only")]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for fa, a, fb, b in pairs:
        ra, rb = per_repeat[fa][a], per_repeat[fb][b]
        key = f"{fa}:{a} - {fb}:{b}" if fa != fb else f"{fa}: {a} - {b}"
        out[key] = {}
        for m in ("auc", "log_loss", "log_loss_prior_corrected"):
            if ra and m in ra[0] and m in rb[0]:
                out[key][m] = paired_difference([x[m] for x in ra], [x[m] for x in rb],
                                                higher_is_better=m == "auc")
    return out


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
    from lsm.config.params import hyper_params
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
            # the source's own hyper-parameters (tuned ones with 'lsm fit --params')
            params = hyper_params(run.models[fam]) if fam in run.models else None
            out[fam] = make_model(fam, seed=seed, device=device, params=params).fit(
                X, y, sample_weight=w)
            bar.advance()
    return out


def transfer_vs_fit_lines(metrics: dict[str, Any]) -> list[str]:
    """The report's table "transfer vs fit on the target alone" (production runs)."""
    prod = metrics.get("production")
    if not prod or not prod.get("table"):  # runs written before the table existed
        return []
    L = ["", "### Transfer vs fit on the target alone", "",
         f"Both on the same outer folds ({prod['folds']}, the folds `lsm fit` on the target "
         "uses); mean ± std over folds. The plain fit is each family as `lsm fit` trains it "
         "on the target alone (its own factors and normalisation); the delivered model is "
         "the whole procedure, its choice included, run without each fold.", "",
         "| model | AUC | log-loss |", "|---|---|---|"]
    for row in prod["table"]:
        cv = row["cv"]
        L.append(f"| {row['model']} | {cv['auc']['mean']:.3f} ± {cv['auc']['std']:.3f} | "
                 f"{cv['log_loss']['mean']:.3f} ± {cv['log_loss']['std']:.3f} |")
    L += ["", f"Map model: {prod['message']}. Chosen by {prod['chose_it']}."]
    return L


def print_transfer_vs_fit(metrics: dict[str, Any], console: Any) -> None:
    """The same table on the console."""
    prod = metrics.get("production")
    if not prod or not prod.get("table"):  # runs written before the table existed
        return
    from rich.table import Table

    t = Table("model", "AUC", "log-loss",
              title=f"transfer vs fit on the target alone ({prod['folds']})")
    for row in prod["table"]:
        cv = row["cv"]
        t.add_row(row["model"], f"{cv['auc']['mean']:.3f} ± {cv['auc']['std']:.3f}",
                  f"{cv['log_loss']['mean']:.3f} ± {cv['log_loss']['std']:.3f}")
    console.print(t)
    console.print(f"map model: {prod['message']}", soft_wrap=True, markup=False)
