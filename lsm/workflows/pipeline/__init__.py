"""``lsm run``: execute a pipeline of fits and fine-tunes, resume it, tabulate the results.

A pipeline (:mod:`lsm.config.pipeline`) becomes a list of steps, each one
call of :func:`~lsm.workflows.fit.run_fit`, :func:`~lsm.workflows.finetune.run_finetune`
or a derived-region cut (a spatial-block subset of a region written as a
table region).  Steps shared by several studies run once.

Resume
------
Each step has a key: the sha256 of its configuration, of the regions it
reads (the spec text plus the checksum of every file it names) and of the
outputs of the steps it builds on.  ``step.json``, written atomically and
last, holds the key and the sha256 of every file the step wrote.  A rerun
skips a step whose ``step.json`` has the same key and whose files are
unchanged; any other step's folder is emptied and the step redone.  A
crash therefore never leaves a step that looks complete, and changing an
input (``repeats``, a region's data) redoes exactly the steps downstream
of it.  Changes to lsm's own code are not seen (the key holds the lsm
version and :data:`STEP_VERSIONS` only): use ``--force`` after editing it.

Layout of a results folder::

    pipeline.json        resolved config, overrides, git commit, date, machine, step log
    results.csv          one row per study, source, target, family, arm, K, repeat
    results.parquet      the same table
    summary.csv          mean, std (over repeats) and count per group
    summary.md           tables per study, figures, notes
    figures/*.png
    steps/<step>/        a fit or fine-tune run folder, or a derived region; step.json

Example
-------
>>> from lsm.config.pipeline import load_pipeline
>>> res = run_pipeline(load_pipeline("pipelines/demo.yaml"), progress=False)  # doctest: +SKIP
>>> res.results.groupby(["study", "arm"])["auc"].mean()                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsm.config.pipeline import (
    PipelineConfig,
    ProgressiveStudy,
    ShotsStudy,
    SourceScaleStudy,
    dump_pipeline,
    resolve_region_ref,
)
from lsm.config.run import FinetuneConfig, FinetuneOptions, FitConfig
from lsm.config.spec import dump_region, load_region
from lsm.errors import LsmError, SamplingError
from lsm.io.artifacts import atomic_path, read_json, sha256_file, write_json
from lsm.workflows.finetune import run_finetune
from lsm.workflows.fit import run_fit
from lsm.workflows.progress import progress_bar
from lsm.workflows.runs import now_iso, package_versions

STEP_JSON = "step.json"
STEP_FORMAT = 1
#: Bumped when what a step kind computes changes, so older outputs are redone.
STEP_VERSIONS = {"derive": 2, "fit": 1, "finetune": 2}
METRIC_ORDER = ("auc", "log_loss", "brier", "accuracy")
ID_COLUMNS = ("study", "kind", "source", "target", "chain", "route", "norm", "fraction",
              "n_source", "family", "arm", "shots")
FIGURE_METRICS = ("auc", "log_loss")


# ---------------------------------------------------------------------------
# plan


@dataclass
class Step:
    """One unit of work: a derived region, a fit or a fine-tune."""

    name: str
    kind: str  # "derive" | "fit" | "finetune"
    config: dict[str, Any]  # JSON-ready, regions by display name
    regions: dict[str, str]  # role -> region reference (name, spec path or derived name)
    upstream: list[str]  # steps whose outputs this one reads
    label: str


@dataclass
class Entry:
    """A study's use of a step's results, with the row context it adds."""

    study: str
    kind: str
    step: str
    root_fit: str  # the fit whose region is the study's source (for n_source)
    context: dict[str, Any]


@dataclass
class Plan:
    cfg: PipelineConfig
    steps: dict[str, Step] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    _idents: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, base: str, config: dict[str, Any], regions: dict[str, str],
            upstream: list[str], label: str) -> str:
        """Add a step (or find the identical one already planned); return its name."""
        ident = json.dumps([kind, config, regions, upstream], sort_keys=True, default=str)
        if ident in self._idents:
            return self._idents[ident]
        name, n = _slug(base), 2
        while name in self.steps:
            name, n = f"{_slug(base)}-{n}", n + 1
        self.steps[name] = Step(name, kind, config, regions, upstream, label)
        self._idents[ident] = name
        return name

    # -- regions
    def display(self, ref: str) -> str:
        return _display(self.cfg, ref)

    def region(self, ref: str) -> tuple[str, list[str]]:
        """Reference to use for ``ref`` and the derive step it needs (if any)."""
        if ref in self.cfg.regions:
            d = self.cfg.regions[ref]
            return ref, [self.derive(ref, d.from_, fraction=d.fraction, part=d.part,
                                     order=d.order, block_size=d.block_size,
                                     seed=self.cfg.seed if d.seed is None else d.seed)]
        return resolve_region_ref(self.cfg, ref), []

    def derive(self, name: str, source: str, *, fraction: float, part: str, order: str,
               block_size: float | None, seed: int) -> str:
        src, up = self.region(source)
        config = {"name": name, "from": self.display(source), "fraction": fraction,
                  "part": part, "order": order, "block_size": block_size, "seed": seed}
        return self.add("derive", f"region-{name}", config, {"from": src}, up,
                        f"cutting {name} out of {self.display(source)}")

    def fit(self, ref: str, study: Any, norm: str) -> str:
        src, up = self.region(ref)
        seed = self.cfg.study_seed(study)
        config = {"source": self.display(ref), "models": list(study.models), "norm": norm,
                  "seed": seed, "cv": study.cv, "device": study.device}
        return self.add("fit", f"fit-{self.display(ref)}-{norm}", config, {"source": src}, up,
                        f"fit {self.display(ref)} ({norm} norm)")

    def finetune(self, ref: str, parent: str, chain: list[str], study: Any, norm: str,
                 shots: int) -> str:
        tgt, up = self.region(ref)
        config = {"target": self.display(ref), "shots": shots, "models": list(study.models),
                  "norm": norm, "seed": self.cfg.study_seed(study),
                  **study.finetune_options()}
        route = "-to-".join(chain)
        return self.add("finetune", f"ft-{route}-k{shots}-{norm}", config, {"target": tgt},
                        [parent] + up, f"fine-tune {' -> '.join(chain)}, K={shots} ({norm})")

    def use(self, study: Any, step: str, root_fit: str, **context: Any) -> None:
        self.entries.append(Entry(str(study.id), study.kind, step, root_fit, context))


def _display(cfg: PipelineConfig, ref: str) -> str:
    """Short name of a region reference: the name itself, or a spec file's stem."""
    if ref in cfg.regions:
        return ref
    return Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return out[:150]


