"""``lsm tune``: search one family's hyper-parameters by spatial cross-validation.

The objective is the mean held-out log-loss over the source region's own
spatial folds (the folds ``lsm fit`` cross-validates on), with the design
matrix ``lsm fit`` trains on.  Optuna's TPE sampler proposes parameters; after
each fold a trial reports its running mean log-loss and a median pruner stops
trials that are clearly worse than earlier ones at the same fold.  The first
trial of a new study is the family's defaults, so the study always holds the
baseline that tuning has to beat.

The study lives in ``<out>/study.db`` (SQLite): running ``lsm tune`` again on
the same folder adds trials to it, after an interruption too.  The best
parameters are written to ``<out>/best_params.yaml`` (one block per family
tuned in that folder), which ``lsm fit --params <out>`` reads.

Example
-------
>>> run_tune(TuneConfig(source="hongkong", model="xgb", trials=20))   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lsm.errors import SpecError

STUDY_DB = "study.db"
#: Summary of one family's study (trial counts, default vs best).
SUMMARY = "tune_{model}.json"
#: Seconds between a running trial's heartbeats in the study database.
HEARTBEAT_S = 60
#: SQLite ``application_id`` of a study database lsm created ("LSM1"): a database
#: without it is not lsm's, and lsm neither adds tables to it nor changes it.
APPLICATION_ID = 0x4C534D31
#: Tables optuna keeps in a study database (a study lsm made before it was stamped has
#: them, and lsm's identity among its study attributes).
OPTUNA_TABLES = {"studies", "trials", "alembic_version", "study_user_attributes"}
#: Seconds to wait for another process's lock on the study database.
LOCK_TIMEOUT_S = 10.0


class TuneConfig(BaseModel):
    """Options of ``lsm tune``."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Built-in region name or path to a region spec (one).")
    model: Literal["rf", "lr", "xgb", "mlp"] = Field(description="Family to tune.")
    trials: int = Field(20, ge=1, le=100_000, description="Trials to add to the study.")
    timeout: float | None = Field(None, gt=0, description="Stop starting trials after this "
                                  "many seconds.")
    out: Path | None = Field(None, description="Run folder; default runs/tune-<region>-<model>.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the models (same in every "
                      "trial) and sampler.")
    factors: list[str] | None = Field(None, description="Factor subset; default all that "
                                      "transfer.")
    norm: Literal["target", "source", "quantile", "none"] = "target"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    command: str | None = Field(None, description="Command line that reproduces the run.")


# -- search spaces ---------------------------------------------------------------
# Each family: a function trial -> constructor parameters, and the point of that space
# that gives the family's defaults (enqueued as a new study's first trial).


def _space_xgb(trial: Any) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 1000, log=True),
        "max_depth": trial.suggest_int("max_depth", 2, 10),
        "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.3, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.1, 50.0, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 100.0, log=True),
    }


def _space_rf(trial: Any) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int("n_estimators", 100, 600, step=50),
        "max_depth": trial.suggest_categorical("max_depth", [None, 4, 8, 12, 16, 24]),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 50, log=True),
        "max_features": trial.suggest_categorical("max_features",
                                                  ["sqrt", "log2", 0.33, 0.5, 0.8, 1.0]),
    }


def _space_lr(trial: Any) -> dict[str, Any]:
    return {
        "C": trial.suggest_float("C", 1e-4, 1e3, log=True),
        "class_weight": trial.suggest_categorical("class_weight", [None, "balanced"]),
    }


def _space_mlp(trial: Any) -> dict[str, Any]:
    n = trial.suggest_int("n_layers", 1, 3)
    return {
        "hidden_layer_sizes": tuple(trial.suggest_int(f"units_l{i}", 8, 256, log=True)
                                    for i in range(n)),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256, 512]),
    }


