"""The Python API of ``lsm``: what the command line does, from a notebook.

Every ``lsm`` command is a thin layer over these functions::

    import lsm

    src = lsm.fit("hongkong", models="lr,xgb")                 # lsm fit
    ft = lsm.finetune("jiangxi-yushan", src, shots=25)          # lsm finetune
    p = ft.predict(my_dataframe)                                # score a table
    m = ft.predict_map("ecuador", out="maps/")                  # lsm predict
    ft.metrics["models"]["lsm"]["delivered"]["auc"]["mean"]

Runs are folders (``runs/<region>`` by default) that :class:`Run` reads back
with :meth:`Run.load`; nothing here unpickles anything.  Heavy libraries
(torch, xgboost, shap) are imported only when a function needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from lsm.config.run import ExplainOptions, PredictOptions, ScoreOptions
from lsm.errors import ArgumentError, ArtifactError, LsmError
from lsm.workflows.runs import Run as _RunFolder
from lsm.workflows.runs import holds_run_folders

#: The source run a fine-tune starts from when none is named (``--from``).
DEFAULT_SOURCE_RUN = "runs/hongkong"

__all__ = ["Explanation", "MapResult", "Run", "explain", "finetune", "fit", "load_region",
           "load_run", "predict", "run_pipeline"]


_T = TypeVar("_T")


def _families(models: str | Sequence[str] | None) -> list[str] | None:
    """``"all"``, ``"rf,xgb"`` or a list -> validated family names (None stays None)."""
    if models is None:
        return None
    from lsm.models.base import parse_families

    if not isinstance(models, str) and not (
            isinstance(models, Sequence) and all(isinstance(m, str) for m in models)):
        raise ArgumentError(f"argument: models: expected 'all', a comma list or a list of "
                            f"family names, got {type(models).__name__} {models!r}"[:200])
    try:
        return parse_families(models if isinstance(models, str) else ",".join(models))
    except ArgumentError:
        raise
    except ValueError as err:
        raise ArgumentError(f"argument: models: {err}") from None


def _read_data(data: Any) -> pd.DataFrame:
    """A DataFrame from a DataFrame, a pyarrow/polars table or a table file path."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        from lsm.io.readers import read_table

        return read_table(Path(data))
    if hasattr(data, "to_pandas"):
        return data.to_pandas()
    raise ArgumentError(f"data: cannot score a {type(data).__name__}; give a pandas DataFrame, "
                        "a pyarrow table or the path of a CSV / Parquet / vector file")


def _options(cls: type[_T], **values: Any) -> _T:
    """``cls(**values)``, or an :class:`ArgumentError` naming the first bad argument.

    The API validates its arguments through the options objects the CLI and the
    pipelines use (:mod:`lsm.config.run`), so the three cannot drift apart.
    """
    from pydantic import ValidationError

    from lsm.config.spec import format_validation_error

    try:
        return cls(**values)
    except ValidationError as err:
        raise ArgumentError(format_validation_error(err, "argument")) from None


def _path_arg(name: str, value: Any, *, optional: bool = True) -> Path | None:
    """A path argument: a str or os.PathLike, else an :class:`ArgumentError`."""
    import os

    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return Path(value)
    raise ArgumentError(f"argument: {name}: expected a path (str or pathlib.Path), got "
                        f"{type(value).__name__} {value!r}"[:200])


def _region_arg(name: str, value: Any) -> str | list[str]:
    """A region argument: a name or spec path, or (``source``) a sequence of them."""
    import os

    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and value and \
            all(isinstance(v, (str, os.PathLike)) and str(v).strip() for v in value):
        return [str(v) for v in value]
    raise ArgumentError(f"argument: {name}: expected a region name or spec path (or a list "
                        f"of them), got {type(value).__name__} {value!r}"[:200])


def _html_table(title: str, rows: dict[str, str]) -> str:
    """A small HTML table for notebooks (values escaped)."""
    from html import escape

    body = "".join(f"<tr><th style='text-align:left'>{escape(str(k))}</th>"
                   f"<td style='text-align:left'>{escape(str(v))}</td></tr>"
                   for k, v in rows.items())
    return f"<table><caption>{escape(title)}</caption>{body}</table>"