def _fraction_name(source: str, fraction: float) -> str:
    return f"{source}-{100 * fraction:g}pct"


def build_plan(cfg: PipelineConfig) -> Plan:
    """Turn a pipeline into ordered steps (upstream first) and study entries."""
    plan = Plan(cfg)
    for study in cfg.studies:
        for norm in study.norms:
            if isinstance(study, ShotsStudy):
                src = plan.display(study.source)
                fit = plan.fit(study.source, study, norm)
                if study.cv:
                    plan.use(study, fit, fit, source=src, target=src, chain=src,
                             route="source_cv", norm=norm)
                for target in study.targets:
                    tgt = plan.display(target)
                    for k in study.shots:
                        ft = plan.finetune(target, fit, [src, tgt], study, norm, k)
                        plan.use(study, ft, fit, source=src, target=tgt, chain=f"{src}>{tgt}",
                                 route="direct", norm=norm, shots=k)
            elif isinstance(study, SourceScaleStudy):
                src, tgt = plan.display(study.source), plan.display(study.target)
                for frac in study.fractions:
                    # each subset becomes a derived region of its own
                    name, sub = _fraction_name(src, frac), _derived(study, frac, cfg)
                    if cfg.regions.get(name, sub) != sub:
                        name = f"{study.id}-{name}"
                    cfg.regions[name] = sub
                    fit = plan.fit(name, study, norm)
                    if study.cv:
                        plan.use(study, fit, fit, source=src, target=name, chain=name,
                                 route="source_cv", norm=norm, fraction=frac)
                    ft = plan.finetune(study.target, fit, [name, tgt], study, norm,
                                       study.shots)
                    plan.use(study, ft, fit, source=src, target=tgt, chain=f"{name}>{tgt}",
                             route="direct", norm=norm, shots=study.shots, fraction=frac)
            elif isinstance(study, ProgressiveStudy):
                names = [plan.display(r) for r in study.chain]
                fit = plan.fit(study.chain[0], study, norm)
                if study.cv:
                    plan.use(study, fit, fit, source=names[0], target=names[0],
                             chain=names[0], route="source_cv", norm=norm)
                prev = fit
                for i in range(1, len(names)):
                    prev = plan.finetune(study.chain[i], prev, names[: i + 1], study, norm,
                                         study.shots)
                    plan.use(study, prev, fit, source=names[0], target=names[i],
                             chain=">".join(names[: i + 1]), route="chain", norm=norm,
                             shots=study.shots)
                direct = plan.finetune(study.chain[-1], fit, [names[0], names[-1]], study, norm,
                                       study.shots)
                plan.use(study, direct, fit, source=names[0], target=names[-1],
                         chain=f"{names[0]}>{names[-1]}", route="direct", norm=norm,
                         shots=study.shots)
    return plan


def _derived(study: SourceScaleStudy, frac: float, cfg: PipelineConfig) -> Any:
    from lsm.config.pipeline import DerivedRegion

    return DerivedRegion(**{"from": study.source, "fraction": frac, "order": study.order,
                            "block_size": study.block_size, "seed": cfg.study_seed(study)})


# ---------------------------------------------------------------------------
# derived regions


def block_subset(table: pd.DataFrame, fraction: float, *, part: str = "first",
                 order: str = "random", block_size: float | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, float | None]:
    """Rows of ``table`` in the first spatial blocks holding ``fraction`` of its points.

    Blocks (default edge: a twentieth of the longer extent) are put in one
    seeded order (``random``, or ``compact``: by distance from a seeded start
    block) and taken until the share of points comes closest to ``fraction``,
    so for a fixed seed a smaller fraction is always inside a larger one.
    ``part="rest"`` returns the other rows.
    Without coordinates every row is its own block.  Returns the boolean mask
    and the block size used.

    Example
    -------
    >>> m10, _ = block_subset(table, 0.1); m50, _ = block_subset(table, 0.5)  # doctest: +SKIP
    >>> bool((m10 <= m50).all())                                              # doctest: +SKIP
    True
    """
    from lsm.sampling.folds import block_ids, default_block_size

    n = len(table)
    has_xy = {"x", "y"} <= set(table.columns) and table[["x", "y"]].notna().all().all()
    rng = np.random.default_rng(seed)
    if has_xy:
        x, y = table["x"].to_numpy("float64"), table["y"].to_numpy("float64")
        bs = block_size or default_block_size(x, y, per_side=20)
        ids = block_ids(x, y, bs)
    else:
        x = y = np.zeros(n)
        bs, ids = None, np.arange(n)
    uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    if order == "compact" and has_xy:
        cx = np.bincount(inverse, weights=x) / counts
        cy = np.bincount(inverse, weights=y) / counts
        start = int(rng.integers(len(uniq)))
        ranked = np.argsort(np.hypot(cx - cx[start], cy - cy[start]), kind="stable")
    else:
        ranked = rng.permutation(len(uniq))
    # the block count whose point total comes closest to the fraction asked
    cum = np.cumsum(counts[ranked])
    m = int(np.argmin(np.abs(cum - fraction * n))) + 1
    mask = np.isin(inverse, ranked[:m])
    return (~mask if part == "rest" else mask), bs


