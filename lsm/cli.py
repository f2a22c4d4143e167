"""The ``lsm`` command line: thin wrappers around :mod:`lsm.workflows`.

Heavy libraries are imported inside the commands so ``lsm --help`` is fast.
Errors on bad input print one line and exit with status 2.
"""

from __future__ import annotations

import functools
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="lsm",
    help=(
        "Landslide susceptibility mapping, learned where data is rich and used where it is "
        "scarce.\n\n"
        "Typical use: [bold]lsm fit --source hongkong[/] pretrains four model families in a "
        "data-rich region; [bold]lsm finetune --target my_region.yaml --shots 50[/] adapts "
        "them to a region with few landslides and reports how much the transfer helps; "
        "[bold]lsm demo[/] shows the whole path offline on generated regions.\n\n"
        "Regions are YAML specs (see data_specs/) or built-in names: hongkong, ecuador, "
        "jiangxi-yongxin, jiangxi-yushan, demo-source, demo-target."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from lsm import __version__

        typer.echo(f"lsm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder already holding the region files (checked against "
                 "their sha256); same as LSM_DATA_DIR.", envvar="LSM_DATA_DIR",
                 show_envvar=False),
]
_ARGV: list[str] = []
_INTERRUPTED = 130  # exit status of a process stopped by SIGINT (128 + 2), as shells report it


def _command() -> str:
    import shlex

    return "lsm " + shlex.join(_ARGV)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Seed = Annotated[int, typer.Option(help="Random seed (sampling, folds, models).", min=0)]
Scheduler = Annotated[
    str | None,
    typer.Option("--scheduler", help="Dask scheduler address (tcp://host:8786): build stacks, "
                 "sample and predict on that cluster \\[default: local threads]; same as "
                 "LSM_SCHEDULER.", envvar="LSM_SCHEDULER", show_envvar=False),
]


def _on_scheduler(command: Any) -> Any:
    """Give ``command`` a ``--scheduler`` option and run it under that dask scheduler."""
    import inspect

    @functools.wraps(command)
    def wrapper(*args: Any, scheduler: str | None = None, **kwargs: Any) -> Any:
        from lsm.workflows.cluster import dask_scheduler

        with dask_scheduler(scheduler):
            return command(*args, **kwargs)

    sig = inspect.signature(command, eval_str=True)
    opt = inspect.Parameter("scheduler", inspect.Parameter.KEYWORD_ONLY, default=None,
                            annotation=Scheduler)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), opt])
    return wrapper


def _console(stderr: bool = False) -> Any:
    Console = _note_once_console()
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:  # pipes and CI logs: do not squeeze tables into 80 columns
        con = Console(stderr=stderr, highlight=False, width=140)
    return con


# Notes ("note: ...") printed during the current call of main, warnings included: a
# workflow often both warns and records the same note for its report.
_NOTES: set[str] = set()


def _first_time(note: str) -> bool:
    """True (and remember it) if ``note`` was not printed yet in this call of main."""
    key = " ".join(note.split())
    if key in _NOTES:
        return False
    _NOTES.add(key)
    return True


