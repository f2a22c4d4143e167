"""``lsm predict``: susceptibility maps of a run's models over a raster region."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.config.spec import RegionSpec, load_region
from lsm.errors import FactorMismatchError, SpecError
from lsm.io.artifacts import write_json
from lsm.stack.clean import name_categories
from lsm.stack.features import design_matrix
from lsm.transfer.prior import prior_shift
from lsm.workflows.runs import Run


def region_stats_for(run: Run, spec: RegionSpec, data_stats: dict[str, Any] | None
                     ) -> dict[str, Any]:
    """Statistics that standardise ``spec``'s factors: the run's own when it was
    trained in this region, else the region's (computed from its stack)."""
    if spec.name == run.region or data_stats is None:
        return run.stats
    return data_stats


def make_predict_fn(run: Run, family: str, spec: RegionSpec, region_stats: dict[str, Any],
                    *, prevalence: float | None = None) -> Callable[[pd.DataFrame], np.ndarray]:
    """A row-wise ``table of raw factor values -> P(landslide)`` function.

    It names categories with the region's legend, encodes and normalises
    exactly as in training, and (with ``prevalence``) shifts the base rate
    from the model's training prevalence to the expected one.
    """
    model = run.models[family]
    schema = run.schema
    source_stats = run.meta.get("source_stats") or run.stats
    train_prev = float(run.meta.get("training_prevalence", 0.5))
    prevalence = prevalence if prevalence is not None else run.meta.get("prevalence")

    def predict(table: pd.DataFrame) -> np.ndarray:
        named = name_categories(table, spec)
        X = design_matrix(named, schema, norm=run.norm, region_stats=region_stats,
                          source_stats=source_stats, warn_unknown=False)
        p = model.predict_proba(X)[:, 1]
        return prior_shift(p, train_prev, prevalence) if prevalence else p

    return predict


