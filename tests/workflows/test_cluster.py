"""``--scheduler``: the same fit and map on a dask.distributed cluster as on local threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from lsm.cli import main
from lsm.errors import SchedulerError
from lsm.workflows.cluster import dask_scheduler, scheduler_address


def _fit_and_map(spec: Path, out: Path, extra: list[str]) -> np.ndarray:
    assert main(["fit", "--source", str(spec), "--model", "lr,xgb", "--out", str(out / "run"),
                 "--no-predict", "--no-explain", "-q", *extra]) == 0
    assert main(["predict", "--run", str(out / "run"), "--model", "xgb", "--out",
                 str(out / "maps"), "-q", *extra]) == 0
    (tif,) = (out / "maps").glob("*_probability.tif")
    with rasterio.open(tif) as src:
        return src.read(1)


def test_distributed_map_is_bit_identical(tiny_region: dict[str, Any], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    import dask

    spec = tiny_region["spec_path"]
    local = _fit_and_map(spec, tmp_path / "local", [])
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
        remote = _fit_and_map(spec, tmp_path / "cluster", ["--scheduler",
                                                             cluster.scheduler_address])
        with distributed.Client(cluster.scheduler_address) as client:
            # the workers did compute: each ran tasks of the command
            assert all(n > 0 for n in client.run(_tasks_run).values())
    assert dask.config.get("scheduler", None) is None  # the local scheduler is back
    assert np.isfinite(local).any()
    assert local.dtype == remote.dtype and np.array_equal(local, remote, equal_nan=True)


def _tasks_run(dask_worker: Any) -> int:
    return len(dask_worker.state.log)


def test_scheduler_address_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LSM_SCHEDULER", raising=False)
    assert scheduler_address() is None
    monkeypatch.setenv("LSM_SCHEDULER", " tcp://127.0.0.1:1 ")
    assert scheduler_address() == "tcp://127.0.0.1:1"
    assert scheduler_address("") is None  # an explicit empty address means local
    with dask_scheduler("") as client:
        assert client is None


def test_unreachable_scheduler_is_one_line(tmp_path: Path, capsys: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr("lsm.workflows.cluster.CONNECT_TIMEOUT", 1)
    with pytest.raises(SchedulerError, match="cannot connect"), \
            dask_scheduler("tcp://127.0.0.1:9"):
        pass
    monkeypatch.setenv("LSM_SCHEDULER", "tcp://127.0.0.1:9")
    assert main(["predict", "--run", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tcp://127.0.0.1:9: cannot connect" in err and len(err.splitlines()) == 1