@functools.cache
def _note_once_console() -> type:
    """A rich Console that prints each ``note: ...`` line once per call of main."""
    from rich.console import Console

    class NoteOnceConsole(Console):
        def print(self, *objects: Any, **kwargs: Any) -> None:
            if len(objects) == 1 and isinstance(objects[0], str) and \
                    objects[0].startswith("note: ") and not _first_time(objects[0][6:]):
                return
            super().print(*objects, **kwargs)

    return NoteOnceConsole


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the CLI: one clean ``note: ...`` line, no source line."""
    text = " ".join(str(message).split())
    if not issubclass(category, UserWarning):
        text = f"{category.__name__}: {text}"
    _console(stderr=True).print(f"note: {text}", soft_wrap=True, markup=False)  # once


def _set_data_dir(data_dir: Path | None) -> None:
    if data_dir is not None:
        if not data_dir.is_dir():
            raise typer.BadParameter(f"{data_dir}: no such folder", param_hint="--data-dir")
        os.environ["LSM_DATA_DIR"] = str(data_dir)


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: choose auto, cpu or cuda", param_hint="--device")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise typer.BadParameter("CUDA is not available on this machine (torch "
                                     f"{torch.__version__}); use --device auto or cpu",
                                     param_hint="--device")


def _check_prevalence(prevalence: float | None) -> None:
    """A landslide share strictly between 0 and 1 (0 and 1 have no logit)."""
    import math

    if prevalence is not None and not (math.isfinite(prevalence) and 0 < prevalence < 1):
        raise typer.BadParameter(f"{prevalence!r}: a landslide share strictly between 0 and "
                                 "1, e.g. 0.02", param_hint="--prevalence")


def _families(text: str) -> list[str]:
    from lsm.models.base import parse_families

    try:
        return parse_families(text)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--model") from None


# ---------------------------------------------------------------------------
# inspection


@app.command()
def regions() -> None:
    """List the built-in regions and where their specs live."""
    from rich.table import Table

    from lsm.config.spec import builtin_regions, builtin_spec_dir, load_yaml

    t = Table("region", "kind", "description")
    for name in builtin_regions():
        p = builtin_spec_dir() / f"{name}.yaml"
        if p.exists():
            d = load_yaml(p)
            kind = "table" if "samples" in d else "raster"
            t.add_row(name, kind, textwrap.shorten(str(d.get("description", "")), 90,
                                                   placeholder=" …"))
        else:
            t.add_row(name, "raster", "generated offline by 'lsm demo' (synthetic)")
    _console().print(t)
    _console().print(f"specs: {builtin_spec_dir()}")


@app.command()
@_on_scheduler
def stack(
    region: Annotated[str, typer.Option("--region", "-r", help="Built-in region name or spec "
                                        "YAML path.")],
    data_dir: DataDir = None,
    table_out: Annotated[Path | None, typer.Option("--table", help="Also write the training "
                                                   "table (Parquet).")] = None,
    quiet: Quiet = False,
) -> None:
    """Load a region and print its aligned grid, factors, statistics and samples."""
    _set_data_dir(data_dir)
    from lsm.config.spec import load_region
    from lsm.workflows.region import load_region_data
    from lsm.workflows.report import print_region_summary

    spec = load_region(region)
    data = load_region_data(spec, progress=not quiet)
    print_region_summary(data, _console())
    if table_out is not None:
        from lsm.io.artifacts import atomic_path

        with atomic_path(table_out, suffix=".parquet") as tmp:  # never half-written
            data.table.to_parquet(tmp)
        _console().print(f"training table -> {table_out}")


# ---------------------------------------------------------------------------
# training


@app.command()
@_on_scheduler
def fit(
    source: Annotated[str, typer.Option("--source", "-s", help="Data-rich region: built-in "
                                        "name or spec path; a comma list pools several "
                                        "(each normalised with its own statistics, weighted "
                                        "to count the same).")] = "hongkong",
    model: Annotated[str, typer.Option("--model", "-m", help="Families: rf,lr,xgb,mlp or "
                                       "'all'.")] = "all",
    out: Annotated[Path | None, typer.Option(help="Run folder \\[default: runs/<region>].")] = None,
    factors: Annotated[str | None, typer.Option(help="Comma list of factors to use \\[default: "
                                                "all the region has, less those it excludes "
                                                "from transfer].")] = None,
    norm: Annotated[str, typer.Option(help="Factor normalisation across regions: target "
                                      "(standardise each region with its own statistics), "
                                      "quantile (each region's own percentiles -> normal "
                                      "scores), source (the source's statistics everywhere), "
                                      "none.")] = "target",
    device: Annotated[str, typer.Option(help="MLP device: auto, cpu, cuda.")] = "auto",
    cv: Annotated[bool, typer.Option(help="Spatial cross-validation before the final "
                                     "fit.")] = True,
    predict: Annotated[bool, typer.Option(help="Write susceptibility maps (raster "
                                          "regions).")] = True,
    explain: Annotated[bool, typer.Option(help="SHAP explanations.")] = True,
    params: Annotated[Path | None, typer.Option("--params", help="Hyper-parameters per "
                                                "family: a YAML file ({xgb: {max_depth: "
                                                "4}}) or an 'lsm tune' run folder (its "
                                                "best_params.yaml).")] = None,
    seed: Seed = 0,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Pretrain source models in a data-rich region (with spatial cross-validation).

    Writes runs/<region>/: model/<family>/ (code-free artifacts), model.json (feature
    schema, normalisation statistics, checksums), metrics.json, the training table.
    Several sources (--source a,b) write runs/a+b/ with the factors all of them share,
    cross-validated on each region's own folds (pooled and per-region scores).
    """
    _set_data_dir(data_dir)
    _check_device(device)
    from lsm import api
    from lsm.config.params import load_params
    from lsm.workflows.report import print_fit_metrics

    def show(run: Any) -> None:
        print_fit_metrics(run.metrics, _console())
        _print_region_cv(run.metrics, _console())

    api.fit(source, models=_families(model), out=out, seed=seed,
            factors=[f.strip() for f in factors.split(",")] if factors else None,
            norm=norm, device=device, cv=cv, maps=predict, explain=explain,
            params=load_params(params) if params is not None else None,
            progress=not quiet, console=_console(), on_trained=show, command=_command())


