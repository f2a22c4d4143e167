"""Bounded work: the Optuna study database is lsm's own, killed trials do not stay
RUNNING, ``--uncertainty`` is capped and announced, a Dask scheduler that does not
answer is one line after a timeout, and skill from a handful of landslides carries a
caveat."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from lsm.cli import main
from lsm.errors import SpecError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- the study database ------------------------------------------------------------


def _foreign_db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO photos (name) VALUES ('survey.jpg')")
    return path


def test_another_applications_database_is_refused_and_untouched(demo_dir: Path,
                                                                tmp_path: Path,
                                                                capsys: Any) -> None:
    db = _foreign_db(tmp_path / "t" / "study.db")
    before = _sha(db)
    rc = main(["tune", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
               "--trials", "1", "--out", str(tmp_path / "t"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "did not create" in err and "study.db" in err
    assert _sha(db) == before
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert tables == {"photos"}  # optuna added nothing


@pytest.mark.parametrize("content", [b"not a database at all\n" * 40,
                                     b"SQLite format 3\x00" + b"\xff" * 2000])
def test_corrupt_study_file_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    from lsm.workflows.tune import check_study_file

    db = tmp_path / "study.db"
    db.write_bytes(content)
    with pytest.raises(SpecError, match="study.db") as info:
        check_study_file(db)
    assert "\n" not in str(info.value)
    assert db.read_bytes() == content


def test_study_link_or_folder_is_refused(tmp_path: Path) -> None:
    from lsm.workflows.tune import check_study_file

    elsewhere = tmp_path / "elsewhere.db"
    link = tmp_path / "a" / "study.db"
    link.parent.mkdir()
    link.symlink_to(elsewhere)  # dangling: sqlite would create the file it points to
    with pytest.raises(SpecError, match="a link"):
        check_study_file(link)
    assert not elsewhere.exists()
    (tmp_path / "b" / "study.db").mkdir(parents=True)
    with pytest.raises(SpecError, match="not a file"):
        check_study_file(tmp_path / "b" / "study.db")


def test_plain_optuna_study_is_not_lsms(tmp_path: Path) -> None:
    import optuna

    from lsm.workflows.tune import check_study_file

    db = tmp_path / "study.db"
    optuna.create_study(storage=f"sqlite:///{db}", study_name="someone-else")
    before = _sha(db)
    with pytest.raises(SpecError, match="did not create"):
        check_study_file(db)
    assert _sha(db) == before


def test_locked_study_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lsm.workflows import tune

    db = tmp_path / "study.db"
    tune.check_study_file(db)  # a new, stamped database
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == tune.APPLICATION_ID
        con.execute("CREATE TABLE t (x)")
    monkeypatch.setattr(tune, "LOCK_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SpecError, match="locked by another process"):
            tune.check_study_file(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    tune.check_study_file(db)  # free again: accepted


def test_stale_running_trial_fails_and_defaults_are_enqueued_again() -> None:
    import optuna

    from lsm.workflows.tune import DEFAULT_POINTS, _worker, recover_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.enqueue_trial(DEFAULT_POINTS["lr"], user_attrs={"default": True})
    killed = study.ask()  # the defaults trial, RUNNING when its process was killed
    killed.set_user_attr("worker", {**_worker(), "pid": _dead_pid()})
    live = study.ask()  # a trial of this (live) process
    live.set_user_attr("worker", _worker())
    done = recover_study(study, "lr")
    assert done == {"stale_failed": 1, "default_enqueued": 1}
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed.number] == "FAIL" and states[live.number] == "RUNNING"
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["default"] is True
    assert recover_study(study, "lr") == {"stale_failed": 0, "default_enqueued": 0}


def test_resume_after_a_killed_defaults_trial_has_a_defaults_row(demo_dir: Path,
                                                                 tmp_path: Path) -> None:
    import optuna

    from lsm.workflows.owned import record, set_kind
    from lsm.workflows.tune import DEFAULT_POINTS, check_study_file

    out = tmp_path / "t"
    out.mkdir()
    db = out / "study.db"
    set_kind(out, "tune")  # what lsm tune records before sqlite creates its file
    record(out, ["study.db"])
    check_study_file(db)
    # what a SIGKILL during the first trial leaves: the defaults trial RUNNING
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="demo-source-lr")
    study.enqueue_trial(DEFAULT_POINTS["lr"], user_attrs={"default": True})
    t = study.ask()
    t.set_user_attr("worker", {"host": socket.gethostname(), "pid": _dead_pid()})
    assert main(["tune", "--source", str(demo_dir / "demo-source.yaml"), "--model", "lr",
                 "--trials", "1", "--out", str(out), "-q"]) == 0
    s = json.loads((out / "tune_lr.json").read_text())
    assert [r["state"] for r in s["trials"]] == ["FAIL", "COMPLETE"]
    assert s["default"] is not None and s["default"]["number"] == 1
    assert s["default"]["params"]["C"] == 1.0


# -- a port that is not a Dask scheduler ---------------------------------------------


class _SilentServer:
    """A TCP server on 127.0.0.1 that accepts and then says nothing (or garbage).

    It stops itself after ``life`` seconds at the latest.
    """

    def __init__(self, reply: bytes = b"", life: float = 30.0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.life = life
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        import time

        end = time.monotonic() + self.life
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            if self.reply:
                try:
                    c.sendall(self.reply)
                except OSError:
                    pass
        for c in self.conns:
            c.close()
        self.sock.close()

    def __enter__(self) -> _SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(5)


# -- --uncertainty ---------------------------------------------------------------------


def _table_region(folder: Path, n: int = 240, seed: int = 5) -> Path:
    import numpy as np
    import pandas as pd
    import yaml

    rng = np.random.default_rng(seed)
    slope = rng.uniform(0, 45, n)
    rain = rng.normal(1500, 300, n)
    z = 0.12 * (slope - 22) + 0.004 * (rain - 1500)
    label = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    pd.DataFrame({"slp": slope, "rain": rain, "landslide": label}).to_csv(
        folder / "units.csv", index=False)
    spec = {"name": "units", "samples": {"path": {"path": "units.csv"}, "label": "landslide"},
            "factors": {"slope": {"column": "slp"}, "rainfall": {"column": "rain"}},
            "folds": {"n_folds": 3}}
    path = folder / "units.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def unit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("units")
    out = d / "run"
    assert main(["fit", "--source", str(_table_region(d)), "--model", "lr", "--out", str(out),
                 "--no-predict", "--no-explain", "-q"]) == 0
    return out


def test_uncertainty_is_capped_in_cli_and_workflow(unit_run: Path, tmp_path: Path,
                                                   capsys: Any) -> None:
    from lsm.config.run import MAX_REPLICATES
    from lsm.workflows.runs import load_run
    from lsm.workflows.uncertainty import resolve_replicates

    rc = main(["predict", "--run", str(unit_run), "--uncertainty", "10000", "--out",
               str(tmp_path / "m"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--uncertainty" in err and "200" in err
    assert not (tmp_path / "m").exists()
    assert MAX_REPLICATES == 200  # the CLI's max= above
    run = load_run(unit_run)
    for bad in (2.5, MAX_REPLICATES + 1, 1, -3):
        with pytest.raises(SpecError, match="uncertainty"):
            resolve_replicates(run, "lr", bad)
    assert resolve_replicates(run, "lr", 12.0) == 12


def test_many_refits_are_announced_even_when_quiet(unit_run: Path, tmp_path: Path,
                                                   capsys: Any) -> None:
    import pandas as pd

    assert main(["predict", "--run", str(unit_run), "--uncertainty", "12", "--out",
                 str(tmp_path / "m"), "-q"]) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "bootstrap refits" in line]
    assert len(notes) == 1, err
    assert "12 bootstrap refits of the lr model on 240 rows" in notes[0]
    assert "in all" in notes[0]
    (table,) = (tmp_path / "m").glob("*_units.parquet")
    assert pd.read_parquet(table)["uncertainty"].gt(0).all()


@pytest.mark.parametrize(("reply", "why"), [
    (b"", "no answer within 1 s"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n" * 8, "not a Dask scheduler"),
])
def test_port_that_is_not_a_scheduler_is_one_line(reply: bytes, why: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("distributed")
    from lsm.errors import SchedulerError
    from lsm.workflows import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1)
    with _SilentServer(reply) as srv:
        addr = f"tcp://127.0.0.1:{srv.port}"
        # before, this waited until the server went away (it hung past 300 s in the
        # battery); the server closes itself after 30 s, so an old hang fails the match
        with pytest.raises(SchedulerError, match=why), cluster.dask_scheduler(addr):
            pass
        rc = main(["predict", "--run", str(tmp_path), "--scheduler", addr, "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and addr in err and why in err, err


def test_scheduler_lost_during_the_block_is_one_line() -> None:
    distributed = pytest.importorskip("distributed")
    import dask
    import dask.array as da

    from lsm.errors import SchedulerError
    from lsm.workflows.cluster import dask_scheduler

    cluster = distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                       dashboard_address=None)
    addr = cluster.scheduler_address
    with pytest.raises(SchedulerError, match="was lost during the command") as info, \
            dask_scheduler(addr, timeout=2):
        assert da.ones(10, chunks=5).sum().compute() == 10
        cluster.close()
        da.ones(10, chunks=5).sum().compute()
    assert "\n" not in str(info.value)
    assert dask.config.get("scheduler", None) is None  # the local scheduler is back


def test_scheduler_that_stops_answering_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    import time

    from lsm.errors import SchedulerError
    from lsm.workflows import cluster

    monkeypatch.setattr(cluster, "WATCH_INTERVAL", 0.1)
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=None) as lc:
        t0 = time.monotonic()
        with pytest.raises(SchedulerError, match="stopped answering: no answer"), \
                cluster.dask_scheduler(lc.scheduler_address, timeout=2):
            # from now on the scheduler 'does not answer' its checks
            monkeypatch.setattr(cluster, "probe_scheduler", lambda a, t: "no answer within 1 s")
            while time.monotonic() - t0 < 20:  # a computation that waits on it (bounded)
                time.sleep(0.05)


# -- skill from a handful of landslides ------------------------------------------------


def _few_landslides_region(folder: Path, n: int, n_landslides: int, seed: int = 9) -> Path:
    import numpy as np
    import pandas as pd
    import yaml

    rng = np.random.default_rng(seed)
    label = np.zeros(n, dtype=int)
    label[rng.choice(n, n_landslides, replace=False)] = 1
    slope = rng.uniform(0, 45, n) + 8 * label
    rain = rng.normal(1500, 300, n)
    pd.DataFrame({"slp": slope, "rain": rain, "landslide": label}).to_csv(
        folder / "few.csv", index=False)
    spec = {"name": "few", "samples": {"path": {"path": "few.csv"}, "label": "landslide"},
            "factors": {"slope": {"column": "slp"}, "rainfall": {"column": "rain"}},
            "folds": {"n_folds": 3}}
    path = folder / "few.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _caveat_notes(caught: list[Any]) -> list[str]:
    return [str(w.message) for w in caught if "anecdotal" in str(w.message)]


def test_enough_landslides_have_no_caveat(unit_run: Path) -> None:
    m = json.loads((unit_run / "metrics.json").read_text())
    assert m["n_landslides"] >= 10 and m["skill_caveat"] is None


def test_skill_from_few_landslides_carries_a_caveat(unit_run: Path, tmp_path: Path) -> None:
    import warnings

    import lsm
    from lsm.evaluate.sample_size import MIN_SKILL_LANDSLIDES

    target = _few_landslides_region(tmp_path, n=60, n_landslides=6)
    # fit CV on the same few landslides
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = lsm.fit(target, models="lr", out=tmp_path / "fit", maps=False, explain=False)
    assert fit.metrics["skill_caveat"]["n_landslides"] == 6
    assert len(_caveat_notes(caught)) == 1
    # a study: its hold-out holds the landslides behind every score
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft = lsm.finetune(target, unit_run, shots=2, repeats=2, out=tmp_path / "k2",
                          maps=False, explain=False)
    m = ft.metrics
    assert m["test_landslides"] < MIN_SKILL_LANDSLIDES
    assert m["skill_caveat"]["n_landslides"] == m["test_landslides"]
    assert "hold-out" in m["skill_caveat"]["text"]
    notes = _caveat_notes(caught)
    assert len(notes) == 1 and f"skill from {m['test_landslides']} landslide" in notes[0]
    # --shots all: nested CV scores every landslide once
    ft_all = lsm.finetune(target, unit_run, shots="all", out=tmp_path / "all", maps=False,
                          explain=False)
    assert ft_all.metrics["skill_caveat"]["n_landslides"] == 6


def test_caveat_reaches_console_and_report(unit_run: Path, tmp_path: Path,
                                          capsys: Any) -> None:
    target = _few_landslides_region(tmp_path, n=60, n_landslides=6)
    out = tmp_path / "all"
    assert main(["finetune", "--target", str(target), "--from", str(unit_run), "--shots",
                 "all", "--out", str(out), "--no-explain", "-q"]) == 0
    err = capsys.readouterr().err
    assert "note: skill from 6 landslides" in err
    report = (out / "report.md").read_text()
    assert "**Caveat:** skill from 6 landslides" in report
    m = json.loads((out / "metrics.json").read_text())
    assert m["skill_caveat"]["min_landslides"] == 10


def test_scheduler_lost_mid_map_is_one_line_and_writes_nothing_half(
        tiny_region: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: Any) -> None:
    distributed = pytest.importorskip("distributed")
    from lsm.io import raster_write
    from lsm.workflows import cluster

    run = tmp_path / "run"
    assert main(["fit", "--source", str(tiny_region["spec_path"]), "--model", "lr", "--out",
                 str(run), "--no-predict", "--no-explain", "--no-cv", "-q"]) == 0
    lc = distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=None)
    blocks = raster_write._blocks

    def lose_scheduler_then_write(*args: Any, **kwargs: Any) -> Any:
        lc.close()  # the scheduler goes away as the first raster is being written
        return blocks(*args, **kwargs)

    monkeypatch.setattr(raster_write, "_blocks", lose_scheduler_then_write)
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 2)
    out = tmp_path / "maps"
    capsys.readouterr()
    rc = main(["predict", "--run", str(run), "--out", str(out), "--scheduler",
               lc.scheduler_address, "-q"])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "distributed." not in line]
    assert rc == 2 and len(lines) == 1 and "was lost during the command" in lines[0], err
    assert "internal error" not in err
    written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not [n for n in written if ".tmp-" in n or n.endswith(".tif")], written