@dataclass
class MapResult:
    """What :func:`predict` (or :meth:`Run.predict_map`) wrote for one region.

    Attributes
    ----------
    region, model : str
        The region mapped and the model that mapped it.
    files : dict of str to pathlib.Path
        Written files by role: ``probability`` (COG), ``zones`` (GeoTIFF),
        ``uncertainty`` (COG), their ``*_png`` quick-looks, ``rates`` for a raster
        region; ``table`` (Parquet), ``csv`` and ``gpkg`` for a table region.
    thresholds : list of float
        The four zone thresholds.
    zone_statistics : pandas.DataFrame
        Area (or unit) share, landslides and density ratio per zone; ``n_heldout``,
        ``heldout_share``, ``heldout_density_ratio`` count only the landslides the map
        model never saw (a prediction rate), ``n_seen``... those it was trained on (a
        success rate); ``details["zone_rates"]`` says which the table is.
    report : pathlib.Path or None
        The run's report, rewritten when the maps went into the run folder.
    details : dict
        Everything the workflow returned (rate-curve AUCs, uncertainty summary,
        ``base_rate``: the landslide share the probabilities carry, ...).
    """

    region: str
    model: str
    files: dict[str, Path]
    thresholds: list[float]
    zone_statistics: pd.DataFrame
    report: Path | None = None
    details: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def _from_dict(cls, res: dict[str, Any], report: Path | None = None) -> MapResult:
        keys = ("probability", "zones", "probability_png", "zones_png", "rates", "uncertainty",
                "uncertainty_png", "table", "csv", "gpkg")
        return cls(region=res["region"], model=res["family"],
                   files={k: Path(res[k]) for k in keys if res.get(k)},
                   thresholds=list(res["thresholds"]),
                   zone_statistics=pd.DataFrame(res["zone_statistics"]),
                   report=report, details=res)

    def __repr__(self) -> str:
        where = self.files.get("probability") or self.files.get("table")
        return (f"MapResult(region={self.region!r}, model={self.model!r}, "
                f"files=[{', '.join(self.files)}], at={str(where.parent) if where else None!r})")

    def _repr_html_(self) -> str:
        return _html_table(f"MapResult: {self.region}, {self.model}",
                           {role: str(p) for role, p in self.files.items()})

    def units(self) -> pd.DataFrame:
        """The per-unit table of a table region (probability, zone, uncertainty)."""
        if "table" not in self.files:
            raise ValueError(f"{self.region} is a raster region: open files['probability']")
        return pd.read_parquet(self.files["table"])


@dataclass
class Explanation:
    """SHAP explanations of a run's models (what :func:`explain` returns).

    Attributes
    ----------
    importance : dict of str to pandas.Series
        Mean absolute SHAP value per factor, by family, largest first.
    source_importance : dict of str to pandas.Series
        The same for the source models of a fine-tune run (what the transfer changed).
    figures : dict of str to dict of str to pathlib.Path
        Per family: ``bar``, ``beeswarm`` and (fine-tune runs) ``shift`` PNGs.
    shap_maps : list of pathlib.Path
        Per-pixel SHAP COGs, when asked for.
    """

    importance: dict[str, pd.Series]
    source_importance: dict[str, pd.Series]
    figures: dict[str, dict[str, Path]]
    shap_maps: list[Path] = field(default_factory=list)

    def _top(self) -> dict[str, str]:
        return {f: ", ".join(list(s.index[:3])) for f, s in self.importance.items()}

    def __repr__(self) -> str:
        top = "; ".join(f"{f}: {t}" for f, t in self._top().items())
        return f"Explanation(families=[{', '.join(self.importance)}], top factors: {top})"

    def _repr_html_(self) -> str:
        return _html_table("Explanation: top factors by mean |SHAP|", self._top())