def write_derived_region(data: Any, out: Path, *, name: str, fraction: float, part: str,
                         order: str, block_size: float | None, seed: int,
                         source_name: str) -> dict[str, Any]:
    """Write ``region.yaml`` + ``samples.parquet``: a block subset of ``data`` as a table region.

    Factor values are the cleaned ones of the source (scale, nodata and
    legend names applied), so every factor maps to its own column.
    """
    import yaml

    spec = data.spec
    table = data.table
    mask, bs = block_subset(table, fraction, part=part, order=order, block_size=block_size,
                            seed=seed)
    sub = table.loc[mask]
    y = sub["label"].to_numpy()
    where = f"regions.{name}"
    if len(sub) == 0 or (y == 1).all() or (y == 0).all():
        raise SamplingError(f"{where}: the {part} {fraction:.0%} of {source_name} by spatial "
                            f"blocks holds {int((y == 1).sum())} landslides and "
                            f"{int((y == 0).sum())} non-landslides; change 'fraction' or "
                            "'block_size'")
    has_xy = {"x", "y"} <= set(sub.columns)
    factors = list(data.kinds)
    cols = (["x", "y"] if has_xy else []) + factors + ["label"]
    out.mkdir(parents=True, exist_ok=True)
    sub[cols].reset_index(drop=True).to_parquet(out / "samples.parquet", index=False)
    crs = table.attrs.get("crs") or spec.crs or (spec.samples.crs if spec.samples else None)
    fdefs: dict[str, Any] = {}
    for f in factors:
        src = spec.factors.get(f)
        d: dict[str, Any] = {"column": f}
        if src is not None and src.kind is not None:
            d["kind"] = src.kind
        if data.kinds[f] == "categorical" and src is not None and src.categories:
            # values are legend names already: the identity keeps them comparable
            names = sorted({str(v) for v in sub[f].dropna().unique()})
            d["categories"] = {v: v for v in names}
        fdefs[f] = d
    samples: dict[str, Any] = {"path": "samples.parquet", "label": "label"}
    if has_xy:
        samples.update({"x": "x", "y": "y"})
        if crs:
            samples["crs"] = str(crs)
    how = (f"the {'first' if part == 'first' else 'other'} spatial blocks ({order} order, "
           f"seed {seed}" + (f", {bs:g} map units" if bs else "") + ")")
    doc: dict[str, Any] = {
        "name": name,
        "description": f"{len(sub):,} of the {len(table):,} points of {source_name} "
                       f"({len(sub) / len(table):.1%}; asked {fraction:.0%}, {part}) in {how}.",
        "citation": spec.citation,
        "samples": samples,
        "factors": fdefs,
        "folds": spec.folds.model_dump(mode="json"),
    }
    if crs:
        doc["crs"] = str(crs)
    if spec.exclude_from_transfer:
        doc["exclude_from_transfer"] = [f for f in spec.exclude_from_transfer if f in factors]
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    from lsm.io.artifacts import atomic_write_bytes

    atomic_write_bytes(out / "region.yaml", text.encode("utf-8"))
    return {"n": int(len(sub)), "n_landslides": int((y == 1).sum()),
            "share": float(len(sub) / len(table)), "block_size": bs}


# ---------------------------------------------------------------------------
# execution


@dataclass
class StepState:
    status: str  # "ran" | "reused" | "skipped"
    dir: Path
    output_hash: str
    note: str | None = None
    seconds: float = 0.0
    key: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns (and wrote into ``out``)."""

    out: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    figures: dict[str, list[Path]]  # by study id
    notes: list[str]
    steps: dict[str, StepState]
    config: PipelineConfig
    seconds: float

    def count(self, status: str) -> int:
        return sum(s.status == status for s in self.steps.values())


def _lsm_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lsm")
    except metadata.PackageNotFoundError:
        return "unknown"


def _hash_obj(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _output_files(d: Path) -> dict[str, str]:
    """sha256 of every file a step wrote (all but step.json and temp files)."""
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != STEP_JSON and not p.name.startswith("."):
            out[p.relative_to(d).as_posix()] = sha256_file(p)
    return out


class _Runner:
    def __init__(self, plan: Plan, out: Path, *, force: bool, command: str | None) -> None:
        self.plan = plan
        self.out = out
        self.force = force
        self.command = command
        self.state: dict[str, StepState] = {}
        self._spec_hash: dict[str, str] = {}
        self._data: dict[str, Any] = {}

    def step_dir(self, name: str) -> Path:
        return self.out / "steps" / name

    def spec_source(self, ref: str) -> str:
        """What ``load_region`` takes for ``ref``: a derived step's region.yaml or ``ref``."""
        if ref in self.plan.cfg.regions:
            step = next(s for s in self.plan.steps.values()
                        if s.kind == "derive" and s.config["name"] == ref)
            return str(self.step_dir(step.name) / "region.yaml")
        return ref

    def region_hash(self, ref: str) -> str:
        """sha256 of a region's spec and data files (derived: its step's output hash)."""
        if ref in self.plan.cfg.regions:
            step = next(s for s in self.plan.steps.values()
                        if s.kind == "derive" and s.config["name"] == ref)
            return self.state[step.name].output_hash
        if ref not in self._spec_hash:
            spec = load_region(ref)
            files = {}
            for key, fref in spec.file_refs().items():
                if fref.sha256:
                    files[key] = fref.sha256
                elif fref.path:
                    p = Path(fref.path).expanduser()
                    p = p if p.is_absolute() else spec.base_dir / p
                    files[key] = sha256_file(p) if p.exists() else "missing"
            self._spec_hash[ref] = _hash_obj({"spec": dump_region(spec), "files": files})
        return self._spec_hash[ref]

    def key(self, step: Step) -> tuple[str, dict[str, str]]:
        inputs = {f"region:{role}": self.region_hash(ref) for role, ref in step.regions.items()}
        inputs.update({f"step:{u}": self.state[u].output_hash for u in step.upstream})
        return _hash_obj({"format": STEP_FORMAT, "version": STEP_VERSIONS[step.kind],
                          "lsm": _lsm_version(), "kind": step.kind, "config": step.config,
                          "inputs": inputs}), inputs

    def completed(self, step: Step, key: str) -> dict[str, Any] | None:
        p = self.step_dir(step.name) / STEP_JSON
        if self.force or not p.exists():
            return None
        try:
            rec = read_json(p)
        except LsmError:
            return None
        if not isinstance(rec, dict) or rec.get("key") != key:
            return None
        if rec.get("status") == "done":
            if _output_files(self.step_dir(step.name)) != rec.get("outputs"):
                return None
        elif rec.get("status") != "skipped":
            return None
        return rec

    def run(self, step: Step) -> StepState:
        d = self.step_dir(step.name)
        skipped_up = [u for u in step.upstream if self.state[u].status == "skipped"
                      or self.state[u].output_hash == "skipped"]
        if skipped_up:
            return StepState("skipped", d, "skipped",
                             note=f"{step.name}: skipped because {skipped_up[0]} was skipped")
        key, inputs = self.key(step)
        rec = self.completed(step, key)
        if rec is not None:
            status = "reused" if rec["status"] == "done" else "skipped"
            return StepState(status, d, rec.get("output_hash", "skipped"), note=rec.get("note"),
                             seconds=float(rec.get("seconds", 0.0)), key=key,
                             warnings=list(rec.get("warnings", [])))
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        note = None
        info: dict[str, Any] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                info = self._execute(step, d)
            except SamplingError as err:
                if step.kind != "finetune":
                    raise type(err)(f"step {step.name}: {err}") from err
                note = f"{step.name}: skipped: {err}"
            except LsmError as err:
                raise type(err)(f"step {step.name}: {err}") from err
        msgs = list(dict.fromkeys(str(w.message) for w in caught
                                  if issubclass(w.category, UserWarning)))
        seconds = time.perf_counter() - t0
        if note is not None:
            shutil.rmtree(d)
            d.mkdir(parents=True)
            outputs: dict[str, str] = {}
            out_hash, status = "skipped", "skipped"
        else:
            outputs = _output_files(d)
            out_hash, status = _hash_obj(outputs), "done"
        write_json(d / STEP_JSON, {
            "format": STEP_FORMAT, "name": step.name, "kind": step.kind, "key": key,
            "status": status, "note": note, "config": step.config, "inputs": inputs,
            "info": info, "outputs": outputs, "output_hash": out_hash,
            "seconds": round(seconds, 3), "finished": now_iso(), "warnings": msgs,
        })
        return StepState("ran" if status == "done" else "skipped", d, out_hash, note=note,
                         seconds=seconds, key=key, warnings=msgs)

    def _execute(self, step: Step, d: Path) -> dict[str, Any]:
        c = step.config
        if step.kind == "derive":
            src = self.spec_source(step.regions["from"])
            if src not in self._data:
                from lsm.workflows.region import load_region_data

                self._data[src] = load_region_data(load_region(src), progress=False)
            return write_derived_region(self._data[src], d, name=c["name"],
                                        fraction=c["fraction"], part=c["part"],
                                        order=c["order"], block_size=c["block_size"],
                                        seed=c["seed"], source_name=c["from"])
        if step.kind == "fit":
            m = run_fit(FitConfig(source=self.spec_source(step.regions["source"]),
                                  models=c["models"], out=d, seed=c["seed"], norm=c["norm"],
                                  device=c["device"], cv=c["cv"], progress=False,
                                  command=self.command))
            return {"n": m["n"], "n_landslides": m["n_landslides"]}
        parent = self.state[step.upstream[0]].dir
        options = {k: c[k] for k in (*FinetuneOptions.model_fields, "device") if k in c}
        m = run_finetune(FinetuneConfig(
            target=self.spec_source(step.regions["target"]), source_run=parent,
            shots=c["shots"], models=c["models"], seed=c["seed"], out=d, norm=c["norm"],
            progress=False, deliver=False, command=self.command, **options))
        return {"test_size": m["test_size"], "pool_size": m["pool_size"],
                "source_retrained": m["source_retrained"]}