def _print_region_cv(metrics: dict[str, Any], console: Any) -> None:
    """Per-region cross-validation AUC / log-loss of a multi-source fit."""
    rows = [(fam, r, s["summary"]) for fam, cv in metrics.get("cv", {}).items()
            for r, s in cv.get("per_region", {}).items()]
    if not rows:
        return
    from rich.table import Table

    t = Table("model", "region", "AUC", "log-loss", title="per source region (its own folds, "
              "mean ± std)")
    for fam, region, s in rows:
        t.add_row(fam, region, *(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"
                                 for k in ("auc", "log_loss")))
    console.print(t)


@app.command()
def tune(
    source: Annotated[str, typer.Option("--source", "-s", help="Data-rich region: built-in "
                                        "name or spec path.")] = "hongkong",
    model: Annotated[str, typer.Option("--model", "-m", help="Family to tune: rf, lr, xgb "
                                       "or mlp.")] = "xgb",
    trials: Annotated[int, typer.Option(help="Trials to add to the study.", min=1)] = 20,
    timeout: Annotated[float | None, typer.Option(help="Start no trial after this many "
                                                  "seconds.", min=1)] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder; tuning again on it resumes "
                                             "the study \\[default: "
                                             "runs/tune-<region>-<model>].")] = None,
    factors: Annotated[str | None, typer.Option(help="Comma list of factors \\[default: as "
                                                "lsm fit].")] = None,
    norm: Annotated[str, typer.Option(help="Normalisation, as for lsm fit.")] = "target",
    device: Annotated[str, typer.Option(help="MLP device: auto, cpu, cuda.")] = "auto",
    seed: Seed = 0,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Tune one family's hyper-parameters by spatial cross-validation (Optuna).

    Each trial scores a parameter set by its mean held-out log-loss on the
    source's spatial folds (those lsm fit reports); trials clearly worse than
    earlier ones after a fold are pruned. The first trial of a new study is the
    family's defaults. The study is kept in <out>/study.db, so running lsm tune
    again on the same --out adds trials to it (also after Ctrl-C). The best
    parameters go to <out>/best_params.yaml; use them with
    lsm fit --params <out>.
    """
    _set_data_dir(data_dir)
    _check_device(device)
    from lsm.workflows.tune import TuneConfig, run_tune

    cfg = TuneConfig(source=source, model=model.strip(), trials=trials, timeout=timeout,
                     out=out,
                     factors=[f.strip() for f in factors.split(",")] if factors else None,
                     norm=norm, device=device, seed=seed, progress=not quiet,
                     command=_command())
    _print_tune(run_tune(cfg), _console())


def _print_tune(s: dict[str, Any], console: Any) -> None:
    """Default vs best trial of a tune run, and where the parameters went."""
    from rich.table import Table

    console.print(f"{s['study']}: {s['n_trials']} trials in the study ({s['n_new']} new; "
                  f"{s['n_complete']} complete, {s['n_pruned']} pruned, {s['n_failed']} "
                  "failed)")
    t = Table("trial", "", "AUC", "log-loss", title="spatial cross-validation (mean over folds)")
    for name in ("default", "best"):
        r = s.get(name)
        if r is not None:
            t.add_row(str(r["number"]), name, f"{r['auc']:.4f}", f"{r['log_loss']:.4f}")
    console.print(t)
    if s.get("best") is not None:
        console.print("best: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                           f"{k}={v}" for k, v in s["best"]["params"].items()))
        console.print(f"parameters -> {s['best_params']} (lsm fit --params "
                      f"{Path(s['best_params']).parent})")


@app.command()
@_on_scheduler
def finetune(
    target: Annotated[str, typer.Option("--target", "-t", help="Data-scarce region: spec path "
                                        "or built-in name.")],
    shots: Annotated[str, typer.Option("--shots", "-k", help="Study: K landslides (and K "
                                       "non-landslides) per repeat, every arm scored on a "
                                       "fixed hold-out. 'all': production, the delivered "
                                       "model trained on every labelled point, skill by "
                                       "cross-validation.")] = "50",
    from_run: Annotated[Path | None, typer.Option("--from", help="Source run folder (a fit "
                                                  "or finetune run) \\[default: "
                                                  "runs/hongkong].")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Families \\[default: all "
                                              "in the source run].")] = None,
    repeats: Annotated[int, typer.Option(help="Repeats with different shots.")] = 10,
    norm: Annotated[str | None, typer.Option(help="target, quantile, source or none "
                                             "\\[default: the source run's].")] = None,
    prevalence: Annotated[float | None, typer.Option(help="Expected landslide share in the "
                                                     "target; corrects the base rate of "
                                                     "maps and metrics.")] = None,
    anchor: Annotated[str, typer.Option(help="Stage-2 anchoring to the source: auto (strength "
                                        "chosen by cross-validation on the shots) or fixed "
                                        "(each family's default).")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Run folder \\[default: "
                                             "runs/<source>-to-<target>-k<K>].")] = None,
    device: Annotated[str, typer.Option(help="MLP device: auto, cpu, cuda.")] = "auto",
    reweight: Annotated[bool, typer.Option(help="Re-train the source models with importance "
                                           "weights towards target-like terrain (a domain "
                                           "classifier on unlabelled target rows; fit runs "
                                           "only).")] = False,
    predict: Annotated[bool, typer.Option(help="Write susceptibility maps.")] = True,
    explain: Annotated[bool, typer.Option(help="SHAP explanations.")] = True,
    seed: Seed = 0,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Adapt source models to a region with few landslides; deliver one model.

    The run delivers one model (row 'lsm', arm 'delivered'): a transfer
    strategy chosen by cross-validation on the shots alone, never on the
    hold-out. It is scored beside the source model alone, a model trained
    on the shots alone, and each family's stage 1 (head re-fit) and
    stage 2 (fine-tuned, anchored at the source), on one held-out target
    set, with paired differences. Its map model is re-fitted on every
    labelled point outside the hold-out.

    With --shots all there is no hold-out: every labelled point trains the
    delivered model, and nested cross-validation (spatial blocks where
    coordinates exist) estimates its skill.
    """
    _set_data_dir(data_dir)
    _check_device(device)
    _check_prevalence(prevalence)
    from lsm import api
    from lsm.workflows.report import print_finetune_metrics

    k: int | str = shots.strip().lower()
    if k != "all":
        try:
            k = int(str(k))
        except ValueError:
            raise typer.BadParameter(f"{shots!r}: a whole number of shots or 'all'",
                                     param_hint="--shots") from None
        if not 1 <= k <= 100_000:
            raise typer.BadParameter(f"{shots!r}: must be between 1 and 100000, or 'all'",
                                     param_hint="--shots")
    api.finetune(target, from_run, shots=k, repeats=repeats,
                 models=_families(model) if model else None, seed=seed, out=out, norm=norm,
                 prevalence=prevalence, device=device, anchor=anchor, reweight=reweight,
                 maps=predict, explain=explain, progress=not quiet, console=_console(),
                 on_trained=lambda run: print_finetune_metrics(run.metrics, _console()),
                 command=_command())