SPACES = {"xgb": _space_xgb, "rf": _space_rf, "lr": _space_lr, "mlp": _space_mlp}
#: Search-space points equal to each family's constructor defaults.
DEFAULT_POINTS: dict[str, dict[str, Any]] = {
    "xgb": {"n_estimators": 300, "max_depth": 4, "learning_rate": 0.05, "subsample": 0.8,
            "colsample_bytree": 0.8, "min_child_weight": 1.0, "reg_lambda": 1.0},
    "rf": {"n_estimators": 100, "max_depth": None, "min_samples_leaf": 2,
           "max_features": "sqrt"},
    "lr": {"C": 1.0, "class_weight": None},
    "mlp": {"n_layers": 2, "units_l0": 64, "units_l1": 32, "dropout": 0.1,
            "learning_rate": 1e-3, "weight_decay": 1e-4, "batch_size": 256},
}


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """JSON-able copy (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


# -- the study -----------------------------------------------------------------------


def cv_objective(family: str, X: Any, y: np.ndarray, folds: np.ndarray, *, seed: int,
                 device: str = "auto") -> Any:
    """Optuna objective: mean held-out log-loss over the spatial folds.

    After each fold the running mean is reported (step = fold index), so a
    pruner can stop a trial whose first folds already score worse than the
    median of earlier trials at the same fold.  Per-fold AUC and log-loss, and
    the constructor parameters, are kept as trial user attributes.
    """
    import optuna

    from lsm.evaluate.metrics import binary_metrics
    from lsm.workflows.fit import make_model

    def objective(trial: Any) -> float:
        trial.set_user_attr("worker", _worker())
        params = SPACES[family](trial)
        trial.set_user_attr("params", _plain(params))
        losses: list[float] = []
        aucs: list[float] = []
        for step, k in enumerate(np.unique(folds)):
            test = folds == k
            if len(np.unique(y[~test])) < 2:
                continue
            model = make_model(family, seed=seed, device=device, params=params)
            model.fit(X[~test], y[~test])
            m = binary_metrics(y[test], model.predict_proba(X[test])[:, 1])
            losses.append(m["log_loss"])
            aucs.append(m["auc"])
            trial.set_user_attr("fold_log_loss", losses)
            trial.set_user_attr("fold_auc", aucs)
            trial.report(float(np.mean(losses)), step)
            # the defaults trial is the baseline of the summary: never pruned
            if not trial.user_attrs.get("default") and trial.should_prune():
                raise optuna.TrialPruned()
        fin = [a for a in aucs if math.isfinite(a)]
        trial.set_user_attr("auc", float(np.mean(fin)) if fin else float("nan"))
        return float(np.mean(losses))

    return objective


def _check_same_study(study: Any, identity: dict[str, Any], db: Path) -> None:
    """Refuse to add trials scored on other data to an existing study."""
    have = study.user_attrs.get("identity")
    if have is None:
        study.set_user_attr("identity", identity)
        return
    diff = [k for k in identity if have.get(k) != identity[k]]
    if diff:
        k = diff[0]
        raise SpecError(f"{db}: the study was run with {k}={have.get(k)!r}, not "
                        f"{identity[k]!r}; use another --out (or the same options) to resume")


def check_study_file(db: Path) -> None:
    """Refuse a study database that is not lsm's, before anything writes to it.

    A missing or empty file becomes a new database stamped with
    :data:`APPLICATION_ID`.  An existing one is opened read-only: it must be an
    SQLite database with lsm's stamp, or (studies lsm made before the stamp) optuna's
    tables holding a study with lsm's identity, which is then stamped.  Anything else
    (another application's database, a corrupt or locked file, a folder) is refused
    with one line and left as it was.

    Raises
    ------
    SpecError
        ``db`` is not lsm's study database, or cannot be read.
    """
    import sqlite3

    hint = "use another --out (lsm tune keeps its study in its own study.db)"
    if db.is_symlink():  # lsm writes its study into a plain file of --out, nowhere else
        raise SpecError(f"{db}: a link, not lsm's study database; {hint}")
    if db.is_dir() or (db.exists() and not db.is_file()):
        raise SpecError(f"{db}: not a file; {hint}")
    if not db.exists() or db.stat().st_size == 0:
        with contextlib.closing(sqlite3.connect(db, timeout=LOCK_TIMEOUT_S)) as con:
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.commit()
        return
    with db.open("rb") as fh:
        head = fh.read(16)
    if head != b"SQLite format 3\x00":
        raise SpecError(f"{db}: not an SQLite database (corrupt, or another application's "
                        f"file); lsm leaves it as it is: {hint}")
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                                                timeout=LOCK_TIMEOUT_S)) as con:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            ours = app == APPLICATION_ID
            if not ours and app == 0 and OPTUNA_TABLES <= tables:
                ours = con.execute("SELECT count(*) FROM study_user_attributes WHERE "
                                   "key = 'identity'").fetchone()[0] > 0
    except sqlite3.Error as err:
        what = "locked by another process" if "locked" in str(err) else \
            f"unreadable ({' '.join(str(err).split())})"
        raise SpecError(f"{db}: the study database is {what}; lsm leaves it as it is") \
            from None
    if not ours:
        owner = f"application id {app:#x}" if app else \
            (f"tables {', '.join(sorted(tables)[:4])}" if tables else "no tables")
        raise SpecError(f"{db}: an SQLite database lsm did not create ({owner}); lsm adds "
                        f"nothing to it: {hint}")
    if app != APPLICATION_ID:  # a study of an lsm from before the stamp
        with contextlib.closing(sqlite3.connect(db, timeout=LOCK_TIMEOUT_S)) as con:
            con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            con.commit()


def _worker() -> dict[str, Any]:
    """Who runs a trial: host and process id (a RUNNING trial whose process is gone is
    stale)."""
    import os
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(worker: Any) -> bool:
    """True if ``worker`` (see :func:`_worker`) may still be running: a process on
    another host, or a live one on this host."""
    import os
    import socket

    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return isinstance(worker, dict)  # no record: killed before it started its work
    try:
        os.kill(int(worker["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError, KeyError):
        return True
    return True


def recover_study(study: Any, family: str) -> dict[str, int]:
    """Mark the study's stale RUNNING trials FAIL; enqueue the defaults trial if the
    study has no complete (or waiting) one.  Returns what was done."""
    import optuna

    states = optuna.trial.TrialState
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        if not _alive(t.user_attrs.get("worker")):
            study._storage.set_trial_state_values(t._trial_id, state=states.FAIL)
            failed += 1
    have_default = any(t.user_attrs.get("default") for t in study.get_trials(
        deepcopy=False, states=(states.COMPLETE, states.WAITING, states.RUNNING)))
    if not have_default:
        study.enqueue_trial(DEFAULT_POINTS[family], user_attrs={"default": True})
    return {"stale_failed": failed, "default_enqueued": int(not have_default)}


def run_tune(cfg: TuneConfig) -> dict[str, Any]:
    """Add ``cfg.trials`` trials to the study in ``cfg.out``; write the best parameters.

    Returns the summary also written to ``<out>/tune_<model>.json``: trial counts, the
    default trial's and the best trial's cross-validated log-loss and AUC, and
    the best parameters.
    """
    import optuna

    from lsm.config.spec import load_region
    from lsm.stack.features import FeatureSchema
    from lsm.workflows.fit import train_matrix
    from lsm.workflows.progress import progress_bar
    from lsm.workflows.region import load_region_data
    from lsm.workflows.sources import source_names

    names = source_names(cfg.source)
    if len(names) > 1:
        raise SpecError(f"--source {cfg.source}: lsm tune takes one region")
    spec = load_region(names[0])
    out = Path(cfg.out or Path("runs") / f"tune-{spec.name}-{cfg.model}")
    db = out / STUDY_DB
    if db.exists() or db.is_symlink():
        check_study_file(db)  # before the region is loaded: a refusal costs nothing
    factors = cfg.factors or spec.transfer_factor_names
    data = load_region_data(spec, progress=cfg.progress, factors=factors)
    schema = FeatureSchema.from_table(data.table, data.kinds)
    X = train_matrix(data, schema, cfg.norm)
    y = data.table["label"].to_numpy()
    folds = data.table["fold"].to_numpy()
    from lsm.workflows.owned import record
    from lsm.workflows.runs import claim_run_dir

    out = claim_run_dir(out, kind="tune")  # one process per folder; never a user's folder
    if not (db.exists() or db.is_symlink()):
        record(out, [STUDY_DB])  # sqlite writes it directly: lsm's before it exists
    check_study_file(db)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A trial whose process died without a word (SIGKILL, power cut) stays RUNNING in the
    # database; with a heartbeat the next 'lsm tune' on the folder marks it FAIL.
    with warnings.catch_warnings():  # heartbeats are 'experimental' since optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{db.resolve()}", heartbeat_interval=HEARTBEAT_S,
                grace_period=3 * HEARTBEAT_S,
                engine_kwargs={"connect_args": {"timeout": LOCK_TIMEOUT_S}})
            study = optuna.create_study(
                storage=storage, study_name=f"{spec.name}-{cfg.model}",
                direction="minimize", load_if_exists=True,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
        except Exception as err:  # sqlalchemy's errors: locked, corrupt, not optuna's
            storage_err = _storage_error(db, err)
            if storage_err is None:
                raise
            raise storage_err from None
    _check_same_study(study, {"region": spec.name, "model": cfg.model, "norm": cfg.norm,
                              "factors": list(data.kinds), "seed": cfg.seed,
                              "n_rows": int(len(y)), "split": data.split,
                              "n_folds": int(len(np.unique(folds)))}, db)
    n_before = len(study.trials)
    # a resumed study gets a fresh sampler seed, else it would replay its first proposals
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + n_before)
    # trials of a killed 'lsm tune' stay RUNNING: fail them; and a study whose defaults
    # trial never completed gets it again (the summary always has its defaults row)
    recover_study(study, cfg.model)

    objective = cv_objective(cfg.model, X, y, folds, seed=cfg.seed, device=cfg.device)
    with progress_bar(f"tuning {cfg.model}", cfg.trials, enabled=cfg.progress) as bar:
        def on_trial(study: Any, trial: Any) -> None:
            bar.advance()
            try:
                best = f"best log-loss {study.best_value:.4f} (trial {study.best_trial.number})"
            except ValueError:  # no complete trial yet
                best = "no complete trial yet"
            bar.describe(f"tuning {cfg.model}: trial {trial.number} "
                         f"{trial.state.name.lower()}, {best}")
            # a new best is written at once: a process killed outright loses nothing
            if trial.state == optuna.trial.TrialState.COMPLETE and \
                    study.best_trial.number == trial.number:
                write_results(study, out, cfg, n_before=n_before)

        try:
            study.optimize(objective, n_trials=cfg.trials, timeout=cfg.timeout,
                           callbacks=[on_trial], gc_after_trial=True)
        except Exception as err:
            storage_err = _storage_error(db, err)
            if storage_err is not None:  # the database cannot be read: nothing to summarise
                raise storage_err from None
            write_results(study, out, cfg, n_before=n_before)
            raise
        except KeyboardInterrupt:  # what completed is kept and summarised
            write_results(study, out, cfg, n_before=n_before)
            raise
        summary = write_results(study, out, cfg, n_before=n_before)
    return summary


def _storage_error(db: Path, err: Exception) -> SpecError | None:
    """One line for a database error of the study (locked, corrupt, ...), or None when
    ``err`` is no database error."""
    names = {c.__name__ for c in type(err).__mro__}
    if not names & {"OperationalError", "DatabaseError", "SQLAlchemyError"}:
        return None
    text = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
    what = "locked by another process" if "locked" in text else f"unusable ({text})"
    return SpecError(f"{db}: the study database is {what}; use another --out")


def write_results(study: Any, out: Path, cfg: TuneConfig, *, n_before: int) -> dict[str, Any]:
    """Write ``best_params.yaml`` (merged with other families tuned in ``out``) and
    ``tune.json``; return the summary."""
    import optuna

    from lsm.config.params import BEST_PARAMS, dump_params, load_params, validate_params
    from lsm.io.artifacts import atomic_write_bytes, write_json

    states = optuna.trial.TrialState
    trials = study.trials
    done = [t for t in trials if t.state == states.COMPLETE]
    summary: dict[str, Any] = {
        "region": study.user_attrs.get("identity", {}).get("region"), "model": cfg.model,
        "study": study.study_name, "storage": str(out / STUDY_DB),
        "objective": "mean spatial-CV log-loss", "command": cfg.command,
        "n_trials": len(trials), "n_new": len(trials) - n_before,
        "n_complete": len(done),
        "n_pruned": sum(t.state == states.PRUNED for t in trials),
        "n_failed": sum(t.state == states.FAIL for t in trials),
        "default": None, "best": None,
        "trials": [{"number": t.number, "state": t.state.name, "log_loss": t.value,
                    "auc": t.user_attrs.get("auc"), "params": t.user_attrs.get("params")}
                   for t in trials],
    }
    default = next((t for t in done if t.user_attrs.get("default")), None)
    if default is not None:
        summary["default"] = {"number": default.number, "log_loss": default.value,
                              "auc": default.user_attrs.get("auc"),
                              "params": default.user_attrs.get("params")}
    if done:
        best = min(done, key=lambda t: t.value)
        summary["best"] = {"number": best.number, "log_loss": best.value,
                           "auc": best.user_attrs.get("auc"),
                           "params": best.user_attrs.get("params")}
        path = out / BEST_PARAMS
        merged = load_params(path) if path.exists() else {}
        merged[cfg.model] = validate_params({cfg.model: best.user_attrs["params"]},
                                            source=str(path))[cfg.model]
        atomic_write_bytes(path, dump_params(merged).encode("utf-8"))
        summary["best_params"] = str(path)
    write_json(out / SUMMARY.format(model=cfg.model), summary)
    return summary