def apply_overrides(cfg: PipelineConfig, *, repeats: int | None = None) -> PipelineConfig:
    """A copy of ``cfg`` with ``repeats`` set in every study (quick checks)."""
    cfg = cfg.model_copy(deep=True)
    if repeats is not None:
        if repeats < 1:
            from lsm.errors import SpecError

            raise SpecError(f"--repeats {repeats}: must be 1 or more")
        for s in cfg.studies:
            s.repeats = repeats
    return cfg


def run_pipeline(cfg: PipelineConfig, *, out: Path | None = None, force: bool = False,
                 progress: bool = True, overrides: dict[str, Any] | None = None,
                 command: str | None = None) -> PipelineResult:
    """Run (or resume) every step of ``cfg`` and write the results folder.

    Parameters
    ----------
    cfg
        A validated pipeline (:func:`lsm.config.pipeline.load_pipeline`).
    out
        Results folder; default ``cfg.out`` or ``results/<name>``.
    force
        Redo every step even when its ``step.json`` says it is complete.
    progress
        One progress bar over the steps (the steps themselves run silently).
    overrides
        Recorded in ``pipeline.json`` (already applied to ``cfg``).
    command
        Command line recorded in the run folders.
    """
    t0 = time.perf_counter()
    cfg = cfg.model_copy(deep=True)  # build_plan adds the source_scale subsets as regions
    out = Path(out or cfg.results_dir())
    out.mkdir(parents=True, exist_ok=True)
    meta = _pipeline_meta(cfg, overrides or {}, command)
    plan = build_plan(cfg)
    runner = _Runner(plan, out, force=force, command=command)
    meta.update(status="running", started=now_iso())
    write_json(out / "pipeline.json", meta)
    steps = list(plan.steps.values())
    try:
        with progress_bar(f"pipeline {cfg.name}", len(steps), enabled=progress) as bar:
            for i, step in enumerate(steps, start=1):
                bar.describe(f"[{i}/{len(steps)}] {step.label}")
                runner.state[step.name] = runner.run(step)
                bar.advance()
    except BaseException as err:
        meta.update(status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                    error=f"{type(err).__name__}: {err}", finished=now_iso(),
                    steps=_step_log(steps, runner.state))
        write_json(out / "pipeline.json", meta)
        raise
    results = collect_results(plan, runner)
    summary = summarize_results(results)
    _write_table(results, out / "results.csv")
    _write_table(results, out / "results.parquet")
    _write_table(summary, out / "summary.csv")
    figures = make_figures(cfg, summary, out / "figures")
    notes = _notes(runner.state)
    seconds = time.perf_counter() - t0
    res = PipelineResult(out, results, summary, figures, notes, runner.state, cfg, seconds)
    from lsm.io.artifacts import atomic_write_bytes

    atomic_write_bytes(out / "summary.md", summary_markdown(res, meta).encode("utf-8"))
    meta.update(status="complete", finished=now_iso(), seconds=round(seconds, 1),
                steps=_step_log(steps, runner.state), notes=notes,
                rows=int(len(results)),
                figures=[p.relative_to(out).as_posix() for ps in figures.values() for p in ps])
    write_json(out / "pipeline.json", meta)
    return res


def _step_log(steps: list[Step], state: dict[str, StepState]) -> list[dict[str, Any]]:
    log = []
    for s in steps:
        st = state.get(s.name)
        log.append({"name": s.name, "kind": s.kind, "status": st.status if st else "not run",
                    "seconds": round(st.seconds, 2) if st else None,
                    "key": st.key if st else None, "note": st.note if st else None})
    return log