# ---------------------------------------------------------------------------
# maps and explanations


@app.command()
@_on_scheduler
def predict(
    run: Annotated[Path, typer.Option("--run", help="A fit or finetune run folder.")],
    region: Annotated[str | None, typer.Option("--region", "-r", help="Raster region to map "
                                               "\\[default: the run's region].")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="One family \\[default: "
                                              "the run's best by AUC].")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder \\[default: <run>/maps].")] = None,
    thresholds: Annotated[str | None, typer.Option(help="Four increasing zone thresholds, e.g. "
                                                   "0.2,0.4,0.6,0.8 \\[default: quantiles "
                                                   "20/40/60/80%].")] = None,
    prevalence: Annotated[float | None, typer.Option(help="Expected landslide share; shifts "
                                                     "the map's base rate.")] = None,
    uncertainty: Annotated[int | None, typer.Option(help="Bootstrap refits behind the "
                                                    "uncertainty layer (std of P per pixel "
                                                    "or unit), at most 200; 0: none "
                                                    "\\[default: 10 for a delivered model, "
                                                    "else none].",
                                                    min=0, max=200)] = None,
    force_zones: Annotated[bool, typer.Option("--force-zones", help="Write the zones even "
                                              "when the run's fine-tune found no skill "
                                              "above chance (withheld by default then).")
                           ] = False,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Write a susceptibility map: probability COG, classed zones GeoTIFF, PNG quick-looks.

    Prediction runs block by block over the lazy factor stack; pixels with any missing
    factor stay nodata. Zones: very low, low, moderate, high, very high. A table region
    (slope units, points) gets per-unit probabilities and zones instead: Parquet and
    CSV, and a GeoPackage when the units have coordinates or geometry.
    """
    _set_data_dir(data_dir)
    _check_prevalence(prevalence)
    from rich.table import Table

    from lsm import api

    cuts = None
    if thresholds:
        from lsm.mapping.zones import validate_thresholds

        try:
            cuts = validate_thresholds([float(t) for t in thresholds.split(",")])
        except ValueError as err:
            msg = str(err) if "could not convert" not in str(err) else \
                f"{thresholds!r} is not a comma list of numbers"
            raise typer.BadParameter(msg, param_hint="--thresholds") from None
    res = api.predict(run, region, out=out, model=model, thresholds=cuts,
                      prevalence=prevalence, uncertainty=uncertainty,
                      force_zones=force_zones, progress=not quiet)
    con = _console()
    if res.report is not None:
        con.print(f"report -> {res.report}")
    from lsm.workflows.report import zone_table

    units = "table" in res.files
    rates = res.details.get("zone_rates") or {}
    head, rows = zone_table(res.zone_statistics.to_dict(orient="records"), rates, units=units)
    t = Table(*head, title=f"{res.region} ({res.model}): landslide density per zone",
              caption=rates.get("text") or None)
    for row in rows:
        t.add_row(*row)
    if len(res.zone_statistics):
        con.print(t)
    if res.details.get("base_rate"):
        con.print(f"probabilities: {res.details['base_rate']['text']}", soft_wrap=True)
    for k, p in res.files.items():
        con.print(f"{k}: {p}")


@app.command()
def explain(
    run: Annotated[Path, typer.Option("--run", help="A fit or finetune run folder.")],
    shap_maps: Annotated[bool, typer.Option("--shap-maps", help="Also write per-pixel SHAP "
                                            "GeoTIFFs of the top factors (raster "
                                            "regions).")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Family for --shap-maps "
                                              "\\[default: the run's best].")] = None,
    region: Annotated[str | None, typer.Option("--region", "-r", help="Raster region for "
                                               "--shap-maps \\[default: the run's].")] = None,
    top: Annotated[int, typer.Option(help="Number of factors for --shap-maps.", min=1)] = 3,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """SHAP explanations of a run's models (importance bars and beeswarms).

    For a fine-tuned run it also shows factor importance in the source model next to
    the fine-tuned one: what the transfer changed.
    """
    _set_data_dir(data_dir)
    from lsm import api

    res = api.explain(run, shap_maps=shap_maps, model=model, region=region, top=top,
                      progress=not quiet)
    con = _console()
    for fam, imp in res.importance.items():
        con.print(f"{fam}: " + ", ".join(f"{k} {v:.3f}" for k, v in imp.head(5).items()))
    con.print(f"figures -> {run / 'figures'}/")
    for p in res.shap_maps:
        con.print(f"SHAP map -> {p}")


# ---------------------------------------------------------------------------
# demo


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Folder for the demo regions \\[default: "
                                             "the cache, or LSM_DEMO_DIR].")] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Generate two synthetic regions offline and run the whole path on them."""
    from lsm.workflows.demo import run_demo

    run_demo(out=out, seed=seed, progress=not quiet, console=_console())


@app.command(name="run")
@_on_scheduler
def run_pipeline(
    pipeline: Annotated[Path | None, typer.Argument(help="Pipeline YAML (see pipelines/).",
                                                    show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Results folder (default: the pipeline's "
                                             "'out', or runs/pipelines/<name>; --out "
                                             "results/<name> regenerates the published "
                                             "results).")] = None,
    repeats: Annotated[int | None, typer.Option(help="Override every study's repeats (quick "
                                                "checks).", min=1)] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo every step, even those already "
                                        "complete.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Print a commented template "
                                           "pipeline and exit.")] = False,
    data_dir: DataDir = None,
    quiet: Quiet = False,
) -> None:
    """Run a pipeline of fits and fine-tunes; resumes where an interrupted run stopped.

    Steps whose inputs are unchanged since they completed are skipped. Writes
    <out>/results.csv (+ .parquet), summary.csv, summary.md, figures/ and pipeline.json
    (<out> defaults to runs/pipelines/<name>, which git ignores).
    """
    if template:
        from lsm.config.pipeline import pipeline_template

        typer.echo(pipeline_template(), nl=False)
        return
    if pipeline is None:
        raise typer.BadParameter("give a pipeline YAML file (or --template)",
                                 param_hint="PIPELINE")
    _set_data_dir(data_dir)
    from lsm.config.pipeline import load_pipeline
    from lsm.workflows.pipeline import apply_overrides, print_pipeline_summary
    from lsm.workflows.pipeline import run_pipeline as run

    overrides = {"repeats": repeats} if repeats is not None else {}
    cfg = apply_overrides(load_pipeline(pipeline), repeats=repeats)
    res = run(cfg, out=out, force=force, progress=not quiet, overrides=overrides,
              command=_command())
    print_pipeline_summary(res, _console())


