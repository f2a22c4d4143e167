"""What a run delivers after training: maps, figures, SHAP explanations, report.

``after_training(run_dir)`` is called at the end of ``fit`` and ``finetune``
(and by ``lsm demo``); ``lsm predict`` and ``lsm explain`` call its parts.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.errors import SpecError
from lsm.io.artifacts import read_json, write_json
from lsm.stack.features import design_matrix
from lsm.workflows.runs import Run, load_run
from lsm.workflows.sources import is_multi_source, run_matrix


def after_training(run_dir: Path, *, predict: bool = True, explain: bool = True,
                   progress: bool = True, console: Any = None) -> dict[str, Any]:
    """Write maps (raster regions) or unit tables (table regions), evaluation figures,
    SHAP and ``report.md``."""
    run = load_run(run_dir)
    say = console.print if console is not None else (lambda *a, **k: None)
    outputs: dict[str, Any] = {"maps": [], "figures": {}, "explain": {}}
    outputs["figures"] = evaluation_figures(run)
    if predict and is_multi_source(run.meta):
        say(f"{run.region} pools several source regions: no maps (there is no single grid)")
    elif predict:
        from lsm.workflows.predict import predict_region

        maps = predict_region(run, progress=progress)
        outputs["maps"].append(maps)
        say(map_summary(maps))
    if explain:
        outputs["explain"] = explain_run(run, progress=progress)
        say(f"SHAP explanations -> {run.path / 'figures'}/")
    write_json(run.path / "outputs.json", outputs)
    from lsm.workflows.report_md import write_report

    report = write_report(run, outputs)
    say(f"report -> {report}")
    return outputs


def map_summary(maps: dict[str, Any]) -> str:
    """One line naming what a map set (raster or units) wrote, and lines saying which base
    rate its probabilities carry and what its zone table counts."""
    unc = (f"; uncertainty: std of P over {maps['uncertainty_replicates']} bootstrap refits"
           if maps.get("uncertainty_replicates") else "")
    # what the numbers carry: the base rate of P and what the zone table counts
    extra = "".join(f"\n  {what}: {(maps.get(key) or {}).get('text')}" for key, what in
                    (("base_rate", "probabilities"), ("zone_rates", "zone table"))
                    if (maps.get(key) or {}).get("text"))
    if maps.get("kind") == "units":
        files = ", ".join(Path(maps[k]).suffix[1:] for k in ("table", "csv", "gpkg")
                          if k in maps)
        return (f"unit predictions -> {Path(maps['table']).parent}/ ({maps['family']}: "
                f"probability and zone per unit, {files}{unc}){extra}")
    zones = "zones withheld (no skill), " if maps.get("zones_withheld") else "zones GeoTIFF, "
    return (f"maps -> {Path(maps['probability']).parent}/ ({maps['family']}: probability COG, "
            f"{zones}PNG quick-looks{unc}){extra}")


def source_models(run: Run) -> dict[str, Any] | None:
    """The source models a fine-tune run started from, on the run's own factors.

    The copies the run keeps in ``source_model/`` (covered by its manifest); None when it
    keeps none. The source run named in ``model.json`` is never read: it may have been
    moved, changed or replaced since, and a path stored relative to the folder the
    fine-tune ran in would name whatever lies there now.
    """
    from lsm.workflows.extras import kept_source_models

    kept = kept_source_models(run)
    if kept is None and run.meta["kind"] == "finetune" and run.meta.get("source_run"):
        warnings.warn(f"{run.path}: keeps no copy of its source models (written by an older "
                      "lsm); no source importance comparison (run the fine-tune again)",
                      UserWarning, stacklevel=2)
    return kept


def _table_and_matrix(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = run.training_table()
    return table, run_matrix(run, table, run.schema)


def evaluation_figures(run: Run) -> dict[str, str]:
    """ROC, success/prediction-rate and reliability figures (fit) or the arms (finetune)."""
    from lsm.evaluate import figures as fig

    figdir = run.path / "figures"
    figdir.mkdir(exist_ok=True)
    metrics = read_json(run.path / "metrics.json")
    out: dict[str, str] = {}
    if run.meta["kind"] == "finetune":
        what = (f"every labelled point, {metrics['split']}"
                if metrics.get("mode") == "production"
                else f"K = {metrics['shots']} ({metrics['repeats']} repeats)")
        p = fig.plot_arms(metrics, figdir / "arms.png",
                          f"{metrics['source_region']} -> {metrics['target']}, {what}")
        out["arms"] = str(p)
        from lsm.workflows.extras import checked_file

        path = checked_file(run, "test_predictions")
        if path is not None:
            from lsm.workflows.finetune import PIXEL_COLUMNS, UNIT_COLUMN

            preds = pd.read_parquet(path).drop(columns=[*PIXEL_COLUMNS, UNIT_COLUMN],
                                               errors="ignore")
            y = preds.pop("label").to_numpy()
            curves = {c: (y, preds[c].to_numpy()) for c in preds.columns
                      if np.isfinite(preds[c]).all()}
            where = "nested CV" if metrics.get("mode") == "production" else "target test set"
            out["roc"] = str(fig.plot_roc(curves, figdir / "roc.png",
                                          f"{run.region}: ROC on the {where}"))
            rel, note = _reliability_curves(curves, metrics)
            out["reliability"] = str(fig.plot_reliability(
                rel, figdir / "reliability.png", f"{run.region}: calibration on the {where}",
                note=note))
            out["test_predictions"] = run.meta["test_predictions"]["what"]
        return out
    table = run.training_table()
    y = table["label"].to_numpy()
    curves = {f: (y, table[f"oof_{f}"].to_numpy()) for f in run.models
              if f"oof_{f}" in table and np.isfinite(table[f"oof_{f}"]).all()}
    if curves:
        out["roc"] = str(fig.plot_roc(curves, figdir / "roc.png",
                                      f"{run.region}: spatial cross-validation ROC"))
        from lsm.workflows.predict import _best_family

        rel, note = _reliability_curves(curves, metrics, delivered=_best_family(run))
        out["reliability"] = str(fig.plot_reliability(
            rel, figdir / "reliability.png", f"{run.region}: calibration (out-of-fold)",
            note=note))
    return out


def _reliability_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]],
                        metrics: dict[str, Any], *, delivered: str | None = None
                        ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """The two curves a calibration figure shows, and a note on their base rate.

    The delivered model (a fine-tune's ``delivered ...`` column; a fit's mapped family)
    and the best other forecast by log-loss on the same points.  A fine-tune study whose
    labelled pool is imbalanced (its landslide share, known from the inventory and not
    from the test labels, differs from 50 % by more than 0.1) and that has no
    ``--prevalence`` shows every forecast shifted from 50 % to that share: the delivered
    map says which base rate its P carries, and the figure says which one it shows.
    """
    from sklearn.metrics import log_loss

    from lsm.transfer.prior import prior_shift

    names = list(curves)
    main = next((c for c in names if c.startswith("delivered")), delivered)
    if main not in curves:
        main = names[0]

    def loss(c: str) -> float:
        y, p = curves[c]
        return float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))

    others = [c for c in names if c != main]
    chosen = {f"{main} (mapped model)" if not main.startswith("delivered") else main:
              curves[main]}
    if others:
        best = min(others, key=loss)
        chosen[f"{best} (best other by log-loss here)"] = curves[best]
    pool = metrics.get("pool_prevalence")
    study = metrics.get("mode") == "study"
    if study and metrics.get("prevalence") is None and isinstance(pool, float) \
            and abs(pool - 0.5) > 0.1:
        chosen = {k: (y, prior_shift(np.asarray(p, dtype="float64"), 0.5, pool))
                  for k, (y, p) in chosen.items()}
        note = (f"P shifted from 50 % to the pool's landslide share {pool:.1%} (known from "
                "the inventory, not the test labels)")
    elif metrics.get("prevalence") is not None:
        note = f"P corrected to --prevalence {metrics['prevalence']:.1%}"
    elif study:
        note = "P as the map shows it: trained at a 50 % landslide share (balanced shots)"
    elif metrics.get("mode") == "production":
        note = "nested-CV P at the labelled points' landslide share"
    else:
        note = "out-of-fold P at the training points' landslide share"
    shown = (f"shown: the delivered model and the best of {len(curves) - 1} others"
             if len(curves) > len(chosen) else "")
    return chosen, note + (f"; {shown}" if shown else "")


def explain_run(run: Run, *, n_explain: int = 300, seed: int = 0,
                progress: bool = False, to: Path | None = None) -> dict[str, Any]:
    """SHAP per family: importance bar, beeswarm, and for fine-tuned runs the shift.

    ``n_explain`` rows of the training table are explained (a seeded sample),
    against the explainer's background sample (``DEFAULT_BACKGROUND`` rows), so
    the cost does not grow with the table; ``progress`` shows one step per family.
    ``to``: a staging folder to write ``figures/`` and ``shap.json`` into (the paths
    returned name them in the run folder).
    """
    from lsm.workflows.progress import progress_bar

    base = Path(to) if to is not None else run.path
    figdir = base / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    table, X = _table_and_matrix(run)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(X), size=min(n_explain, len(X)), replace=False)
    Xe = X.iloc[idx]
    sources = source_models(run) if run.meta["kind"] == "finetune" else None
    src_region = str(run.meta.get("chain", ["source"])[-2:][0])
    out: dict[str, Any] = {}
    with progress_bar(f"SHAP ({len(Xe)} rows explained)", len(run.models),
                      enabled=progress) as bar:
        for fam, model in run.models.items():
            bar.describe(f"SHAP {fam} ({len(Xe)} rows explained)")
            entry = _explain_family(run, fam, model, X, Xe, sources, src_region, figdir, seed)
            out[fam] = {k: (str(run.path / Path(v).relative_to(base))
                            if k in ("bar", "beeswarm", "shift") else v)
                        for k, v in entry.items()}
            bar.advance()
    write_json(base / "shap.json", out)
    return out


def _explain_family(run: Run, fam: str, model: Any, X: Any, Xe: Any, sources: Any,
                    src_region: str, figdir: Path, seed: int) -> dict[str, Any]:
    from lsm.explain.plots import plot_beeswarm, plot_importance_bar, plot_importance_shift
    from lsm.explain.shap_values import explain_model, factor_importance

    res = explain_model(model, X, Xe, seed=seed)
    imp = factor_importance(res)
    entry = {"importance": {k: float(v) for k, v in imp.items()},
             "bar": str(plot_importance_bar(imp, figdir / f"shap_importance_{fam}.png",
                                            f"{run.region}: factor importance ({fam})")),
             "beeswarm": str(plot_beeswarm(res, figdir / f"shap_beeswarm_{fam}.png",
                                           f"{run.region}: SHAP values ({fam})"))}
    if sources is not None and fam in sources:
        src_model = sources[fam]
        if list(getattr(src_model, "feature_names_in_", [])) == list(X.columns):
            src_imp = factor_importance(explain_model(src_model, X, Xe, seed=seed))
            entry["source_importance"] = {k: float(v) for k, v in src_imp.items()}
            entry["shift"] = str(plot_importance_shift(
                src_imp, imp, figdir / f"shap_shift_{fam}.png",
                f"{fam}: what the transfer changed ({src_region} -> {run.region})"))
    return entry


def shap_maps(run: Run, *, family: str | None = None, region: str | None = None, top: int = 3,
              out: Path | None = None, progress: bool = True,
              write_to: Path | None = None) -> list[str]:
    """Per-pixel SHAP GeoTIFFs of the ``top`` most important factors, block by block.

    Each pixel's value is the factor's contribution to the model output (in
    the explainer's units: log-odds for lr/xgb/mlp, probability for rf),
    computed over the lazy stack like prediction and written as float32 COGs
    whose band is described as ``SHAP contribution of <factor> (<units>)``.
    xgb and lr are fast (native TreeSHAP, closed form); SHAP of a random forest
    or the MLP over every pixel is slow: prefer xgb or lr for maps.
    """
    from lsm.explain.shap_values import explain_model, factor_importance, pixel_contributions
    from lsm.io.raster_write import write_value_cog
    from lsm.mapping.predict import predict_raster
    from lsm.stack.clean import name_categories
    from lsm.workflows.predict import _best_family, region_stats_for
    from lsm.workflows.region import load_region_data
    from lsm.workflows.region_record import region_for_run

    spec = region_for_run(run, region)
    if spec.is_table:
        raise SpecError(f"{spec.source_file or spec.name}: SHAP maps need a raster region")
    family = family or _best_family(run)
    model = run.models[family]
    _, X_bg = _table_and_matrix(run)
    data = load_region_data(spec, progress=progress, factors=run.schema.factors)
    stats = region_stats_for(run, spec, data.stats)
    source_stats = run.meta.get("source_stats") or run.stats

    def contributions(table: pd.DataFrame) -> pd.DataFrame:
        X = design_matrix(name_categories(table, spec), run.schema, norm=run.norm,
                          region_stats=stats, source_stats=source_stats, warn_unknown=False)
        return pixel_contributions(model, X, X_bg)

    sample = X_bg.sample(min(300, len(X_bg)), random_state=0)
    importance = factor_importance(explain_model(model, X_bg, sample))
    ranked = list(importance.index)[:top]
    units = importance.attrs["units"]
    assert data.stack is not None
    out = Path(out or run.path / "maps")
    written = []
    for f in ranked:
        da = predict_raster(data.stack, lambda t, f=f: contributions(t)[f].to_numpy(),
                            factors=run.schema.factors, value_range=None, name=f"shap_{f}")
        path = Path(write_to or out) / f"{spec.name}_{family}_shap_{f}.tif"
        write_value_cog(da, path, description=f"SHAP contribution of {f} ({units})",
                        units=units, tags={"QUANTITY": f"SHAP contribution of {f}",
                                           "FACTOR": f, "MODEL": family, "UNITS": units})
        written.append(str(out / path.name))
    return written


def record_maps(run: Run, maps: dict[str, Any], *, to: Path | None = None) -> Path:
    """Add (or replace) a map set in the run's ``outputs.json`` and rewrite its report
    (written into ``to``, a staging folder committed with the map set, when given)."""
    from lsm.workflows.report_md import write_report

    path = run.path / "outputs.json"
    outputs = read_json(path) if path.exists() else {"maps": [], "figures": {}, "explain": {}}
    kept = [m for m in outputs.get("maps", [])
            if (m.get("region"), m.get("family")) != (maps["region"], maps["family"])]
    outputs["maps"] = [*kept, maps]
    write_json(Path(to) / "outputs.json" if to is not None else path, outputs)
    return write_report(run, outputs, to=to)
