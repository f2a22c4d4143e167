"""``lsm predict``: susceptibility maps of a run's models over a raster region."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.config.spec import RegionSpec
from lsm.errors import ArtifactError, FactorMismatchError, SpecError
from lsm.io.artifacts import read_json, write_json
from lsm.stack.clean import name_categories
from lsm.stack.features import design_matrix
from lsm.transfer.prior import prior_shift
from lsm.workflows.region_record import region_for_run
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
        named = name_categories(table, spec, as_category=True)
        X = design_matrix(named, schema, norm=run.norm, region_stats=region_stats,
                          source_stats=source_stats, warn_unknown=False)
        p = model.predict_proba(X)[:, 1]
        return prior_shift(p, train_prev, prevalence) if prevalence else p

    return predict


def predict_maps(run: Run, *, region: str | None = None, family: str | None = None,
                 out: Path | None = None, thresholds: list[float] | None = None,
                 prevalence: float | None = None, uncertainty: int | None = None,
                 progress: bool = True, force_zones: bool = False,
                 write_to: Path | None = None,
                 spec: RegionSpec | None = None) -> dict[str, Any]:
    """Write probability COG, zones GeoTIFF, quick-looks and zone statistics.

    ``write_to``: the staging folder the files are written into (named in the result as
    in ``out``); :func:`predict_region` commits them into ``out`` as one set.

    The zones are withheld (with a warning) when the run's fine-tune found no skill
    above chance (:func:`zones_withheld`), unless ``force_zones``.

    ``uncertainty``: bootstrap refits behind the uncertainty COG written beside the
    probabilities (0: none; None: :func:`lsm.workflows.uncertainty.default_replicates`).
    ``region`` (a name or spec path) or ``spec`` (already checked) is the region to map;
    default the run's own (:func:`lsm.workflows.region_record.region_for_run`).
    Returns a dict with the written paths and the zone table.
    """
    from lsm.io.raster_write import write_probability_cog, write_zones_geotiff
    from lsm.mapping.predict import predict_raster
    from lsm.mapping.quicklook import quicklook_png
    from lsm.mapping.zones import ZONE_COLORS, ZONE_NAMES, classify_zones, zone_statistics

    spec = spec or region_for_run(run, region)
    if spec.is_table:
        raise SpecError(f"{spec.source_file or spec.name}: '{spec.name}' is a table region; "
                        "maps need a raster region")
    family, data, stats, fn = _model_on_region(run, family, spec, prevalence=prevalence,
                                               progress=progress)
    rate = base_rate(run, spec, data.table, prevalence)
    assert data.stack is not None
    prob = predict_raster(data.stack, fn, factors=run.schema.factors)
    final = Path(out or run.path / "maps")
    out = Path(write_to or final)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.name}_{family}"
    prob_path = out / f"{stem}_probability.tif"
    write_probability_cog(prob, prob_path, base_rate=rate["text"], prevalence=rate["carried"])
    # read back the written map: zones and PNGs never recompute the model
    import rioxarray

    chunks = {"band": 1, "y": 1024, "x": 1024}
    prob_disk = rioxarray.open_rasterio(prob_path, masked=True, chunks=chunks).squeeze(
        "band", drop=True)
    table = data.table
    ls = table[table["label"] == 1]
    pts = (ls["x"].to_numpy(), ls["y"].to_numpy())
    rows, cols = ls["row"].to_numpy(), ls["col"].to_numpy()
    seen = _seen_mask(run, spec, family, rows, cols)
    elev = data.stack["elevation"] if "elevation" in data.stack else None
    png_p = quicklook_png(prob_disk, out / f"{stem}_probability.png", kind="probability",
                          hillshade_from=elev, points=pts,
                          title=f"{spec.name}: P(landslide), {family} ({run.meta['kind']} run)"
                          f"\nP at a {_pct(rate['carried'])} landslide share"
                          + (" (--prevalence)" if rate["prevalence"] is not None else
                             " (training points); --prevalence sets the region's"))
    withheld = zones_withheld(run, force_zones)
    zone_files: dict[str, Any] = {"zones_withheld": withheld}
    cuts: list[float] = []
    zstats = pd.DataFrame()
    if withheld is None:
        zones, cuts = classify_zones(prob_disk, thresholds=thresholds)
        zones_path = out / f"{stem}_zones.tif"
        write_zones_geotiff(zones, zones_path, names=ZONE_NAMES, colors=ZONE_COLORS)
        zstats = zone_statistics(zones, rows, cols, seen=seen)
        zones_disk = rioxarray.open_rasterio(zones_path, chunks=chunks).squeeze("band",
                                                                               drop=True)
        png_z = quicklook_png(zones_disk, out / f"{stem}_zones.png", kind="zones",
                              hillshade_from=elev, points=pts,
                              title=f"{spec.name}: susceptibility zones, {family}")
        zone_files = {"zones": str(zones_path), "zones_png": str(png_z)}
    else:
        warnings.warn(withheld, UserWarning, stacklevel=2)
        if write_to is None:
            _remove_stale(out, stem, ("_zones.tif", "_zones.png", "_zones.qml",
                                      "_zones.tif.aux.xml"))
    rates = _rate_curves(run, spec, prob_disk, ls, out / f"{stem}_rates.png", family,
                         seen=seen)
    unc = _uncertainty_map(run, family, spec, data, stats, out / f"{stem}_uncertainty.tif",
                           replicates=uncertainty, prevalence=rate["prevalence"], elev=elev,
                           points=pts, progress=progress)
    result = {
        **rates, **unc,
        "region": spec.name, "family": family, "probability": str(prob_path),
        **zone_files, "probability_png": str(png_p),
        "thresholds": [float(c) for c in cuts], "zone_method": "user" if thresholds else
        "quantile", "zone_statistics": zstats.to_dict(orient="records"),
        "zone_rates": zone_rates(run, family, zstats, "landslide pixels"),
        "prevalence": rate["prevalence"], "base_rate": rate,
    }
    result = _set_files(_relocate(result, out, final), out)
    write_json(out / f"{stem}_zones.json", result)
    return result


def _relocate(result: dict[str, Any], written: Path, final: Path) -> dict[str, Any]:
    """``result`` with the paths of files written in ``written`` named in ``final``."""
    if Path(written) == Path(final):
        return result
    w = str(written)
    return {k: (str(Path(final) / Path(v).relative_to(w))
                if isinstance(v, str) and (v == w or v.startswith(w + "/")) else v)
            for k, v in result.items()}


def _set_files(result: dict[str, Any], written: Path) -> dict[str, Any]:
    """Record the sha256 of every file of the map set in its ``*_zones.json``
    (``set_files``: name -> sha256), so that a reader can check that the files beside it
    are the ones it describes (:func:`check_map_set`)."""
    from lsm.io.artifacts import sha256_file

    files = {}
    for k, v in result.items():
        if isinstance(v, str) and k != "region" and Path(v).suffix in (".tif", ".png",
                                                                        ".parquet", ".csv",
                                                                        ".gpkg"):
            p = Path(written) / Path(v).name
            if p.is_file():
                files[Path(v).name] = sha256_file(p)
    return {**result, "set_files": files}


def check_map_set(zones_json: Path) -> dict[str, Any]:
    """Read a map set's ``*_zones.json`` and check that every file it lists is beside it
    with the recorded sha256 (one-line :class:`~lsm.errors.ArtifactError` otherwise)."""
    from lsm.errors import ArtifactError
    from lsm.io.artifacts import sha256_file

    zones_json = Path(zones_json)
    doc = read_json(zones_json)
    files = doc.get("set_files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        raise ArtifactError(f"{zones_json}: records no files of its map set")
    for name, digest in files.items():
        p = zones_json.parent / str(name)
        if not p.is_file() or sha256_file(p) != digest:
            raise ArtifactError(f"{p}: not the file {zones_json.name} describes (missing or "
                                "changed since the map set was written); predict again")
    return doc


def _rate_curves(run: Run, spec: RegionSpec, prob: Any, landslides: pd.DataFrame,
                 path: Path, family: str, *, seen: np.ndarray | None = None
                 ) -> dict[str, Any]:
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
    if seen is None:
        seen = _seen_landslides(run, family, spec, rows, cols)
    ok = np.isfinite(p_ls)
    success = success_rate_curve(p_ls[seen & ok], p_all) if (seen & ok).any() else None
    prediction = (prediction_rate_curve(p_ls[~seen & ok], p_all)
                  if (~seen & ok).any() else None)
    if success is None and prediction is None:
        return {}
    png = plot_rate_curves(success, prediction, path,
                           f"{spec.name}: success / prediction rate ({path.stem.split('_')[-2]})")
    caveat = None
    if prediction is not None:
        from lsm.evaluate.sample_size import skill_caveat

        caveat = skill_caveat(int((~seen & ok).sum()), what="the prediction-rate curve's "
                              "landslides, those the map model never saw")
        if caveat is not None:
            warnings.warn(caveat["text"], UserWarning, stacklevel=3)
    return {"rates": str(png), "prediction_rate_caveat": caveat,
            "success_rate_auc": None if success is None else float(success.auc),
            "prediction_rate_auc": None if prediction is None else float(prediction.auc),
            "n_seen_landslides": int((seen & ok).sum()),
            "n_unseen_landslides": int((~seen & ok).sum())}


def _model_on_region(run: Run, family: str | None, spec: RegionSpec, *,
                     prevalence: float | None, progress: bool
                     ) -> tuple[str, Any, dict[str, Any], Callable[[pd.DataFrame], np.ndarray]]:
    """The family to map (default: the run's delivered or best), checked against the run
    and the region's factors before the region is loaded; then the region's data, its
    statistics as the run normalises them, and the table -> probability function."""
    from lsm.workflows.region import load_region_data

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
    return family, data, stats, make_predict_fn(run, family, spec, stats,
                                                prevalence=prevalence)


def _seen_mask(run: Run, spec: RegionSpec, family: str, rows: np.ndarray, cols: np.ndarray
               ) -> np.ndarray:
    """Which landslide pixels of ``spec`` the mapped model was trained on (none in a
    region the run was not trained in): :func:`_seen_landslides`."""
    return _seen_landslides(run, family, spec, rows, cols)


def _seen_landslides(run: Run, family: str, spec: RegionSpec, rows: np.ndarray,
                     cols: np.ndarray) -> np.ndarray:
    """Which landslide pixels (``rows``, ``cols``) of ``spec``'s region the mapped model
    was trained on.

    Only in a region the run was trained in (:func:`region_identity`). A fine-tune's
    delivered map model is re-fitted on every labelled point outside the hold-out (every
    point with ``--shots all``); the other models on the rows of
    ``training_table.parquet`` (a fit's points, repeat 1's shots; a pooled fit's rows of
    that region). In a source region of a fine-tune (its target too, when a pooled source
    had it) every landslide counts as seen: the source models were trained on all of them.
    """
    from lsm.workflows.extras import checked_file
    from lsm.workflows.finetune import PIXEL_COLUMNS
    from lsm.workflows.region_record import region_identity

    pixels = list(zip(rows.tolist(), cols.tolist(), strict=True))
    name = region_identity(run, spec)
    if name is None:
        return np.zeros(len(pixels), dtype=bool)
    if run.meta.get("kind") == "finetune" and (
            name != run.region or name in (run.meta.get("source_regions") or [])):
        return np.ones(len(pixels), dtype=bool)
    if run.meta.get("kind") == "finetune" and family == run.meta.get("delivered"):
        if run.meta.get("shots") == "all":
            return np.ones(len(pixels), dtype=bool)
        path = checked_file(run, "test_predictions")
        test = pd.read_parquet(path) if path is not None else None
        if test is not None and set(PIXEL_COLUMNS) <= set(test.columns):
            held = set(zip(test["row"].tolist(), test["col"].tolist(), strict=True))
            return np.array([px not in held for px in pixels], dtype=bool)
        # unknown is never skill: count them all as seen (success rates, labelled so)
        warnings.warn("the run records no hold-out pixels: every landslide counts as seen "
                      "(its zone table and rate curve are success rates, not skill)",
                      UserWarning, stacklevel=3)
        return np.ones(len(pixels), dtype=bool)
    tt = run.training_table()
    if "region" in tt.columns:  # a pooled run: the rows of the mapped region only
        tt = tt[tt["region"] == name]
    if not {"row", "col"} <= set(tt.columns):  # which ones trained it is unknown: all seen
        warnings.warn("the run's training table records no pixels: every landslide counts as "
                      "seen (success rates, not skill)", UserWarning, stacklevel=3)
        return np.ones(len(pixels), dtype=bool)
    pos = (tt["label"] == 1) & tt["row"].notna() & tt["col"].notna()
    train = set(zip(tt.loc[pos, "row"].tolist(), tt.loc[pos, "col"].tolist(), strict=True))
    return np.array([px in train for px in pixels], dtype=bool)


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
    key = "cv" if isinstance(m, dict) and "cv" in m else "models"
    try:
        if key == "cv":
            scores = {f: r["summary"]["auc"]["mean"] for f, r in m["cv"].items()}
        elif isinstance(m, dict) and "models" in m:
            scores = {f: r["stage2"]["auc"]["mean"] for f, r in m["models"].items()}
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ArtifactError(f"{run.path / 'metrics.json'}: malformed '{key}' "
                            f"({type(err).__name__}: {err})") from None
    for f, s in scores.items():
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))):
            raise ArtifactError(f"{run.path / 'metrics.json'}: {key}.{f}: AUC {s!r} is not a "
                                "number")
    scores = {f: s for f, s in scores.items() if f in run.models and s is not None and s == s}
    if scores:
        return max(scores, key=scores.get)  # type: ignore[arg-type]
    return "xgb" if "xgb" in run.models else next(iter(run.models))


def predict_region(run: Run, *, region: str | None = None, family: str | None = None,
                   out: Path | None = None, thresholds: list[float] | None = None,
                   prevalence: float | None = None, uncertainty: int | None = None,
                   progress: bool = True, force_zones: bool = False,
                   record: bool = False) -> dict[str, Any]:
    """Maps of a raster region (:func:`predict_maps`) or unit tables of a table region
    (:func:`predict_units`), whichever ``region`` (default: the run's) is.

    The set (probability, zones, uncertainty, quick-looks, tables, ``*_zones.json``) is
    staged and committed as one unit, replacing every file of the previous set of the same
    region and model that lsm wrote (files it did not write stay). With ``record`` the
    run's ``outputs.json`` and report are updated in the same commit (``res["report"]``).

    ``uncertainty`` is the number of bootstrap refits of the mapped model whose spread
    is written beside the probabilities (0: none; None: the default of
    :func:`lsm.workflows.uncertainty.default_replicates`).
    """
    from lsm.workflows.owned import Staged
    from lsm.workflows.runs import claim_run_dir

    # one process writes a folder at a time (a map of a run being re-fitted, two predicts
    # into one --out); a run read from read-only storage is fine with --out elsewhere.
    # An --out outside the run is a maps folder: a user's folder with other files is refused
    inside = out is None or Path(out).resolve().is_relative_to(run.path.resolve())
    root = claim_run_dir(run.path) if inside else claim_run_dir(Path(out), kind="maps")
    final = Path(out or run.path / "maps")
    spec = region_for_run(run, region)
    # the map set is written into a staging folder and committed as one unit, with the
    # run's outputs.json and report when ``record`` (all old or all new)
    stage = Staged(root)
    try:
        rel = final.resolve().relative_to(root.resolve()).as_posix()
        write_to = stage.path(rel)
        kw = dict(family=family, out=final, thresholds=thresholds, prevalence=prevalence,
                  uncertainty=uncertainty, progress=progress, force_zones=force_zones,
                  write_to=write_to)
        res = predict_units(run, spec=spec, **kw) if spec.is_table else \
            predict_maps(run, region=region, spec=spec, **kw)
        if record:
            from lsm.workflows.outputs import record_maps

            res["report"] = str(record_maps(run, res, to=stage.dir))
        prefix = "" if rel == "." else rel + "/"
        head = f"{prefix}{res['region']}_{res['family']}_"
        documents = {"outputs.json", "report.md", "report.html"} if record else set()

        def replaces(f: str) -> bool:  # the old set of this map, whatever it held
            return f in documents or (f.startswith(head) and "/" not in f[len(head):]
                                      and not f[len(head):].startswith("shap_"))

        stage.commit(replaces, last=[f"{head}zones.json"])
    finally:
        stage.discard()
    return res


def _uncertainty_map(run: Run, family: str, spec: RegionSpec, data: Any,
                     stats: dict[str, Any], path: Path, *, replicates: int | None,
                     prevalence: float | None, elev: Any, points: Any,
                     progress: bool = False) -> dict[str, Any]:
    """The uncertainty COG (+ quick-look) of a raster map, or {} when it is off."""
    from lsm.io.raster_write import write_value_cog
    from lsm.mapping.predict import predict_raster
    from lsm.mapping.quicklook import quicklook_png
    from lsm.workflows.uncertainty import DESCRIPTION, resolve_replicates, spread_fn

    n = resolve_replicates(run, family, replicates)
    if not n:
        return {}
    fn = spread_fn(run, family, spec, stats, replicates=n, prevalence=prevalence,
                   seed=int(run.meta.get("seed", 0)), progress=progress)
    da = predict_raster(data.stack, fn, factors=run.schema.factors, value_range=None,
                        name="uncertainty")
    what = DESCRIPTION.format(b=n, family=family)
    write_value_cog(da, path, description=what, units="probability",
                    tags={"QUANTITY": what, "MODEL": family, "REPLICATES": str(n),
                          "UNITS": "probability"})
    import rioxarray

    disk = rioxarray.open_rasterio(path, masked=True, chunks={"band": 1, "y": 1024,
                                                              "x": 1024}).squeeze("band",
                                                                                  drop=True)
    png = quicklook_png(disk, path.with_suffix(".png"), kind="uncertainty",
                        hillshade_from=elev, points=points,
                        title=f"{spec.name}: uncertainty, {family} ({n} bootstrap refits)")
    vals = np.asarray(disk[::4, ::4].values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return {"uncertainty": str(path), "uncertainty_png": str(png), "uncertainty_replicates": n,
            "uncertainty_median": float(np.median(vals)) if vals.size else None,
            "uncertainty_p95": float(np.percentile(vals, 95)) if vals.size else None,
            "uncertainty_what": what}


#: Columns of the per-unit table besides the factors' identity.
UNIT_COLUMNS = ("unit", "x", "y", "label", "probability", "base_rate", "zone", "zone_name")


def predict_units(run: Run, *, spec: RegionSpec | None = None, region: str | None = None,
                  family: str | None = None, out: Path | None = None,
                  thresholds: list[float] | None = None, prevalence: float | None = None,
                  uncertainty: int | None = None, progress: bool = True,
                  force_zones: bool = False, write_to: Path | None = None) -> dict[str, Any]:
    """Per-unit probabilities and zones of a table region (slope units, points).

    Writes ``<region>_<family>_units.parquet`` and ``.csv`` (one row per row of the
    region's samples table: ``unit`` = its row number, ``x``/``y`` where the spec has
    coordinates, ``label``, ``probability``, ``base_rate`` (the landslide share P
    assumes: :func:`base_rate`), ``zone`` 1..5 and ``zone_name``) and, when
    the units have coordinates or the samples file has geometry,
    ``<region>_<family>_units.gpkg``.  Zones use the raster maps' classing
    (:func:`lsm.mapping.zones.classify_zones`: quantiles 20/40/60/80 % of the units
    by default); the zone table counts units instead of pixels (``area_share`` is
    the share of units).  With an uncertainty layer (see :func:`predict_maps`) the
    tables gain a column ``uncertainty`` (std of P across the bootstrap refits).
    """
    import rioxarray  # noqa: F401  (registers .rio, which classify_zones reads)
    import xarray as xr

    from lsm.mapping.zones import ZONE_NAMES, classify_zones

    spec = spec or region_for_run(run, region)
    if not spec.is_table:
        raise SpecError(f"{spec.source_file or spec.name}: '{spec.name}' is a raster region; "
                        "use predict_maps")
    family, data, stats, fn = _model_on_region(run, family, spec, prevalence=prevalence,
                                               progress=progress)
    table = data.table
    rate = base_rate(run, spec, table, prevalence)
    if rate["prevalence"] != (prevalence if prevalence is not None
                              else run.meta.get("prevalence")):
        fn = make_predict_fn(run, family, spec, stats, prevalence=rate["prevalence"])
    p = np.asarray(fn(table), dtype=np.float64)
    withheld = zones_withheld(run, force_zones)
    units = pd.DataFrame({"unit": np.arange(len(table), dtype=np.int64)})
    for c in ("x", "y"):
        if c in table:
            units[c] = table[c].to_numpy()
    units["label"] = table["label"].to_numpy()
    units["probability"] = p
    units["base_rate"] = rate["carried"]  # the landslide share P assumes, in every row
    cuts: list[float] = []
    if withheld is None:
        zones, cuts = classify_zones(xr.DataArray(p, dims="unit"), thresholds=thresholds)
        z = np.asarray(zones.values, dtype=np.uint8)
        units["zone"] = z
        units["zone_name"] = [ZONE_NAMES.get(int(k), "no data") for k in z]
    else:
        warnings.warn(withheld, UserWarning, stacklevel=2)
    from lsm.workflows.uncertainty import DESCRIPTION, resolve_replicates, spread_fn

    n_rep = resolve_replicates(run, family, uncertainty)
    unc: dict[str, Any] = {}
    if n_rep:
        units["uncertainty"] = spread_fn(run, family, spec, stats, replicates=n_rep,
                                         prevalence=rate["prevalence"],
                                         seed=int(run.meta.get("seed", 0)),
                                         progress=progress)(table)
        u = units["uncertainty"].to_numpy()
        unc = {"uncertainty_replicates": n_rep, "uncertainty_median": float(np.median(u)),
               "uncertainty_p95": float(np.percentile(u, 95)),
               "uncertainty_what": DESCRIPTION.format(b=n_rep, family=family)}
    final = Path(out or run.path / "maps")
    out = Path(write_to or final)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.name}_{family}"
    paths = write_units(units, out / f"{stem}_units", crs=_table_crs(spec),
                        geometry=_unit_geometry(spec, len(units)))
    landslide = units["label"].to_numpy() == 1
    zstats = unit_zone_statistics(z, landslide, seen=_seen_units(run, spec, family,
                                                                 len(units))[landslide]) \
        if withheld is None else pd.DataFrame()
    result = {
        "region": spec.name, "family": family, "kind": "units", **paths,
        "zones_withheld": withheld,
        "thresholds": [float(c) for c in cuts], "zone_method": "user" if thresholds else
        "quantile", "zone_statistics": zstats.to_dict(orient="records"),
        "zone_rates": zone_rates(run, family, zstats, "landslide units"),
        "prevalence": rate["prevalence"], "base_rate": rate,
        "n_units": int(len(units)), **unc,
    }
    result = _set_files(_relocate(result, out, final), out)
    write_json(out / f"{stem}_zones.json", result)
    return result


def unit_zone_statistics(zones: np.ndarray, landslide: np.ndarray,
                         seen: np.ndarray | None = None) -> pd.DataFrame:
    """The frequency-ratio table of :func:`lsm.mapping.zones.zone_statistics` over units.

    ``area_share`` is the share of units in each zone (units count the same).  ``seen``
    (one flag per landslide unit, in order) adds the held-out / seen split of
    :func:`lsm.mapping.zones.split_seen`.
    """
    from lsm.mapping.zones import N_ZONES, frequency_table, split_seen

    zones = np.asarray(zones)
    n = np.array([(zones == k).sum() for k in range(1, N_ZONES + 1)], dtype=np.int64)
    table = frequency_table(n, zones[landslide], "n_units")
    return table if seen is None else split_seen(table, zones[landslide],
                                                 np.asarray(seen, dtype=bool))


#: A landslide share this far from the training points' is a census of the region's units,
#: not a sample balanced by design (the rule a fine-tune uses for its prior-corrected
#: log-loss).
IMBALANCED = 0.1


def base_rate(run: Run, spec: RegionSpec, table: pd.DataFrame,
              prevalence: float | None) -> dict[str, Any]:
    """Which landslide share the probabilities of a map or unit table carry, and why.

    ``--prevalence`` (or the run's own) when given; else, for a table region whose
    landslide share differs clearly from the training points' (slope units: every unit of
    the region is listed), that share, applied by default; else the training points'
    share, with a note that ``--prevalence`` exists (a raster inventory's points are
    sampled, so the region's share is unknown to lsm).

    Returns ``{"carried", "prevalence", "training", "source", "text"}``: ``carried`` is the
    share P assumes; ``prevalence`` the one applied (None: P keeps the training share).
    """
    train = float(run.meta.get("training_prevalence", 0.5))
    given = prevalence if prevalence is not None else run.meta.get("prevalence")
    if given is not None:
        src = "--prevalence" if prevalence is not None else "the run's --prevalence"
        return {"carried": float(given), "prevalence": float(given), "training": train,
                "source": src, "text": f"P corrected to a {_pct(given)} landslide share "
                f"({src}; the model was trained at {_pct(train)})"}
    if spec.is_table and "label" in table:
        y = table["label"].to_numpy()
        n1, n = int((y == 1).sum()), int(np.isin(y, (0, 1)).sum())
        if 0 < n1 < n and abs(n1 / n - train) > IMBALANCED:
            share = n1 / n
            return {"carried": share, "prevalence": share, "training": train,
                    "source": "table", "text": f"P corrected to {_pct(share)}, the table's "
                    f"landslide share ({n1:,} of {n:,} units), taken as the region's base "
                    f"rate (the model was trained at {_pct(train)}); --prevalence P sets "
                    "another"}
    balanced = (" (balanced training points)" if abs(train - 0.5) < 0.005 else
                " (its training points' share)")
    return {"carried": train, "prevalence": None, "training": train, "source": "training",
            "text": f"P assumes a {_pct(train)} landslide share{balanced}; use --prevalence "
            "P for your region's share"}


def _pct(x: float) -> str:
    x = float(x)
    return f"{x:.0%}" if abs(x * 100 - round(x * 100)) < 0.05 else f"{x:.1%}" \
        if x >= 0.01 else f"{x:.2%}"


def zone_rates(run: Run, family: str, zstats: pd.DataFrame, what: str) -> dict[str, Any]:
    """What a zone table's landslide columns measure: a prediction rate (held-out
    landslides, never trained on: skill) or a success rate (landslides the map model was
    trained on: fit, not skill), with the counts and, when every landslide was seen, the
    cross-validated figure that is the skill instead."""
    if zstats.empty or "n_heldout" not in zstats:
        return {"basis": "none", "n_heldout": 0, "n_seen": 0, "skill": None, "text": ""}
    held, seen = int(zstats["n_heldout"].sum()), int(zstats["n_seen"].sum())
    skill = _skill_text(run, family)
    if held and seen:
        basis = "prediction"
        text = (f"prediction rate: {held} held-out {what} the map model never saw "
                f"(skill); the all-landslides columns ({held + seen}) include {seen} it was "
                "trained on (success rate, not skill)")
    elif held:
        basis = "prediction"
        text = f"prediction rate: none of the {held} {what} was used to train the map model"
    elif seen:
        basis = "success"
        text = (f"success rate only: the map model was trained on all {seen} {what}, so "
                "these tables show fit, not skill" + (f"; the skill is {skill}" if skill
                                                       else ""))
    else:
        basis, text = "none", f"no {what} in valid zones"
    return {"basis": basis, "n_heldout": held, "n_seen": seen, "skill": skill, "text": text}


def _skill_text(run: Run, family: str) -> str | None:
    """The cross-validated (or hold-out) skill of the mapped model, as a phrase."""
    try:
        m = read_json(run.path / "metrics.json")
    except Exception:
        return None
    if run.meta.get("kind") == "fit":
        s = ((m.get("cv") or {}).get(family) or {}).get("summary", {}).get("auc")
        return (f"{m.get('n_folds', '?')}-fold {m.get('split', '')} cross-validation AUC "
                f"{s['mean']:.3f}" if s else None)
    if m.get("mode") == "production":
        s = ((m.get("models") or {}).get("lsm") or {}).get("delivered", {}).get("auc")
        return f"nested-CV AUC {s['mean']:.3f} ({m.get('split')})" if s else None
    hold = ((m.get("delivered") or {}).get("map_model") or {}).get("holdout")
    if family == run.meta.get("delivered") and hold:
        return f"hold-out AUC {hold['auc']:.3f}"
    return None


def _seen_units(run: Run, spec: RegionSpec, family: str, n: int) -> np.ndarray:
    """Which units (rows of ``spec``'s table) the mapped model may have been trained on.

    None in a region the run was not trained in; every labelled unit of a fit's region
    and of a ``--shots all`` fine-tune; for a fine-tune study every unit outside the
    hold-out (the delivered map model trained on all of them; a family's stage 2 on
    some), or every unit when the run records no hold-out units.
    """
    from lsm.workflows.extras import checked_file
    from lsm.workflows.finetune import UNIT_COLUMN

    if spec.name != run.region:
        return np.zeros(n, dtype=bool)
    if run.meta.get("kind") == "finetune" and run.meta.get("shots") != "all":
        path = checked_file(run, "test_predictions")
        test = pd.read_parquet(path) if path is not None else None
        if test is not None and UNIT_COLUMN in test.columns:
            seen = np.ones(n, dtype=bool)
            held = test[UNIT_COLUMN].to_numpy()
            seen[held[(held >= 0) & (held < n)]] = False
            return seen
        warnings.warn("the run records no hold-out units: every landslide unit counts as "
                      "seen (the zone table is a success rate)", UserWarning, stacklevel=3)
    return np.ones(n, dtype=bool)


def write_units(units: pd.DataFrame, stem: Path, *, crs: Any = None,
                geometry: Any = None) -> dict[str, str]:
    """Write a unit table as ``<stem>.parquet`` and ``.csv``, and ``.gpkg`` when the units
    have a ``geometry`` (a GeoSeries, one per row) or ``x``/``y`` columns.

    Every file goes through a temp file and a rename: never half-written.
    """
    from lsm.io.artifacts import atomic_path

    stem = Path(stem)
    out: dict[str, str] = {}
    with atomic_path(stem.with_suffix(".parquet"), suffix=".parquet") as tmp:
        units.to_parquet(tmp, index=False)
    out["table"] = str(stem.with_suffix(".parquet"))
    with atomic_path(stem.with_suffix(".csv"), suffix=".csv") as tmp:
        units.to_csv(tmp, index=False)
    out["csv"] = str(stem.with_suffix(".csv"))
    has_xy = {"x", "y"} <= set(units.columns) and units[["x", "y"]].notna().all().all()
    if geometry is None and not has_xy:
        return out
    import geopandas as gpd

    geom = geometry if geometry is not None else gpd.points_from_xy(units["x"], units["y"])
    gdf = gpd.GeoDataFrame(units, geometry=geom)  # a samples file's geometry keeps its CRS
    if gdf.crs is None and crs is not None:
        gdf = gdf.set_crs(crs)
    with atomic_path(stem.with_suffix(".gpkg"), suffix=".gpkg") as tmp:
        tmp.unlink()  # GDAL will not overwrite the empty temp file as a GeoPackage
        gdf.to_file(tmp, driver="GPKG", layer=stem.name, engine="pyogrio")
    out["gpkg"] = str(stem.with_suffix(".gpkg"))
    return out


def _table_crs(spec: RegionSpec) -> Any:
    """The CRS of a table region's coordinates: its samples' ``crs``, else the spec's."""
    own = spec.samples.crs if spec.samples is not None else None
    return own or spec.crs


def _unit_geometry(spec: RegionSpec, n: int) -> Any:
    """The geometry column of a vector samples file (slope-unit polygons), or None."""
    from lsm.io.readers import VECTOR_EXT, read_table

    s = spec.samples
    if s is None:
        return None
    name = s.path.path or s.path.name or s.path.cache_name
    if Path(name).suffix.lower() not in VECTOR_EXT:
        return None
    from lsm.io.fetch import resolve_file

    path = resolve_file(s.path, base_dir=spec.base_dir, where=spec.where("samples.path"),
                        progress=False)
    raw = read_table(path, layer=s.layer, where=spec.where("samples.path"))
    geom = getattr(raw, "geometry", None)
    return geom.reset_index(drop=True) if geom is not None and len(geom) == n else None


def zones_withheld(run: Run, force: bool = False) -> str | None:
    """Why the zones map of ``run`` is not written (its fine-tune found no skill above
    :data:`lsm.workflows.verdict.NEAR_CHANCE_AUC`), or None to write it."""
    if force:
        return None
    p = run.path / "metrics.json"
    if not p.exists():
        return None
    metrics = read_json(p)
    skill = (metrics.get("skill") if isinstance(metrics, dict) else None) or {}
    if not isinstance(skill, dict):
        raise ArtifactError(f"{p}: skill: {skill!r} is not an object")
    return str(skill.get("message")) if skill.get("near_chance") else None


def _remove_stale(out: Path, stem: str, suffixes: tuple[str, ...]) -> None:
    """Zones files of an earlier run of the same map: gone, so nobody takes them for
    zones of this one."""
    for suf in suffixes:
        (out / f"{stem}{suf}").unlink(missing_ok=True)