# ---------------------------------------------------------------------------


@functools.cache
def _click_command() -> Any:
    """The click command behind :data:`app`, with plain flags showing no ``<bool>`` type."""
    cmd = typer.main.get_command(app)
    for sub in [cmd, *getattr(cmd, "commands", {}).values()]:
        for param in sub.params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        sub.get_help_option = _blank_metavar(sub.get_help_option)
        if sub.help:
            sub.help = _reflow(sub.help)
    return cmd


def _reflow(text: str) -> str:
    """Join the hard-wrapped lines of each help paragraph (rich keeps single newlines, so a
    docstring wrapped at 90 columns shows ragged 80-column help); list items and command
    examples keep their own lines."""
    import inspect
    import re

    text = inspect.cleandoc(text)
    return re.sub(r"(?<=\S)\n(?!\n|\s*(?:[-*•]|lsm |\d+\.)\s)", " ", text)


def _blank_metavar(get_help_option: Any) -> Any:
    @functools.wraps(get_help_option)
    def wrapped(ctx: Any) -> Any:
        opt = get_help_option(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    return wrapped


def _os_error_line(e: OSError) -> str:
    """One line for an operating-system error: what happened, to which path."""
    import errno

    path = e.filename or ""
    if e.filename2:
        path = f"{path} -> {e.filename2}"
    what = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system",
            errno.EEXIST: "is a file, not a folder" if e.filename and Path(e.filename).is_file()
            else "already exists",
            errno.ENOTDIR: "not a folder (a file is in the way)",
            errno.EISDIR: "is a folder, not a file", errno.ENOENT: "no such file or folder",
            }.get(e.errno or -1) or (e.strerror or str(e)).lower()
    return f"{what}: {path}" if path else f"{what} ({' '.join(str(e).split())})"


