"""``lsm run``: execute a pipeline of fits and fine-tunes, resume it, tabulate the results.

A pipeline (:mod:`lsm.config.pipeline`) becomes a list of steps, each one
call of :func:`~lsm.workflows.fit.run_fit`, :func:`~lsm.workflows.finetune.run_finetune`
or a derived-region cut (a spatial-block subset of a region written as a
table region).  Steps shared by several studies run once.

The jobs are split by module: :mod:`.plan` (steps of each study, asked of its
kind in :mod:`lsm.workflows.studies`), :mod:`.derive` (derived regions), this
module (running and resuming the steps), :mod:`.results` (the tidy table and
its summary) and :mod:`.report` (tables, ``summary.md``, figures).

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

Layout of a results folder (default ``runs/pipelines/<name>``)::

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
import os
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lsm.config.pipeline import PipelineConfig, dump_pipeline
from lsm.config.run import FinetuneConfig, FinetuneOptions, FitConfig
from lsm.config.spec import dump_region, load_region
from lsm.errors import LsmError, SamplingError
from lsm.io.artifacts import atomic_path, read_json, sha256_file, write_json
from lsm.workflows.finetune import run_finetune
from lsm.workflows.fit import run_fit
from lsm.workflows.pipeline.derive import block_subset, write_derived_region
from lsm.workflows.pipeline.plan import Entry, Plan, Step, build_plan
from lsm.workflows.pipeline.report import (
    make_figures,
    print_pipeline_summary,
    result_tables,
    study_tables,
    summary_markdown,
)
from lsm.workflows.pipeline.results import (
    ID_COLUMNS,
    METRIC_ORDER,
    collect_results,
    summarize_results,
)
from lsm.workflows.progress import progress_bar
from lsm.workflows.runs import now_iso, package_versions

__all__ = ["ID_COLUMNS", "METRIC_ORDER", "Entry", "PipelineResult", "Plan", "Step",
           "StepState", "apply_overrides", "block_subset", "build_plan", "collect_results",
           "make_figures", "print_pipeline_summary", "result_tables", "run_pipeline",
           "study_tables", "summarize_results", "summary_markdown", "write_derived_region"]

STEP_JSON = "step.json"
STEP_FORMAT = 1
#: Bumped when what a step kind computes changes, so older outputs are redone.
STEP_VERSIONS = {"derive": 2, "fit": 1, "finetune": 2}


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
        if ref in self.plan.regions:
            step = next(s for s in self.plan.steps.values()
                        if s.kind == "derive" and s.config["name"] == ref)
            return str(self.step_dir(step.name) / "region.yaml")
        return ref

    def region_hash(self, ref: str) -> str:
        """sha256 of a region's spec and data files (derived: its step's output hash)."""
        if ref in self.plan.regions:
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
        from lsm.workflows.owned import remove_owned_tree

        remove_owned_tree(d, top=self.out)  # never a file the user put there
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
            remove_owned_tree(d, top=self.out)
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
        Results folder; default ``cfg.out`` or ``runs/pipelines/<name>``.
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
    from lsm.workflows.runs import claim_run_dir

    # one lsm run per results folder: a second one on it stops at once with one line
    out = claim_run_dir(Path(out or cfg.results_dir()), kind="pipeline")
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
    results = collect_results(plan, runner.state)
    summary = summarize_results(results)
    from lsm.workflows.owned import Staged

    # the results, summaries, figures and the final pipeline.json: one set, committed
    # together (a kill leaves the previous set or a commit the next claim completes)
    stage = Staged(out)
    try:
        _write_table(results, stage.path("results.csv"))
        _write_table(results, stage.path("results.parquet"))
        _write_table(summary, stage.path("summary.csv"))
        figures = make_figures(cfg, summary, stage.path("figures"))
        figures = {k: [out / Path(p).relative_to(stage.dir) for p in ps]
                   for k, ps in figures.items()}
        notes = _notes(runner.state)
        seconds = time.perf_counter() - t0
        res = PipelineResult(out, results, summary, figures, notes, runner.state, cfg,
                             seconds)
        from lsm.io.artifacts import atomic_write_bytes

        atomic_write_bytes(stage.path("summary.md"),
                           summary_markdown(res, meta).encode("utf-8"))
        meta.update(status="complete", finished=now_iso(), seconds=round(seconds, 1),
                    steps=_step_log(steps, runner.state), notes=notes,
                    rows=int(len(results)),
                    figures=[p.relative_to(out).as_posix() for ps in figures.values()
                             for p in ps])
        write_json(stage.path("pipeline.json"), meta)
        finals = {"results.csv", "results.parquet", "summary.csv", "summary.md",
                  "pipeline.json"}
        stage.commit(lambda f: f in finals or f.startswith("figures/"),
                     last=["pipeline.json"])
    finally:
        stage.discard()
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
