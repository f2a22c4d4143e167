"""Wall-clock time of ``lsm --help`` (import cost) and of the demo pipeline.

These used to be asserted in the tests, where timings depend on the machine
and its load; here they are only measured and printed.

    python benchmarks/cli_timings.py            # both
    python benchmarks/cli_timings.py --help-only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _time(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--help-only", action="store_true", help="Skip the demo pipeline.")
    args = ap.parse_args()
    lsm = [sys.executable, "-m", "lsm.cli"]
    print(f"lsm --help: {_time([*lsm, '--help']):.2f} s")
    if args.help_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LSM_DEMO_DIR": f"{tmp}/demo", "LSM_CACHE": f"{tmp}/cache"}
        seconds = _time([*lsm, "run", "pipelines/demo.yaml", "--out", f"{tmp}/out", "-q"], env)
    print(f"lsm run pipelines/demo.yaml: {seconds:.1f} s")


if __name__ == "__main__":
    main()