def _git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def _pipeline_meta(cfg: PipelineConfig, overrides: dict[str, Any], command: str | None
                   ) -> dict[str, Any]:
    src = cfg.source_file
    return {
        "name": cfg.name, "command": command,
        "pipeline_file": str(src) if src else None,
        "pipeline_sha256": sha256_file(src) if src and Path(src).exists() else None,
        "overrides": overrides, "config": dump_pipeline(cfg), "git": _git_info(),
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "node": platform.node()},
        "versions": package_versions(),
    }


def _write_table(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


def _notes(state: dict[str, StepState]) -> list[str]:
    notes = [s.note for s in state.values() if s.note]
    seen: dict[str, list[str]] = {}
    for name, s in state.items():
        for w in s.warnings:
            seen.setdefault(w, []).append(name)
    for w, names in seen.items():
        notes.append(f"{w} ({len(names)} step{'s' if len(names) > 1 else ''})")
    return notes


# ---------------------------------------------------------------------------
# results


def collect_results(plan: Plan, runner: _Runner) -> pd.DataFrame:
    """The tidy table: one row per study entry, family, arm and repeat (or CV fold)."""
    rows: list[dict[str, Any]] = []
    n_source: dict[str, int | None] = {}
    for e in plan.entries:
        st = runner.state[e.step]
        if st.status == "skipped":
            continue
        if e.root_fit not in n_source:
            fm = read_json(runner.state[e.root_fit].dir / "metrics.json")
            n_source[e.root_fit] = int(fm.get("n", 0)) or None
        metrics = read_json(st.dir / "metrics.json")
        base = {"study": e.study, "kind": e.kind, "source": None, "target": None, "chain": None,
                "route": None, "norm": None, "fraction": np.nan,
                "n_source": n_source[e.root_fit], "shots": None, **e.context,
                "step": f"steps/{e.step}"}
        if e.context.get("route") == "source_cv":
            for fam, cv in metrics.get("cv", {}).items():
                for fold in cv.get("folds", []):
                    m = {k: v for k, v in fold.items() if k not in ("fold", "n")}
                    rows.append({**base, "family": fam, "arm": "source_cv",
                                 "repeat": int(fold["fold"]), **m})
            continue
        choices = metrics.get("delivered", {}).get("choices", [])
        for fam, arms in metrics["repeats_detail"].items():
            for arm, reps in arms.items():
                for r, m in enumerate(reps):
                    row = {**base, "family": fam, "arm": arm, "repeat": r, **m}
                    if arm == "delivered" and r < len(choices):
                        row["chosen"] = choices[r]["chosen"]
                    rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[*ID_COLUMNS, "repeat", *METRIC_ORDER, "step"])
    metrics_cols = [m for m in METRIC_ORDER if m in df.columns]
    extra = sorted(set(df.columns) - set(ID_COLUMNS) - {"repeat", "step"} - set(metrics_cols))
    df = df[[*ID_COLUMNS, "repeat", *metrics_cols, *extra, "step"]]
    df["shots"] = df["shots"].astype("Int64")
    df["n_source"] = df["n_source"].astype("Int64")
    df["repeat"] = df["repeat"].astype("int64")
    df["fraction"] = df["fraction"].astype("float64")
    return df


def _metric_columns(df: pd.DataFrame) -> list[str]:
    skip = set(ID_COLUMNS) | {"repeat", "step"}
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]


