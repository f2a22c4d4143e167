"""The CLI's shape: help texts, lazy imports, and ``lsm stack`` on the demo region."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lsm.cli import main

SUBCOMMANDS = ("regions", "stack", "fit", "finetune", "demo")


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "finetune", "stack", "demo", "regions"):
        assert cmd in out, cmd
    assert "hongkong" in out


def test_no_arguments_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([])
    captured = capsys.readouterr()
    assert rc in (0, 2)  # click's no_args_is_help exits 0 (older) or 2 (newer)
    assert "finetune" in captured.out + captured.err


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and cmd in out


def test_stack_help_names_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--region", "--data-dir", "--table", "--quiet"):
        assert opt in out, opt


def test_unknown_command_and_option_fail(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) != 0
    assert main(["stack", "--region", "x", "--bogus"]) != 0
    err = capsys.readouterr().err
    assert "frobnicate" in err or "No such command" in err


def test_help_imports_no_heavy_libraries() -> None:
    code = ("import sys, io, contextlib\n"
            "from lsm.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    rc = main(['--help'])\n"
            "assert rc == 0, rc\n"
            "heavy = {'torch', 'xgboost', 'shap', 'sklearn', 'rasterio', 'xarray'}\n"
            "loaded = heavy & set(sys.modules)\n"
            "assert not loaded, loaded\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


def test_regions_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regions"]) == 0
    out = capsys.readouterr().out
    for name in ("hongkong", "ecuador", "jiangxi-yongxin", "jiangxi-yushan", "demo-target"):
        assert name in out, name
    assert "table" in out and "raster" in out


def test_stack_demo_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LSM_DEMO_DIR", str(tmp_path / "demo"))
    table = tmp_path / "table.parquet"
    rc = main(["stack", "--region", "demo-target", "-q", "--table", str(table)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (tmp_path / "demo" / "demo-target.yaml").is_file()
    assert "demo-target" in out and "EPSG:32617" in out
    for f in ("elevation", "lithology", "rainfall", "ndvi", "slope", "aspect", "curvature"):
        assert f in out, f
    assert "landslides" in out and "spatial folds" in out
    import pandas as pd

    t = pd.read_parquet(table)
    assert {"x", "y", "label", "fold", "slope"} <= set(t.columns)
    assert t["label"].sum() > 50
    # demo NDVI is stored as int16 x 10000 with a sentinel: cleaned to true values
    assert t["ndvi"].dropna().between(-1, 1).all()


def test_stack_bad_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["stack", "--region", "hongkong", "--data-dir", str(tmp_path / "nope")])
    assert rc != 0
    assert "no such folder" in capsys.readouterr().err


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(("module", "attr", "argv"), [
    ("lsm.workflows.fit", "run_fit", ["fit", "--source", "hongkong", "-q"]),
    ("lsm.workflows.pipeline", "run_pipeline", ["run", "pipelines/demo.yaml", "-q"]),
])
def test_ctrl_c_prints_interrupted_and_exits_130(module: str, attr: str, argv: list[str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    monkeypatch.setattr(importlib.import_module(module), attr, _interrupt)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err


def test_sigint_to_a_running_command_exits_130() -> None:
    import signal

    code = ("import sys, time\n"
            "import lsm.workflows.fit as wf\n"
            "def slow(cfg):\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "wf.run_fit = slow\n"
            "from lsm.cli import main\n"
            "sys.exit(main(['fit', '--source', 'hongkong', '-q']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err


def test_warnings_print_once_as_clean_notes(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A workflow's warning that is also one of its report's notes shows up once."""
    import warnings

    import lsm.workflows.fit as wf
    import lsm.workflows.outputs as wo
    import lsm.workflows.report as wr

    msg = "categorical factor 'lithology': legends cannot be matched, dropped"

    def fit_that_warns(cfg: object) -> dict:
        for _ in range(2):
            warnings.warn(msg, UserWarning, stacklevel=2)
        warnings.warn("[shap] fallback", RuntimeWarning, stacklevel=2)
        return {"region": "x", "notes": [msg]}

    monkeypatch.setattr(wf, "run_fit", fit_that_warns)
    monkeypatch.setattr(wr, "print_fit_metrics",
                        lambda m, con: [con.print(f"note: {n}") for n in m["notes"]])
    monkeypatch.setattr(wo, "after_training", lambda *a, **k: None)
    import types

    import lsm.api as api

    # the fake fit writes no run folder: the API's run is its metrics alone
    monkeypatch.setattr(api.Run, "load", classmethod(
        lambda cls, path, **k: types.SimpleNamespace(metrics={"region": "x", "notes": [msg]})))
    assert main(["fit", "--source", "hongkong", "-q"]) == 0
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert lines.count(f"note: {msg}") == 1
    assert "note: RuntimeWarning: [shap] fallback" in lines
    assert not any("warnings.warn" in ln or "UserWarning:" in ln for ln in lines), lines
    # a second call of main starts afresh
    assert main(["fit", "--source", "hongkong", "-q"]) == 0
    assert capsys.readouterr().err.count(f"note: {msg}") == 1