@dataclass
class Run(_RunFolder):
    """A fit or fine-tune run folder, loaded: models, metrics, schema, normalisation.

    Create one with :meth:`Run.load` (or :func:`load_run`), or get one from
    :func:`fit` and :func:`finetune`.

    Attributes
    ----------
    path : pathlib.Path
        The run folder.
    meta : dict
        ``model.json``: schema, normalisation statistics, chain of regions, checksums.
    models : dict of str to estimator
        Fitted models by family (``"delivered"`` is a fine-tune's delivered model);
        each takes the design matrix of :attr:`schema`.

    Example
    -------
    >>> run = lsm.Run.load("runs/hongkong")                     # doctest: +SKIP
    >>> run.metrics["cv"]["xgb"]["summary"]["auc"]["mean"]       # doctest: +SKIP
    >>> run.predict(table)                                       # doctest: +SKIP
    """

    def headline(self) -> str:
        """One line of the run's skill: the default model's cross-validated AUC (fit), or
        the delivered model's hold-out or nested-CV AUC (fine-tune); '' when unknown."""
        try:
            m, fam = self.metrics, self.default_model
            if self.kind == "fit":
                auc = m["cv"][fam]["summary"]["auc"]["mean"]
                return f"spatial-CV AUC {auc:.3f} ({fam})"
            prod = m.get("production") or {}
            if prod.get("delivered_cv"):
                return f"nested-CV AUC {prod['delivered_cv']['auc']['mean']:.3f} (delivered)"
            auc = m["models"]["lsm"]["delivered"]["auc"]["mean"]
            return f"hold-out AUC {auc:.3f} (delivered)"
        except (KeyError, TypeError, ValueError, LsmError):
            return ""

    def __repr__(self) -> str:
        skill = self.headline()
        return (f"Run({str(self.path)!r}, kind={self.kind!r}, region={self.region!r}, "
                f"families=[{', '.join(self.families)}]"
                + (f", {skill}" if skill else "") + ")")

    def _repr_html_(self) -> str:
        return _html_table(f"Run {self.path}", {
            "kind": self.kind, "region": self.region, "families": ", ".join(self.families),
            "skill": self.headline() or "n/a"})

    @classmethod
    def load(cls, path: str | Path, *, models: str | Sequence[str] | None = None) -> Run:
        """Read a run folder (every artifact's checksum verified, nothing unpickled).

        Parameters
        ----------
        path : str or pathlib.Path
            A run folder written by :func:`fit` or :func:`finetune`.
        models : str or sequence of str, optional
            Families to load (default: all the run has).

        Returns
        -------
        Run

        Raises
        ------
        lsm.errors.ArtifactError
            Not a run folder, a changed or missing artifact, or an unknown family.
        """
        from lsm.workflows.runs import load_run as _load

        r = _load(_path_arg("path", path, optional=False), families=_families(models))
        return cls(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)})

    # -- what the run holds ----------------------------------------------------------

    @property
    def kind(self) -> str:
        """``"fit"`` or ``"finetune"``."""
        return str(self.meta["kind"])

    @property
    def families(self) -> list[str]:
        """Names of the loaded models."""
        return list(self.models)

    @property
    def default_model(self) -> str:
        """The model maps and :meth:`predict` use by default: a fine-tune's delivered
        model, a fit's family with the best cross-validated AUC."""
        from lsm.workflows.predict import _best_family

        return _best_family(self)

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: cross-validation (fit) or the transfer comparison (finetune)."""
        from lsm.io.artifacts import read_json

        return read_json(self.path / "metrics.json")

    @property
    def factors(self) -> list[str]:
        """Factors the models use, in order (see :attr:`schema` for kinds and categories)."""
        return list(self.schema.factors)

    @property
    def normalisation(self) -> dict[str, Any]:
        """``{"method", "stats", "source_stats"}``: how factor values are standardised."""
        return {"method": self.norm, "stats": self.stats,
                "source_stats": self.meta.get("source_stats") or self.stats}

    # -- using it --------------------------------------------------------------------

    def predict(self, data: Any, *, model: str | None = None, region: Any = None,
                prevalence: float | None = None, units: str = "model",
                range_tolerance: float = 0.1, strict: bool = False
                ) -> pd.Series | pd.DataFrame:
        """``P(landslide)`` of every row of a table of factor values.

        The run's schema and normalisation are applied exactly as in training:
        categorical codes named with the region's legend, aspect to sin/cos,
        continuous factors standardised with the statistics of the region the
        rows come from.  Rows are checked as a map checks pixels: a row with a
        missing factor (NaN, or a sentinel of the spec) scores NaN, as its pixel
        would be nodata; categories the model never saw and values outside the
        training range are scored, with one :class:`lsm.errors.InputWarning`
        per kind of problem giving counts per factor (``strict=True``: a
        :class:`lsm.errors.DataError` instead).

        Parameters
        ----------
        data : pandas.DataFrame, pyarrow.Table or path
            One row per point or unit, a column per factor (canonical factor
            names, as in :attr:`factors`; other columns are ignored).
        model : str, optional
            A family name, ``"all"`` (one column per model) or None: the
            :attr:`default_model`.
        region : str, pathlib.Path or RegionData, optional
            The region the rows come from (built-in name, spec path or loaded
            region): its statistics normalise them.  Default: the region the run
            was trained in.
        prevalence : float, optional
            Expected landslide share; shifts the base rate as maps do.
        units : {"model", "stored"}
            ``"model"``: values as the region's training table holds them
            (:func:`load_region`'s ``table``: NDVI 0..1); ``"stored"``: as the
            region's files store them (NDVI x 10000): the spec's replacements,
            sentinels, scale, offset and valid range are applied first, by the
            function maps use.
        range_tolerance : float
            A continuous value farther than this share of the training range's
            width below its minimum or above its maximum is reported.
        strict : bool
            Raise instead of warning about missing values, unknown categories and
            values out of range.

        Returns
        -------
        pandas.Series or pandas.DataFrame
            Probabilities indexed like ``data``: a Series named after the model,
            or a DataFrame with a column per model for ``model="all"``.

        Raises
        ------
        lsm.errors.FactorMismatchError
            ``data`` lacks a factor of the model.
        lsm.errors.ArgumentError
            An invalid argument (no rows, ``prevalence`` outside (0, 1), ...).
        lsm.errors.DataError
            ``strict=True`` and the rows hold values the model cannot score as given.

        Example
        -------
        >>> run.predict(pd.read_csv("points.csv"))                 # doctest: +SKIP
        """
        import warnings

        import numpy as np

        from lsm.errors import DataError, InputWarning
        from lsm.workflows.guard import check_rows
        from lsm.workflows.predict import make_predict_fn

        opts = _options(ScoreOptions, model=model, prevalence=prevalence, units=units,
                        range_tolerance=range_tolerance, strict=strict)
        table = _read_data(data)
        spec, stats = self._region_for(region)
        names = self.families if opts.model == "all" else [opts.model or self.default_model]
        for n in names:
            if n not in self.models:
                from lsm.errors import FactorMismatchError

                raise FactorMismatchError(f"run {self.path} has no model {n!r} (it has "
                                          f"{', '.join(self.models)})")
        rows, missing, notes = check_rows(self, table, spec, stats, units=opts.units,
                                          tolerance=opts.range_tolerance)
        if notes and opts.strict:
            raise DataError("data: " + "; and ".join(notes))
        for note in notes:
            warnings.warn(f"Run.predict: {note}", InputWarning, stacklevel=2)
        out = {}
        for n in names:
            p = np.full(len(rows), np.nan)
            if not missing.all():
                ok = ~missing
                p[ok] = make_predict_fn(self, n, spec, stats,
                                        prevalence=opts.prevalence)(rows[ok])
            out[n] = p
        if opts.model == "all":
            return pd.DataFrame(out, index=table.index)
        return pd.Series(out[names[0]], index=table.index, name=names[0])

    def _region_for(self, region: Any) -> tuple[Any, dict[str, Any]]:
        """(spec, statistics) that normalise rows of ``region`` (default: the run's)."""
        import yaml

        from lsm.config.spec import parse_region
        from lsm.workflows.region import RegionData

        if region is None:
            spec = parse_region(yaml.safe_load(self.meta["spec"]),
                                source=str(self.path / "model.json"))
            return spec, self.stats
        data = region if isinstance(region, RegionData) else load_region(
            region, factors=self.factors)
        from lsm.workflows.predict import region_stats_for
        from lsm.workflows.region_record import check_region

        check_region(self, data.spec)  # a region name the run was trained in: same data

        return data.spec, region_stats_for(self, data.spec, data.stats)

    def predict_map(self, region: str | Path | None = None, *, out: str | Path | None = None,
                    model: str | None = None, thresholds: Sequence[float] | None = None,
                    prevalence: float | None = None, uncertainty: int | None = None,
                    progress: bool = False) -> MapResult:
        """Map a region with this run: see :func:`predict` (same parameters)."""
        return predict(self, region, out=out, model=model, thresholds=thresholds,
                       prevalence=prevalence, uncertainty=uncertainty, progress=progress)

    def explain(self, **kwargs: Any) -> Explanation:
        """SHAP explanations of this run: see :func:`explain`."""
        return explain(self, **kwargs)

    def training_table(self) -> pd.DataFrame:
        """The rows the run's family models were trained on (raw factor values, label)."""
        return super().training_table()


def load_run(path: str | Path, *, models: str | Sequence[str] | None = None) -> Run:
    """Read a run folder; the same as :meth:`Run.load`.

    Parameters
    ----------
    path : str or pathlib.Path
        Run folder.
    models : str or sequence of str, optional
        Families to load (default: all).

    Returns
    -------
    Run

    Example
    -------
    >>> run = lsm.load_run("runs/hongkong")                      # doctest: +SKIP
    """
    return Run.load(path, models=models)


def _as_run(run: Run | _RunFolder | str | Path) -> Run:
    if isinstance(run, Run):
        return run
    if isinstance(run, _RunFolder):
        return Run(**{f.name: getattr(run, f.name) for f in dataclasses.fields(run)})
    return Run.load(_path_arg("run", run, optional=False))


def load_region(region: str | Path, *, factors: Sequence[str] | None = None,
                progress: bool = False) -> Any:
    """Load a region: its spec, factor table with labels and folds, statistics, stack.

    Parameters
    ----------
    region : str or pathlib.Path
        Built-in region name (``lsm regions``) or path to a region spec YAML.
    factors : sequence of str, optional
        Restrict to these factors (default: all the region has).
    progress : bool
        Progress bars for downloads and statistics.

    Returns
    -------
    lsm.workflows.region.RegionData
        ``spec``, ``table`` (one row per sample: ``x``, ``y``, factors, ``label``,
        ``fold``), ``stats``, ``kinds`` and, for raster regions, the lazy ``stack``
        (an xarray Dataset).

    Example
    -------
    >>> data = lsm.load_region("ecuador")                        # doctest: +SKIP
    >>> data.table.head()                                        # doctest: +SKIP
    """
    from lsm.config.spec import load_region as _spec
    from lsm.workflows.region import load_region_data

    name = _region_arg("region", region)
    if isinstance(name, list):
        raise ArgumentError("argument: region: one region (a name or spec path)")
    return load_region_data(_spec(name), progress=progress,
                            factors=list(factors) if factors is not None else None)


def _trained(path: Path, *, maps: bool, explain: bool, progress: bool, console: Any,
             on_trained: Callable[[Run], None] | None) -> Run:
    """What follows every fit and fine-tune: the hook, then maps, figures and report."""
    if on_trained is not None:
        on_trained(Run.load(path))
    if maps or explain:
        from lsm.workflows.outputs import after_training

        after_training(path, predict=maps, explain=explain, progress=progress,
                       console=console)
    return Run.load(path)


@holds_run_folders
def fit(source: str | Path | Sequence[str | Path], *, models: str | Sequence[str] = "all",
        out: str | Path | None = None, factors: Sequence[str] | None = None,
        norm: str = "target", device: str = "auto", cv: bool = True, maps: bool = True,
        explain: bool = True, seed: int = 0, params: dict[str, dict[str, Any]] | None = None,
        progress: bool = False, console: Any = None,
        on_trained: Callable[[Run], None] | None = None, command: str | None = None) -> Run:
    """Pretrain source models in a data-rich region (``lsm fit``).

    Cross-validates each family on spatial folds, trains it on every sample,
    saves the run, then writes maps (raster regions) or unit tables (table
    regions), evaluation figures, SHAP explanations and ``report.md``.

    Parameters
    ----------
    source : str, pathlib.Path or sequence
        Built-in region name or spec path; several regions (a list or a comma
        list) pretrain on their pooled rows, each normalised with its own
        statistics and weighted to count the same.
    models : str or sequence of str
        ``"all"``, a comma list (``"lr,xgb"``) or a list of families.
    out : str or pathlib.Path, optional
        Run folder (default ``runs/<region>``).
    factors : sequence of str, optional
        Factor subset (default: every factor the region lets transfer).
    norm : {"target", "quantile", "source", "none"}
        Normalisation across regions.
    device : {"auto", "cpu", "cuda"}
        Where the MLP trains.
    cv : bool
        Cross-validate before the final fit.
    maps, explain : bool
        Write maps / unit tables, and SHAP explanations, after training.
    seed : int
        Seed of folds, sampling and models.
    params : dict, optional
        Hyper-parameters per family (``{"xgb": {"max_depth": 4}}``), e.g. from
        ``lsm tune``.
    progress : bool
        Progress bars.
    console : rich.console.Console, optional
        Where status lines go (what was written where); None is silent.
    on_trained : callable, optional
        Called with the :class:`Run` once it is saved, before maps and figures
        (the CLI prints its metrics there).
    command : str, optional
        Command line recorded in the run (what reproduces it).

    Returns
    -------
    Run
        The saved run; ``run.metrics["cv"][family]["summary"]`` holds the
        cross-validated AUC, log-loss, Brier score and accuracy.

    Example
    -------
    >>> src = lsm.fit("demo-source", models="lr,xgb", out="runs/demo")   # doctest: +SKIP
    >>> src.metrics["cv"]["xgb"]["summary"]["auc"]["mean"]              # doctest: +SKIP
    """
    from lsm.workflows.fit import FitConfig, run_dir, run_fit

    if isinstance(factors, str):
        factors = [f.strip() for f in factors.split(",") if f.strip()]
    cfg = _options(FitConfig, source=_region_arg("source", source), models=_families(models),
                   out=_path_arg("out", out),
                   factors=list(factors) if factors is not None else None, norm=norm,
                   device=device, cv=cv, seed=seed, progress=progress, command=command,
                   **({"params": params} if params else {}))
    metrics = run_fit(cfg)
    return _trained(run_dir(cfg, metrics["region"]), maps=maps, explain=explain,
                    progress=progress, console=console, on_trained=on_trained)


@holds_run_folders
def finetune(target: str | Path, source_run: Run | str | Path | None = None, *,
             shots: int | str = 50, repeats: int = 10, models: str | Sequence[str] | None = None,
             norm: str | None = None, prevalence: float | None = None, anchor: str = "auto",
             reweight: bool = False, out: str | Path | None = None, device: str = "auto",
             maps: bool = True, explain: bool = True, seed: int = 0, progress: bool = False,
             console: Any = None, on_trained: Callable[[Run], None] | None = None,
             command: str | None = None) -> Run:
    """Adapt source models to a region with few landslides and deliver one model.

    The delivered model (``run.models["delivered"]``) combines the source
    models with models trained on the target's labelled points; its strategy
    is chosen by cross-validation on those points alone.  In a study
    (``shots=K``) it is scored on a fixed target hold-out beside the source
    models alone, models trained on the shots alone and each family's stage 1
    and stage 2, over ``repeats`` draws of K landslides and K non-landslides,
    with paired differences.  ``shots="all"`` is production: every labelled
    point trains it and nested cross-validation estimates its skill.

    Parameters
    ----------
    target : str or pathlib.Path
        The data-scarce region: built-in name or spec path.
    source_run : Run, str or pathlib.Path, optional
        A fit (or fine-tune) run, or a folder of runs (its newest is used); default
        ``runs/hongkong``.
    shots : int or "all"
        K landslides (and K non-landslides) per repeat, or ``"all"``.
    repeats : int
        Draws of the shots (study mode).
    models : str or sequence of str, optional
        Families (default: all in the source run).
    norm : {"target", "quantile", "source", "none"}, optional
        Default: the source run's; another one re-pretrains the source models.
    prevalence : float, optional
        Expected landslide share in the target; corrects maps and metrics.
    anchor : {"auto", "fixed"}
        Stage-2 anchoring strength: chosen on the shots, or each family's default.
    reweight : bool
        Re-train the source models with importance weights towards target-like terrain.
    out : str or pathlib.Path, optional
        Run folder (default ``runs/<source>-to-<target>-k<K>``).
    device : {"auto", "cpu", "cuda"}
        Where the MLP trains.
    maps, explain : bool
        Write maps / unit tables (with the uncertainty layer), and SHAP, afterwards.
    seed : int
        Seed of the hold-out, the shots and the models.
    progress : bool
        Progress bars.
    console : rich.console.Console, optional
        Where status lines go; None is silent.
    on_trained : callable, optional
        Called with the saved :class:`Run` before maps and figures are written.
    command : str, optional
        Command line recorded in the run.

    Returns
    -------
    Run
        The saved run.  ``run.metrics["models"]["lsm"]["delivered"]`` summarises
        the delivered model on the hold-out (mean and std over repeats of
        ``auc``, ``log_loss``, ...); ``run.metrics["paired"]`` holds the paired
        differences; ``run.predict(table)`` scores new rows with it.

    Example
    -------
    >>> src = lsm.fit("demo-source", models="lr,xgb")                   # doctest: +SKIP
    >>> ft = lsm.finetune("demo-target", src, shots=25, repeats=3)      # doctest: +SKIP
    >>> ft.metrics["models"]["lsm"]["delivered"]["auc"]["mean"]         # doctest: +SKIP
    >>> ft.predict(new_points)                                          # doctest: +SKIP
    """
    from lsm.workflows.finetune import FinetuneConfig, run_dir, run_finetune
    from lsm.workflows.runs import latest_run

    target = _region_arg("target", target)
    if isinstance(target, list):
        raise ArgumentError("argument: target: one region (a name or spec path)")
    if source_run is None:  # the default source: say so when it is not there
        src = Path(DEFAULT_SOURCE_RUN)
        if not src.exists():
            raise ArtifactError(f"{src}: no such run folder; it is the default source run "
                                "(--from / source_run): run 'lsm fit --source hongkong' "
                                "first, or name your source run with --from RUN")
    else:
        src = source_run.path if isinstance(source_run, _RunFolder) else \
            _path_arg("source_run", source_run, optional=False)
    if isinstance(shots, bool) or not isinstance(shots, (int, str)):
        raise ArgumentError(f"argument: shots: expected a whole number of shots or 'all', "
                            f"got {type(shots).__name__} {shots!r}"[:200])
    if isinstance(shots, str) and shots.strip().lower() != "all":
        try:
            shots = int(shots.strip())
        except ValueError:
            raise ArgumentError(f"argument: shots: {shots!r} is not a whole number of shots "
                                "or 'all'") from None
    cfg = _options(FinetuneConfig, target=target, source_run=src,
                   shots=shots.strip().lower() if isinstance(shots, str) else shots,
                   repeats=repeats, models=_families(models), seed=seed,
                   out=_path_arg("out", out), norm=norm,
                   prevalence=prevalence, device=device, anchor=anchor,
                   reweight=reweight, progress=progress, command=command)
    cfg.source_run = latest_run(cfg.source_run) or cfg.source_run
    metrics = run_finetune(cfg)
    return _trained(run_dir(cfg, metrics["source_region"], metrics["target"]), maps=maps,
                    explain=explain, progress=progress, console=console,
                    on_trained=on_trained)


@holds_run_folders
def predict(run: Run | str | Path, region: str | Path | None = None, *,
            out: str | Path | None = None, model: str | None = None,
            thresholds: Sequence[float] | None = None, prevalence: float | None = None,
            uncertainty: int | None = None, force_zones: bool = False,
            progress: bool = False) -> MapResult:
    """Map a region with a run's model (``lsm predict``).

    A raster region gets a probability COG, a zones GeoTIFF, PNG quick-looks
    and success/prediction-rate curves; a table region (slope units, points)
    gets per-unit probabilities and zones as Parquet and CSV, and a GeoPackage
    when the units have coordinates or geometry.  Both get the uncertainty
    layer where it is on (see ``uncertainty``).

    Parameters
    ----------
    run : Run, str or pathlib.Path
        A run or run folder.
    region : str or pathlib.Path, optional
        Built-in name or spec path (default: the run's region).
    out : str or pathlib.Path, optional
        Output folder (default ``<run>/maps``, and the run's report is updated).
    model : str, optional
        A family (default: the run's delivered or best model).
    thresholds : sequence of 4 floats, optional
        Zone thresholds (default: the 20/40/60/80 % quantiles).
    prevalence : float, optional
        Expected landslide share; shifts the base rate.
    uncertainty : int, optional
        Bootstrap refits behind the uncertainty layer (std of P per pixel or unit);
        0 turns it off.  Default: 10 for a fine-tune run's delivered model, none
        otherwise.
    force_zones : bool
        Write the zones even when the run's fine-tune found no skill above chance
        (by default they are withheld then, with a warning).
    progress : bool
        Progress bars.

    Returns
    -------
    MapResult

    Raises
    ------
    lsm.errors.FactorMismatchError
        The region lacks a factor of the model, or the run has no such model.

    Example
    -------
    >>> m = lsm.predict("runs/demo-source-to-demo-target-k25")       # doctest: +SKIP
    >>> m.files["probability"], m.zone_statistics                     # doctest: +SKIP
    """
    from lsm.workflows.predict import predict_region

    opts = _options(PredictOptions, model=model,
                    thresholds=list(thresholds) if isinstance(thresholds, Sequence) and
                    not isinstance(thresholds, str) else thresholds,
                    prevalence=prevalence, uncertainty=uncertainty, force_zones=force_zones,
                    progress=progress)
    region = _region_arg("region", region) if region is not None else None
    if isinstance(region, list):
        raise ArgumentError("argument: region: one region at a time")
    out = _path_arg("out", out)
    cuts = None
    if opts.thresholds is not None:
        from lsm.mapping.zones import validate_thresholds

        try:
            cuts = validate_thresholds(opts.thresholds)
        except ValueError as err:
            raise ArgumentError(f"argument: thresholds: {err}") from None
    r = _as_run(run)
    # maps inside the run folder: its outputs.json and report change in the same commit
    res = predict_region(r, region=str(region) if region is not None else None,
                         family=opts.model, out=out, thresholds=cuts,
                         prevalence=opts.prevalence, uncertainty=opts.uncertainty,
                         progress=opts.progress, force_zones=opts.force_zones,
                         record=out is None)
    rep = res.pop("report", None)
    report = Path(rep) if rep is not None else None
    return MapResult._from_dict(res, report)


@holds_run_folders
def explain(run: Run | str | Path, *, shap_maps: bool = False, model: str | None = None,
            region: str | Path | None = None, top: int = 3,
            progress: bool = False) -> Explanation:
    """SHAP explanations of a run's models (``lsm explain``).

    Writes importance bars and beeswarms per family under ``<run>/figures``;
    for a fine-tune run also the source-vs-fine-tuned importance shift
    (against the copies of its source models the run keeps in source_model/).

    Parameters
    ----------
    run : Run, str or pathlib.Path
        A run or run folder.
    shap_maps : bool
        Also write per-pixel SHAP COGs of the ``top`` factors (raster regions).
    model : str, optional
        Family of the SHAP maps (default: the run's delivered or best).
    region : str or pathlib.Path, optional
        Raster region of the SHAP maps (default: the run's).
    top : int
        Number of factors mapped.
    progress : bool
        Progress bars.

    Returns
    -------
    Explanation

    Example
    -------
    >>> e = lsm.explain("runs/hongkong")                         # doctest: +SKIP
    >>> e.importance["xgb"].head()                               # doctest: +SKIP
    """
    from lsm.workflows.outputs import explain_run
    from lsm.workflows.outputs import shap_maps as _shap_maps
    from lsm.workflows.owned import Staged
    from lsm.workflows.runs import claim_run_dir

    opts = _options(ExplainOptions, shap_maps=shap_maps, model=model,
                    region=str(_region_arg("region", region)) if region is not None else None,
                    top=top, progress=progress)
    r = _as_run(run)
    # explain writes into the run: hold it (a fit re-writing it meanwhile is refused), and
    # commit the SHAP figures, shap.json and SHAP maps as one set
    claim_run_dir(r.path)
    stage = Staged(r.path)
    try:
        res = explain_run(r, to=stage.dir)
        maps: list[Path] = []
        if opts.shap_maps:
            maps = [Path(p) for p in _shap_maps(r, family=opts.model, region=opts.region,
                                                top=opts.top, progress=opts.progress,
                                                write_to=stage.path("maps"))]
        heads = {f"maps/{p.name.split('_shap_')[0]}_shap_" for p in maps}

        def replaces(f: str) -> bool:  # the previous SHAP outputs
            return f == "shap.json" or f.startswith("figures/shap_") or \
                any(f.startswith(h) for h in heads)

        stage.commit(replaces, last=["shap.json"])
    finally:
        stage.discard()

    def series(d: dict[str, float]) -> pd.Series:
        s = pd.Series(d, dtype="float64", name="mean |SHAP|")
        return s.sort_values(ascending=False)

    return Explanation(
        importance={f: series(e["importance"]) for f, e in res.items()},
        source_importance={f: series(e["source_importance"]) for f, e in res.items()
                           if "source_importance" in e},
        figures={f: {k: Path(e[k]) for k in ("bar", "beeswarm", "shift") if k in e}
                 for f, e in res.items()},
        shap_maps=maps)


@holds_run_folders
def run_pipeline(pipeline: str | Path | Any, *, out: str | Path | None = None,
                 repeats: int | None = None, force: bool = False, progress: bool = False,
                 command: str | None = None) -> Any:
    """Run (or resume) a pipeline of fits and fine-tunes (``lsm run``).

    Parameters
    ----------
    pipeline : str, pathlib.Path or PipelineConfig
        A pipeline YAML file (see ``pipelines/``) or a loaded config.
    out : str or pathlib.Path, optional
        Results folder (default: the pipeline's ``out``, or ``runs/pipelines/<name>``).
    repeats : int, optional
        Override every study's repeats (quick checks).
    force : bool
        Redo every step, even those already complete.
    progress : bool
        A progress bar over the steps.
    command : str, optional
        Command line recorded in the results.

    Returns
    -------
    lsm.workflows.pipeline.PipelineResult
        ``results`` and ``summary`` DataFrames, figures and the state of every step.

    Example
    -------
    >>> res = lsm.run_pipeline("pipelines/transfer.yaml", repeats=2)   # doctest: +SKIP
    >>> res.summary                                                    # doctest: +SKIP
    """
    from lsm.config.pipeline import PipelineConfig, load_pipeline
    from lsm.workflows.pipeline import apply_overrides
    from lsm.workflows.pipeline import run_pipeline as _run

    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int)
                                or repeats < 1):
        raise ArgumentError(f"argument: repeats: expected a whole number of at least 1, got "
                            f"{repeats!r}")
    if not isinstance(pipeline, PipelineConfig):
        pipeline = _path_arg("pipeline", pipeline, optional=False)
    cfg = load_pipeline(pipeline) if isinstance(pipeline, Path) else pipeline
    cfg = apply_overrides(cfg, repeats=repeats)
    return _run(cfg, out=_path_arg("out", out), force=force,
                progress=progress, overrides={"repeats": repeats} if repeats else {},
                command=command)