def summarize_results(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (population, as in metrics.json) and count of every metric per group."""
    if results.empty:
        return pd.DataFrame(columns=[*ID_COLUMNS, "n"])
    metrics = _metric_columns(results)
    g = results.groupby(list(ID_COLUMNS), dropna=False, sort=False)
    parts = {"n": g.size()}
    for m in metrics:
        parts[f"{m}_mean"] = g[m].mean()
        parts[f"{m}_std"] = g[m].std(ddof=0)
    out = pd.DataFrame(parts).reset_index()
    return out[[*ID_COLUMNS, *[c for m in metrics for c in (f"{m}_mean", f"{m}_std")], "n"]]


# ---------------------------------------------------------------------------
# tables (markdown and rich)


_ARM_ORDER = ("source_only", "target_only", "stage1", "stage2", "delivered", "source_cv")
_FAM_ORDER = ("lsm", "rf", "lr", "xgb", "mlp")
_METRIC_TITLES = {"auc": "AUC", "log_loss": "log-loss", "brier": "Brier", "accuracy": "accuracy"}


def _cell(mean: Any, std: Any) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"


def _row_order(df: pd.DataFrame) -> pd.DataFrame:
    fam = {f: i for i, f in enumerate(_FAM_ORDER)}
    arm = {a: i for i, a in enumerate(_ARM_ORDER)}
    return df.assign(_f=df["family"].map(lambda f: fam.get(f, 99)),
                     _a=df["arm"].map(lambda a: arm.get(a, 99))).sort_values(["_f", "_a"])


def _pivot(df: pd.DataFrame, col: str, labels: dict[Any, str], metric: str
           ) -> tuple[list[str], list[list[str]]]:
    """Rows family x arm, one column per value of ``col``: ``mean ± std`` cells."""
    header = ["family", "arm", *labels.values()]
    body = []
    if f"{metric}_mean" not in df.columns:
        return header, body
    keys = _row_order(df[["family", "arm"]].drop_duplicates())
    for fam, arm in keys[["family", "arm"]].itertuples(index=False):
        row = [fam, arm]
        for v in labels:
            hit = df[(df["family"] == fam) & (df["arm"] == arm) & (df[col] == v)]
            row.append(_cell(hit[f"{metric}_mean"].iloc[0], hit[f"{metric}_std"].iloc[0])
                       if len(hit) else "")
        body.append(row)
    return header, body


def study_tables(cfg: PipelineConfig, summary: pd.DataFrame
                 ) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Summary tables per study: ``(study id, title, header, rows)``."""
    out = []
    if summary.empty:
        return out
    norms_many = summary["norm"].nunique() > 1
    for study in cfg.studies:
        sdf = summary[(summary["study"] == study.id) & (summary["route"] != "source_cv")]
        cv = summary[(summary["study"] == study.id) & (summary["route"] == "source_cv")]
        for norm in study.norms:
            nd = sdf[sdf["norm"] == norm]
            suffix = f", {norm} norm" if norms_many else ""
            for metric in FIGURE_METRICS:
                mt = _METRIC_TITLES[metric]
                if isinstance(study, ShotsStudy):
                    for tgt in dict.fromkeys(nd["target"]):
                        t = nd[nd["target"] == tgt]
                        ks = sorted(t["shots"].dropna().unique())
                        h, b = _pivot(t, "shots", {k: f"K={k}" for k in ks}, metric)
                        out.append((study.id, f"{mt}: {t['source'].iloc[0]} → {tgt}{suffix}",
                                    h, b))
                elif isinstance(study, SourceScaleStudy):
                    fr = nd.drop_duplicates("fraction").sort_values("fraction")
                    labels = {f: f"{f:.0%} (n={int(n):,})" if pd.notna(n) else f"{f:.0%}"
                              for f, n in zip(fr["fraction"], fr["n_source"])}
                    h, b = _pivot(nd, "fraction", labels, metric)
                    tgt = nd["target"].iloc[0] if len(nd) else study.target
                    out.append((study.id, f"{mt} on {tgt} by source size ({study.source} "
                                f"subsets, K={study.shots}){suffix}", h, b))
                else:
                    final = nd[nd["target"] == _display(cfg, study.chain[-1])]
                    if final.empty:
                        continue
                    chains = {r: c for r, c in zip(final["route"], final["chain"])}
                    labels = {r: f"{r}: {chains[r].replace('>', ' → ')}"
                              for r in ("direct", "chain") if r in chains}
                    h, b = _pivot(final, "route", labels, metric)
                    if {"direct", "chain"} <= set(labels):
                        h = [*h, "chain − direct"]
                        for row in b:
                            vals = {}
                            for r in ("direct", "chain"):
                                hit = final[(final["family"] == row[0]) &
                                            (final["arm"] == row[1]) & (final["route"] == r)]
                                vals[r] = hit[f"{metric}_mean"].iloc[0] if len(hit) else np.nan
                            d = vals["chain"] - vals["direct"]
                            row.append(f"{d:+.3f}" if np.isfinite(d) else "n/a")
                    out.append((study.id, f"{mt} on {final['target'].iloc[0]}: chained vs "
                                f"direct transfer (K={study.shots}){suffix}", h, b))
        if not cv.empty:
            regions = list(dict.fromkeys(cv["target"]))
            h, b = _pivot(cv, "target", {r: r for r in regions}, "auc")
            out.append((study.id, "AUC of spatial cross-validation in the source", h, b))
    return out


#: Paired comparisons reported per shots study: (family a, arm a, family b, arm b).
PAIRED = (("lsm", "delivered", "lsm", "source_only"), ("lsm", "delivered", "lsm", "target_only"))


def paired_tables(cfg: PipelineConfig, results: pd.DataFrame
                  ) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """Paired differences (same shots, same test set) per shots study, target and K.

    Cells: mean difference over the repeats, its 95 % t-interval, and the share of
    repeats where the first arm is better (higher AUC, lower log-loss).
    """
    from lsm.evaluate.metrics import paired_difference

    out: list[tuple[str, str, list[str], list[list[str]]]] = []
    if results.empty or "arm" not in results or not (results["arm"] == "delivered").any():
        return out
    for study in cfg.studies:
        if not isinstance(study, ShotsStudy):
            continue
        sdf = results[results["study"] == study.id]
        for (norm, tgt), t in sdf.groupby(["norm", "target"], sort=False, dropna=False):
            ks = sorted(t["shots"].dropna().unique())
            ll = ("log_loss_prior_corrected" if "log_loss_prior_corrected" in t
                  and t["log_loss_prior_corrected"].notna().any() else "log_loss")
            body = []
            for fa, a, fb, b in PAIRED:
                for metric, better in (("auc", 1.0), (ll, -1.0)):
                    row = [f"{a} − {b} ({fa})", _METRIC_TITLES.get(metric, metric.replace(
                        "log_loss_prior_corrected", "log-loss (prior-corr.)"))]
                    for k in ks:
                        tk = t[t["shots"] == k]
                        xa = tk[(tk["family"] == fa) & (tk["arm"] == a)].sort_values("repeat")
                        xb = tk[(tk["family"] == fb) & (tk["arm"] == b)].sort_values("repeat")
                        if xa.empty or len(xa) != len(xb):
                            row.append("")
                            continue
                        d = paired_difference(list(better * xa[metric]),
                                              list(better * xb[metric]))
                        row.append(f"{better * d['mean_diff']:+.3f} [{_lo_hi(d, better)}], "
                                   f"{d['win_rate']:.0%}")
                    body.append(row)
            src = t["source"].iloc[0]
            out.append((study.id, f"Paired differences: {src} → {tgt}"
                        f"{', ' + str(norm) + ' norm' if len(study.norms) > 1 else ''}",
                        ["comparison", "metric", *[f"K={k}" for k in ks]], body))
    return out


def chosen_tables(cfg: PipelineConfig, results: pd.DataFrame
                  ) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """How often each strategy was delivered, per shots study, target and K."""
    out: list[tuple[str, str, list[str], list[list[str]]]] = []
    if results.empty or "chosen" not in results:
        return out
    for study in cfg.studies:
        if not isinstance(study, ShotsStudy):
            continue
        sdf = results[(results["study"] == study.id) & results["chosen"].notna()]
        for tgt, t in sdf.groupby("target", sort=False):
            ks = sorted(t["shots"].dropna().unique())
            counts = t.groupby(["chosen", "shots"]).size().unstack(fill_value=0)
            body = [[str(name), *[str(int(counts.loc[name].get(k, 0))) for k in ks]]
                    for name in counts.sum(axis=1).sort_values(ascending=False).index]
            out.append((study.id, f"Delivered strategy (repeats): {t['source'].iloc[0]} → {tgt}",
                        ["strategy", *[f"K={k}" for k in ks]], body))
    return out


def _lo_hi(d: dict[str, float], sign: float) -> str:
    lo, hi = sorted((sign * d["ci95_low"], sign * d["ci95_high"]))
    return f"{lo:+.3f}, {hi:+.3f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(res: PipelineResult, meta: dict[str, Any]) -> str:
    """``summary.md``: what ran, one table per study and metric, figures, notes."""
    cfg = res.config
    git = meta.get("git", {})
    lines = [f"# Pipeline `{cfg.name}`", ""]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    commit = git.get("commit")
    code = "not in a git repository"
    if commit:
        code = commit[:12] + (" (with uncommitted changes)" if git.get("dirty") else "")
    lines += [
        f"- pipeline file: `{meta.get('pipeline_file')}`",
        f"- code: {code}",
        f"- finished: {now_iso()}; {meta['machine']['cpu_count']} CPUs, "
        f"{meta['machine']['platform']}",
        f"- steps: {len(res.steps)} ({res.count('ran')} run, {res.count('reused')} reused, "
        f"{res.count('skipped')} skipped) in {res.seconds:.0f} s",
        f"- rows: {len(res.results):,} in `results.csv` / `results.parquet`; "
        "means and standard deviations over repeats in `summary.csv`",
        "",
        "Cells: mean ± standard deviation over the repeats (shot draws); every arm of a "
        "row is scored on the same held-out target test set. Arms: source_only = source "
        "model zero-shot, target_only = trained on the shots alone, stage1 = head re-fit on "
        "the shots, stage2 = fine-tuned. Row `lsm`: `delivered` = the model lsm delivers, "
        "its strategy and families chosen by cross-validation on the shots alone; "
        "`source_only` / `target_only` = the baselines a user would pick without the test "
        "set (the source family that ranks the shots best; the target-only family with the "
        "lowest cross-validated log-loss on the shots).",
        "",
        "Paired tables: mean difference over repeats [95 % t-interval], and the share of "
        "repeats where the first arm is better (higher AUC, lower log-loss).",
        "",
    ]
    if meta.get("overrides"):
        lines += [f"Overrides: {meta['overrides']}", ""]
    tables = (study_tables(cfg, res.summary) + paired_tables(cfg, res.results)
              + chosen_tables(cfg, res.results))
    for study in cfg.studies:
        lines += [f"## Study `{study.id}` ({study.kind})", ""]
        for sid, title, h, b in tables:
            if sid == study.id:
                lines += [f"### {title}", "", _md_table(h, b), ""]
        for p in res.figures.get(str(study.id), []):
            lines += [f"![{p.stem}](figures/{p.name})", ""]
    if res.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in res.notes] + [""]
    return "\n".join(lines)