def _where(e: BaseException) -> str:
    """`` at module.py:line`` of the innermost lsm frame of ``e``'s traceback, or ''."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/lsm/" in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(f.filename).name}:{f.lineno}"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (tests call ``main([...])``).

    Warnings are printed as one ``note: ...`` line each, once.
    """
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    _NOTES.clear()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    rc = 1
    try:
        rc = _dispatch(argv)
    finally:
        if "lsm.workflows.runs" in sys.modules:
            from lsm.workflows.runs import release_claims

            # the run folders this command held are free again; a refused or failed
            # command leaves no empty run folder
            release_claims(failed=rc != 0)
    return rc


def _dispatch(argv: list[str] | None) -> int:
    from lsm.errors import LsmError

    # typer >= 0.2x ships its own copy of click; catch the exceptions it raises
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # older typer on plain click
        from click.exceptions import ClickException

        NoArgsIsHelpError = ()  # type: ignore[assignment,misc]

    try:
        # without standalone mode typer turns Ctrl-C (and typer.Exit) into a returned code
        rv = _click_command()(args=argv, prog_name="lsm", standalone_mode=False)
    except typer.Exit as e:
        rv = e.exit_code
    except NoArgsIsHelpError as e:  # 'lsm' alone: help, as a usage error
        e.show()
        return 2
    except ClickException as e:
        e.show()
        return int(e.exit_code)
    except typer.Abort:
        _console(stderr=True).print("aborted")
        return _INTERRUPTED
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted")
        return _INTERRUPTED
    except LsmError as e:
        _console(stderr=True).print(f"[red]error:[/] {e}", soft_wrap=True)
        return 2
    except OSError as e:  # disk full, read-only folder, a path that is a file, ...
        _console(stderr=True).print(f"error: {_os_error_line(e)}", soft_wrap=True, markup=False)
        return 1
    except Exception as e:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            from lsm.config.spec import format_validation_error

            _console(stderr=True).print(f"[red]error:[/] {format_validation_error(e, 'option')}",
                                        soft_wrap=True)
            return 2
        if os.environ.get("LSM_DEBUG"):
            raise
        where = _where(e)
        _console(stderr=True).print(
            f"error: internal error {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            f"{where} (a bug in lsm: LSM_DEBUG=1 shows the traceback)",
            soft_wrap=True, markup=False)
        return 1
    if isinstance(rv, int) and not isinstance(rv, bool):
        if rv == _INTERRUPTED:
            _console(stderr=True).print("interrupted")
        return rv
    return 0


if __name__ == "__main__":
    sys.exit(main())
