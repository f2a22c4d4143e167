"""The README's Quickstart, as a user runs it.

The demo block runs verbatim, line by line, through the CLI in a fresh folder. The
real-data block is checked without running it (it takes tens of minutes): every
command is a known subcommand with known options, every spec or pipeline it names
exists, and every ``--run``/``--from`` folder is written by a line above it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lsm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = README.parent


def quickstart_blocks() -> list[list[str]]:
    """The bash blocks of the Quickstart section, as lists of command lines."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    out = []
    for b in blocks:
        lines = []
        for ln in b.splitlines():
            ln = ln.split(" #", 1)[0].strip()
            if ln and not ln.startswith("#"):
                lines.append(ln)
        out.append(lines)
    return out


def test_quickstart_has_a_demo_and_a_real_block() -> None:
    blocks = quickstart_blocks()
    assert len(blocks) == 2
    assert all(ln.startswith("lsm ") for ln in blocks[0])
    assert any("demo-source" in ln for ln in blocks[0])
    assert any("hongkong" in ln for ln in blocks[1])


def test_demo_quickstart_runs_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pipelines").symlink_to(REPO / "pipelines")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for line in quickstart_blocks()[0]:
        argv = shlex.split(line)
        rc = main(argv[1:])
        cap = capsys.readouterr()
        assert rc == 0, f"{line!r} exited {rc}:\n{cap.err[-2000:]}"
        assert "Traceback" not in cap.err
    run = tmp_path / "runs" / "demo-source-to-demo-target-k25"
    assert list((run / "maps").glob("*_probability.tif"))
    assert list((run / "maps").glob("*shap*.tif")) or list(run.rglob("*shap*.tif"))
    assert (tmp_path / "runs" / "pipelines" / "demo" / "summary.md").exists()


def _option_names(command: str) -> set[str]:
    from lsm.cli import _click_command

    cmd = _click_command().commands[command]
    names: set[str] = set()
    for p in cmd.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def test_real_data_quickstart_is_consistent() -> None:
    """Without running it: known commands and options, existing files, and a folder for
    every --run/--from made by an earlier line (the folder names lsm gives its runs)."""
    from lsm.cli import _click_command

    commands = _click_command().commands
    made: set[str] = set()
    for line in quickstart_blocks()[1]:
        argv = shlex.split(line)
        if argv[0] == "export":
            continue
        assert argv[0] == "lsm" and argv[1] in commands, line
        opts = _option_names(argv[1])
        args = argv[2:]
        kv: dict[str, str] = {}
        for i, a in enumerate(args):
            if a.startswith("-"):
                assert a in opts, f"{line!r}: unknown option {a}"
                if i + 1 < len(args) and not args[i + 1].startswith("-"):
                    kv[a] = args[i + 1]
        for a in args:
            if a.endswith((".yaml", ".yml")):
                assert (REPO / a).exists(), f"{line!r}: {a} does not exist"
        for key in ("--run", "--from"):
            if key in kv:
                assert kv[key] in made, f"{line!r}: {kv[key]} is made by no line above"
        cmd = argv[1]
        if cmd == "fit":
            made.add(f"runs/{kv.get('--source', 'hongkong')}")
        elif cmd == "finetune":
            src = Path(kv.get("--from", "runs/hongkong")).name
            target = Path(kv["--target"]).stem
            made.add(f"runs/{src}-to-{target}-k{kv.get('--shots', '50')}")
