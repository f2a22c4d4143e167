"""Wetness index (depression filling + MFD flow accumulation) on large DEMs.

For each size a synthetic fractal DEM (float32, 10 m cells, a NaN lake in
it, noise at every scale so that it is full of pits and flats) is made in a
fresh process, then :func:`lsm.stack.terrain.twi` computes the wetness index
on it in memory.  Each case reports the wall time, the peak resident memory
of its process and that peak less the memory the DEM itself held (what the
algorithm needs on top of its input; the DEM's own generation may have
peaked higher, and then the peak is that of the generation).  With ``--phases`` the depression
filling and the flow accumulation are also timed on their own.

Prints a table and writes ``benchmarks/out/terrain.json``.

    nice python benchmarks/terrain.py --sizes 2048 4096 8192
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def fractal_dem(size: int, seed: int = 0) -> np.ndarray:
    """``size`` x ``size`` float32 elevations (m): a pyramid of bilinear upsampling plus
    noise halving at every level, a regional tilt, and a round NaN lake."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((4, 4)) * 400.0).astype(np.float32)
    amp = 150.0
    while z.shape[0] < size:
        z = ndimage.zoom(z, 2, order=1)
        z += rng.standard_normal(z.shape, dtype=np.float32) * np.float32(amp)
        amp *= 0.5
    z = np.ascontiguousarray(z[:size, :size])
    z += np.linspace(800.0, 0.0, size, dtype=np.float32)[:, None]  # drains to the south
    r0, c0, rad = int(size * 0.6), int(size * 0.3), size // 20
    for r in range(max(0, r0 - rad), min(size, r0 + rad + 1)):  # row by row: no n^2 temps
        z[r, (np.arange(size) - c0) ** 2 + (r - r0) ** 2 < rad * rad] = np.nan
    return z


def run_case(size: int, phases: bool) -> dict:
    import rioxarray  # noqa: F401
    import xarray as xr
    from rasterio.transform import from_origin

    from lsm.stack import terrain

    t0 = time.perf_counter()
    z = fractal_dem(size)
    dem_s = time.perf_counter() - t0
    res = 10.0
    dem = xr.DataArray(z, dims=("y", "x"), name="dem",
                       coords={"y": 2_500_000.0 - res * (np.arange(size) + 0.5),
                               "x": 500_000.0 + res * (np.arange(size) + 0.5)})
    dem = dem.rio.write_crs("EPSG:32650").rio.write_transform(
        from_origin(500_000.0, 2_500_000.0, res, res))
    rss_dem = _current_rss_mib()
    t0 = time.perf_counter()
    out = terrain.twi(dem)
    twi_s = time.perf_counter() - t0
    values = np.asarray(out.values)
    row = {
        "size": size, "cells_m": size * size / 1e6, "twi_s": twi_s,
        "mcells_s": size * size / twi_s / 1e6, "peak_rss_mib": _rss_mib(),
        "rss_with_dem_mib": rss_dem, "dem_s": dem_s,
        "finite_share": float(np.isfinite(values).mean()),
        "twi_mean": float(np.nanmean(values)), "twi_max": float(np.nanmax(values)),
        "impl": "numba" if importlib.util.find_spec("lsm.stack._hydrology") else "python",
    }
    row["peak_above_dem_mib"] = row["peak_rss_mib"] - rss_dem
    del out, values
    if phases:
        t0 = time.perf_counter()
        filled = terrain._fill_depressions(z)
        row["fill_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        terrain._mfd_accumulation(filled, res, -res)
        row["accumulation_s"] = time.perf_counter() - t0
    return row


def _rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    """Resident memory now (Linux), after the DEM's generation temporaries are gone."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    return _rss_mib()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--phases", action="store_true",
                    help="also time depression filling and accumulation alone")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    ap.add_argument("--json", type=Path, default=OUT / "terrain.json")
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.phases)), flush=True)
        return

    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--case", str(size)] + (["--phases"] if args.phases
                                                                  else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env=os.environ)
        except subprocess.TimeoutExpired:
            print(f"{size}^2: over {args.timeout:.0f} s, stopped", flush=True)
            continue
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{size}^2: failed (exit {proc.returncode})\n{proc.stderr[-1500:]}",
                  flush=True)
            continue
        rows.append(json.loads(line[0][7:]))
        print(_row(rows[-1]), flush=True)
    print()
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    print(f"\nJSON: {args.json}")


def _row(r: dict) -> str:
    phases = (f"{r['fill_s']:.1f} s / {r['accumulation_s']:.1f} s" if "fill_s" in r else "")
    return (f"| {r['impl']} | {r['size']}^2 | {r['twi_s']:.1f} s | {r['mcells_s']:.2f} | "
            f"{r['peak_rss_mib']:,.0f} MiB | {r['peak_above_dem_mib']:,.0f} MiB | "
            f"{phases} |")


def table(rows: list[dict]) -> str:
    head = ("| hydrology | DEM | twi time | Mcells/s | peak RSS | peak above the DEM | "
            "fill / accumulation alone |\n|---|---|---|---|---|---|---|")
    return "\n".join([head, *map(_row, rows)])


if __name__ == "__main__":
    main()