def predict_maps(run: Run, *, region: str | None = None, family: str | None = None,
                 out: Path | None = None, thresholds: list[float] | None = None,
                 prevalence: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Write probability COG, zones GeoTIFF, quick-looks and zone statistics.

    Returns a dict with the written paths and the zone table.
    """
    from lsm.io.raster_write import write_probability_cog, write_zones_geotiff
    from lsm.mapping.predict import predict_raster
    from lsm.mapping.quicklook import quicklook_png
    from lsm.mapping.zones import ZONE_COLORS, ZONE_NAMES, classify_zones, zone_statistics
    from lsm.workflows.region import load_region_data

    spec = load_region(region) if region else _run_spec(run)
    if spec.is_table:
        raise SpecError(f"{spec.source_file or spec.name}: '{spec.name}' is a table region; "
                        "maps need a raster region")
    family = family or _best_family(run)
    if family not in run.models:
        raise FactorMismatchError(f"run {run.path} has no model {family!r} "
                                  f"(it has {', '.join(run.models)})")
    missing = [f for f in run.schema.factors if f not in spec.factor_names]
    if missing:
        raise FactorMismatchError(f"{spec.source_file or spec.name}: region lacks factor(s) "
                                  f"{missing} that the model was trained on")
    data = load_region_data(spec, progress=progress, factors=run.schema.factors)
    stats = region_stats_for(run, spec, data.stats)
    fn = make_predict_fn(run, family, spec, stats, prevalence=prevalence)
    assert data.stack is not None
    prob = predict_raster(data.stack, fn, factors=run.schema.factors)
    out = Path(out or run.path / "maps")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.name}_{family}"
    prob_path = out / f"{stem}_probability.tif"
    write_probability_cog(prob, prob_path)
    # read back the written map: zones and PNGs never recompute the model
    import rioxarray

    chunks = {"band": 1, "y": 1024, "x": 1024}
    prob_disk = rioxarray.open_rasterio(prob_path, masked=True, chunks=chunks).squeeze(
        "band", drop=True)
    zones, cuts = classify_zones(prob_disk, thresholds=thresholds)
    zones_path = out / f"{stem}_zones.tif"
    write_zones_geotiff(zones, zones_path, names=ZONE_NAMES, colors=ZONE_COLORS)

    table = data.table
    ls = table[table["label"] == 1]
    zstats = zone_statistics(zones, ls["row"].to_numpy(), ls["col"].to_numpy())
    pts = (ls["x"].to_numpy(), ls["y"].to_numpy())
    elev = data.stack["elevation"] if "elevation" in data.stack else None
    png_p = quicklook_png(prob_disk, out / f"{stem}_probability.png", kind="probability",
                          hillshade_from=elev, points=pts,
                          title=f"{spec.name}: P(landslide), {family} ({run.meta['kind']} run)")
    zones_disk = rioxarray.open_rasterio(zones_path, chunks=chunks).squeeze("band", drop=True)
    png_z = quicklook_png(zones_disk, out / f"{stem}_zones.png", kind="zones",
                          hillshade_from=elev, points=pts,
                          title=f"{spec.name}: susceptibility zones, {family}")
    rates = _rate_curves(run, spec, prob_disk, ls, out / f"{stem}_rates.png")
    result = {
        **rates,
        "region": spec.name, "family": family, "probability": str(prob_path),
        "zones": str(zones_path), "probability_png": str(png_p), "zones_png": str(png_z),
        "thresholds": [float(c) for c in cuts], "zone_method": "user" if thresholds else
        "quantile", "zone_statistics": zstats.to_dict(orient="records"),
        "prevalence": prevalence if prevalence is not None else run.meta.get("prevalence"),
    }
    write_json(out / f"{stem}_zones.json", result)
    return result


def _rate_curves(run: Run, spec: RegionSpec, prob: Any, landslides: pd.DataFrame,
                 path: Path) -> dict[str, Any]:
    """Success-rate (landslides the model saw) and prediction-rate (landslides it did
    not see) curves of a probability map."""
    import xarray as xr

    from lsm.evaluate.curves import prediction_rate_curve, success_rate_curve
    from lsm.evaluate.figures import plot_rate_curves

    n = prob.sizes["x"] * prob.sizes["y"]
    step = max(1, int(np.ceil(np.sqrt(n / 2e6))))  # at most ~2 M pixels for the area axis
    p_all = prob[::step, ::step].values.ravel()
    p_all = p_all[np.isfinite(p_all)]
    rows, cols = landslides["row"].to_numpy(), landslides["col"].to_numpy()
    p_ls = prob.isel(y=xr.DataArray(rows, dims="pt"), x=xr.DataArray(cols, dims="pt")).values
    seen = np.zeros(len(rows), dtype=bool)
    if spec.name == run.region:
        tt = run.training_table()
        if {"row", "col"} <= set(tt.columns):
            train = set(zip(tt.loc[tt["label"] == 1, "row"], tt.loc[tt["label"] == 1, "col"]))
            seen = np.array([(r, c) in train for r, c in zip(rows, cols)], dtype=bool)
    ok = np.isfinite(p_ls)
    success = success_rate_curve(p_ls[seen & ok], p_all) if (seen & ok).any() else None
    prediction = (prediction_rate_curve(p_ls[~seen & ok], p_all)
                  if (~seen & ok).any() else None)
    if success is None and prediction is None:
        return {}
    png = plot_rate_curves(success, prediction, path,
                           f"{spec.name}: success / prediction rate ({path.stem.split('_')[-2]})")
    return {"rates": str(png),
            "success_rate_auc": None if success is None else float(success.auc),
            "prediction_rate_auc": None if prediction is None else float(prediction.auc),
            "n_seen_landslides": int((seen & ok).sum()),
            "n_unseen_landslides": int((~seen & ok).sum())}


def _run_spec(run: Run) -> RegionSpec:
    """The region a run was trained in, from the spec file it recorded."""
    spec_file = run.meta.get("spec_file")
    try:
        return load_region(spec_file)
    except SpecError:
        return load_region(run.region)


def _best_family(run: Run) -> str:
    """The model a run delivers by default.

    A fine-tune run maps its delivered model (chosen on the shots, never on
    the hold-out).  A fit run maps the family with the best spatial-CV AUC
    on the source data; runs written before the delivered model existed, the
    family with the best mean stage-2 AUC (xgb if unknown).
    """
    from lsm.io.artifacts import read_json

    delivered = run.meta.get("delivered")
    if delivered and delivered in run.models:
        return str(delivered)

    try:
        m = read_json(run.path / "metrics.json")
    except Exception:
        m = {}
    scores: dict[str, float] = {}
    if "cv" in m:
        scores = {f: r["summary"]["auc"]["mean"] for f, r in m["cv"].items()}
    elif "models" in m:
        scores = {f: r["stage2"]["auc"]["mean"] for f, r in m["models"].items()}
    scores = {f: s for f, s in scores.items() if f in run.models and s == s}
    if scores:
        return max(scores, key=scores.get)  # type: ignore[arg-type]
    return "xgb" if "xgb" in run.models else next(iter(run.models))