def print_pipeline_summary(res: PipelineResult, console: Any) -> None:
    """Rich tables of every study, then where the results are."""
    from rich.table import Table

    for _sid, title, header, rows in (study_tables(res.config, res.summary)
                                      + paired_tables(res.config, res.results)):
        t = Table(*header, title=title)
        for r in rows:
            t.add_row(*r)
        console.print(t)
    for n in res.notes:
        console.print(f"note: {n}", soft_wrap=True)
    console.print(f"{len(res.steps)} steps: {res.count('ran')} run, {res.count('reused')} "
                  f"reused, {res.count('skipped')} skipped; {res.seconds:.0f} s")
    console.print(f"results -> {res.out}/ (results.csv, summary.md, figures/)")


# ---------------------------------------------------------------------------
# figures


def make_figures(cfg: PipelineConfig, summary: pd.DataFrame, folder: Path
                 ) -> dict[str, list[Path]]:
    """PNG figures of every study (AUC and log-loss): ``{study id: paths written}``."""
    from lsm.evaluate.figures import METRIC_LABELS, plot_shots_curve

    out: dict[str, list[Path]] = {}
    if summary.empty:
        return out
    norms_many = summary["norm"].nunique() > 1
    for study in cfg.studies:
        paths = out.setdefault(str(study.id), [])
        sdf = summary[(summary["study"] == study.id) & (summary["route"] != "source_cv")]
        for norm in study.norms:
            nd = sdf[sdf["norm"] == norm]
            if nd.empty:
                continue
            tag = f"_{norm}" if norms_many else ""
            for metric in FIGURE_METRICS:
                if f"{metric}_mean" not in nd.columns:
                    continue
                name = METRIC_LABELS.get(metric, metric).split(",")[0]
                d = nd.rename(columns={f"{metric}_mean": "mean", f"{metric}_std": "std"})
                if isinstance(study, ShotsStudy):
                    for tgt in dict.fromkeys(d["target"]):
                        t = d[d["target"] == tgt].copy()
                        t["shots"] = t["shots"].astype("int64")
                        src = t["source"].iloc[0]
                        p = folder / _slug(f"{study.id}_{src}-to-{tgt}{tag}_{metric}.png")
                        paths.append(plot_shots_curve(
                            t, p, metric=metric,
                            title=f"{name} on {tgt} after transfer from {src}\n"
                                  f"line: mean, band: ± std over {_n(study.repeats, 'repeat')}"
                                  f"{'; ' + norm + ' norm' if norms_many else ''}"))
                elif isinstance(study, SourceScaleStudy):
                    tgt = d["target"].iloc[0]
                    p = folder / _slug(f"{study.id}_{study.source}-to-{tgt}{tag}_{metric}.png")
                    paths.append(plot_source_scale(
                        d, p, metric=metric,
                        title=f"{name} on {tgt} by source size ({study.source} subsets, "
                              f"K={study.shots})\nline: mean, band: ± std over "
                              f"{_n(study.repeats, 'repeat')}"))
                else:
                    tgt = _display(cfg, study.chain[-1])
                    final = d[d["target"] == tgt]
                    p = folder / _slug(f"{study.id}_{'-'.join(study.chain)}{tag}_{metric}.png")
                    paths.append(plot_progressive(
                        final, p, metric=metric,
                        title=f"{name} on {tgt}: chained vs direct transfer (K={study.shots})"
                              f"\nbars: mean, whiskers: ± std over {_n(study.repeats, 'repeat')}"))
    return out


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _family_axes(n: int) -> tuple[int, int]:
    ncols = 1 if n == 1 else 2
    return math.ceil(n / ncols), ncols


def _metric_refs(ax: Any, metric: str) -> None:
    if metric == "auc":
        ax.axhline(0.5, ls="--", lw=1, color="0.5", label="chance (AUC 0.5)")
    elif metric.startswith("log_loss"):
        ax.axhline(math.log(2), ls=":", lw=1.2, color="0.4", label="p = 0.5 everywhere (ln 2)")


def plot_source_scale(df: pd.DataFrame, path: Path, *, metric: str = "auc",
                      title: str | None = None) -> Path:
    """Metric against the number of source points, one panel per family, a line per arm.

    ``df`` has columns ``family``, ``arm``, ``fraction``, ``n_source``, ``mean``, ``std``.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    from lsm.evaluate.figures import (
        ARM_COLORS,
        ARM_LABELS,
        ARMS,
        FAMILY_LABELS,
        METRIC_LABELS,
        new_figure,
    )

    families = [f for f in _FAM_ORDER if f in set(df["family"])] + \
        sorted(set(df["family"]) - set(_FAM_ORDER))
    nrows, ncols = _family_axes(len(families))
    label = METRIC_LABELS.get(metric, metric)
    xcol = "n_source" if df["n_source"].notna().all() else "fraction"
    pts = df.drop_duplicates(xcol).sort_values(xcol)
    xs_all = pts[xcol].to_numpy(dtype="float64")
    ticks = [f"{f:.0%}\n{int(n):,}" if xcol == "n_source" else f"{f:.0%}"
             for f, n in zip(pts["fraction"], pts["n_source"])]
    with new_figure(path, figsize=(7.5, max(3.4, 2.7 * nrows + 1.2)), nrows=nrows,
                    ncols=ncols, squeeze=False, sharex=True, sharey=True) as (fig, axes):
        arms = [a for a in ARMS if a in set(df["arm"])]
        for k, ax in enumerate(axes.flat):
            if k >= len(families):
                ax.set_visible(False)
                continue
            sub = df[df["family"] == families[k]]
            for arm in arms:
                s = sub[sub["arm"] == arm].sort_values(xcol)
                if s.empty:
                    continue
                x = s[xcol].to_numpy(dtype="float64")
                m = s["mean"].to_numpy(dtype="float64")
                sd = np.nan_to_num(s["std"].to_numpy(dtype="float64"))
                ax.plot(x, m, marker="o", ms=4, lw=1.8, color=ARM_COLORS[arm],
                        ls="-" if arm in ("stage1", "stage2") else "--",
                        label=ARM_LABELS[arm])
                ax.fill_between(x, m - sd, m + sd, color=ARM_COLORS[arm], alpha=0.14, lw=0)
            _metric_refs(ax, metric)
            ax.set_title(FAMILY_LABELS.get(families[k], families[k]))
            if len(xs_all) > 1 and xs_all.min() > 0:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(xs_all))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xticklabels(ticks)
        for ax in axes[-1]:
            ax.set_xlabel("source subset: share and number of points"
                          if xcol == "n_source" else "share of the source's points")
        for ax in axes[:, 0]:
            ax.set_ylabel(label.split(",")[0])
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(title or f"{label.split(',')[0]} vs source size")
    return Path(path)


def plot_progressive(df: pd.DataFrame, path: Path, *, metric: str = "auc",
                     title: str | None = None) -> Path:
    """Bars per arm, direct vs chained transfer side by side, one panel per family.

    ``df`` has columns ``family``, ``arm``, ``route`` (``direct``/``chain``),
    ``chain``, ``mean``, ``std`` for the final target.
    """
    from lsm.evaluate.figures import ARMS, FAMILY_LABELS, METRIC_LABELS, new_figure

    families = [f for f in _FAM_ORDER if f in set(df["family"])] + \
        sorted(set(df["family"]) - set(_FAM_ORDER))
    nrows, ncols = _family_axes(len(families))
    label = METRIC_LABELS.get(metric, metric)
    arms = [a for a in ARMS if a in set(df["arm"])]
    short = {"source_only": "source\nonly", "target_only": "target\nonly",
             "stage1": "stage 1\n(head)", "stage2": "stage 2\n(fine-tuned)"}
    routes = [r for r in ("direct", "chain") if r in set(df["route"])]
    colours = {"direct": "#e69f00", "chain": "#0a4f8c"}
    chains = {r: c for r, c in zip(df["route"], df["chain"])}
    finite = df["mean"].to_numpy(dtype="float64")
    finite = finite[np.isfinite(finite)]
    hi = float((df["mean"] + df["std"].fillna(0)).max()) if finite.size else 1.0
    lo = float((df["mean"] - df["std"].fillna(0)).min()) if finite.size else 0.0
    with new_figure(path, figsize=(7.5, max(3.6, 2.8 * nrows + 1.3)), nrows=nrows,
                    ncols=ncols, squeeze=False, sharey=True) as (fig, axes):
        width = 0.8 / max(len(routes), 1)
        x = np.arange(len(arms))
        for k, ax in enumerate(axes.flat):
            if k >= len(families):
                ax.set_visible(False)
                continue
            sub = df[df["family"] == families[k]]
            for j, r in enumerate(routes):
                s = sub[sub["route"] == r].set_index("arm").reindex(arms)
                ax.bar(x - 0.4 + width * (j + 0.5), s["mean"].fillna(0).to_numpy(), width * 0.92,
                       yerr=s["std"].fillna(0).to_numpy(), capsize=2.5, color=colours[r],
                       error_kw={"lw": 1, "ecolor": "0.2"},
                       label=f"{r}: {chains[r].replace('>', ' → ')}")
            _metric_refs(ax, metric)
            ax.set_xticks(x, [short.get(a, a) for a in arms])
            ax.grid(axis="x", visible=False)
            ax.set_title(FAMILY_LABELS.get(families[k], families[k]))
        for ax in axes[:, 0]:
            ax.set_ylabel(label.split(",")[0])
        if metric in ("auc", "accuracy"):
            axes[0][0].set_ylim(min(0.5, max(0.0, math.floor((lo - 0.05) * 10) / 10)), 1.0)
        else:
            axes[0][0].set_ylim(0, max(hi, math.log(2)) * 1.15)
        handles, labels = axes[0][0].get_legend_handles_labels()
        # bars first, reference lines last
        pairs = sorted(zip(handles, labels), key=lambda hl: hasattr(hl[0], "get_xydata"))
        fig.legend([h for h, _ in pairs], [lab for _, lab in pairs], loc="outside lower center",
                   ncol=2, frameon=False)
        fig.suptitle(title or f"{label.split(',')[0]}: chained vs direct transfer")
    return Path(path)
