"""`lsm` end to end against the model in memory, per family and raster size.

For each size a synthetic 8-factor region is written once, tiled and
ZSTD-compressed on disk (elevation, slope, curvature, aspect, ndvi, rainfall,
twi and a categorical lithology; a NaN hole, as real rasters have), with a
region spec.  Each (family, size) case then runs in its own process, so that
its peak resident memory is its own:

- **end to end**: ``build_stack`` (lazy read) -> the ``lsm predict`` table
  function (category names, encoding, normalisation, model) through
  ``predict_raster`` -> ``write_probability_cog`` (COG with overviews);
- **model in memory**: ``model.predict_proba`` on the design matrix of a band
  of the same pixels already in memory (the model's own speed, nothing else).

Throughputs count the valid pixels (those the model sees), in millions per
second.  The table and a JSON file (``benchmarks/out/predict_raster.json``)
are printed/written at the end.

    nice python benchmarks/predict_raster.py --sizes 4096 8192 --models lr xgb rf mlp
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

FACTORS = ["elevation", "slope", "curvature", "aspect", "ndvi", "rainfall", "twi", "lithology"]
KINDS = {f: "continuous" for f in FACTORS} | {"aspect": "circular", "lithology": "categorical"}
N_LITHO = 5
OUT = Path(__file__).resolve().parent / "out"


def _field(name: str, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
           ) -> np.ndarray:
    """Smooth field with some noise for one factor on a band of rows (float32)."""
    k = FACTORS.index(name) + 1
    yy, xx = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    base = np.sin(xx / (700.0 + 90 * k) + k) * np.cos(yy / (900.0 - 60 * k) - k)
    base += 0.3 * rng.standard_normal(base.shape, dtype=np.float32)
    if name == "aspect":
        return (np.mod(base * 180.0, 360.0)).astype(np.float32)
    if name == "lithology":
        return np.clip(np.floor((base + 1.3) / 2.6 * N_LITHO) + 1, 1, N_LITHO).astype(np.float32)
    return base.astype(np.float32)


def make_region(size: int, folder: Path) -> Path:
    """Write the factor GeoTIFFs and spec of a ``size`` x ``size`` region once."""
    import rasterio
    import yaml
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    spec_path = folder / "bench.yaml"
    if spec_path.is_file():
        return spec_path
    folder.mkdir(parents=True, exist_ok=True)
    transform = from_origin(500000.0, 2500000.0, 10.0, 10.0)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="float32",
                   crs="EPSG:32650", transform=transform, nodata=float("nan"), tiled=True,
                   blockxsize=512, blockysize=512, compress="zstd", zstd_level=1,
                   predictor=3, bigtiff="IF_SAFER")
    cols = np.arange(size)
    cy, cx, r = size * 0.5, size * 0.25, size * 0.08  # NaN hole, like a lake or a sea
    for f in FACTORS:
        rng = np.random.default_rng(FACTORS.index(f))
        with rasterio.open(folder / f"{f}.tif", "w", **profile) as dst:
            for r0 in range(0, size, 512):
                rows = np.arange(r0, min(size, r0 + 512))
                v = _field(f, rows, cols, rng)
                hole = (rows[:, None] - cy) ** 2 + (cols[None, :] - cx) ** 2 < r * r
                v[hole] = np.nan
                dst.write(v, 1, window=Window(0, r0, size, len(rows)))
    spec = {
        "name": f"bench{size}",
        "chunks": 1024,
        "factors": {f: {"path": f"{f}.tif"} | ({"kind": "categorical", "categories": {
            str(i): f"rock{i}" for i in range(1, N_LITHO + 1)}} if f == "lithology" else {})
            for f in FACTORS},
        "inventory": {"path": "landslides.gpkg"},  # never read here
    }
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path


def _training(n: int = 20000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({f: rng.standard_normal(n) * 0.75 for f in FACTORS})
    t["aspect"] = rng.uniform(0, 360, n)
    t["lithology"] = [f"rock{i}" for i in rng.integers(1, N_LITHO + 1, n)]
    logit = 1.5 * t["slope"] - t["ndvi"] + 0.5 * np.sin(t["aspect"] / 57.3) \
        + 0.8 * (t["lithology"] == "rock2") + 0.7 * t["twi"] * t["curvature"]
    y = (logit + rng.logistic(size=n) > 0).astype(int).to_numpy()
    return t, y


def run_case(family: str, size: int, folder: Path, band_rows: int) -> dict:
    """One (family, size) case in this process: end to end, then the model in memory."""
    import warnings

    from lsm.config.spec import load_region
    from lsm.io.raster_write import write_probability_cog
    from lsm.mapping.predict import predict_raster
    from lsm.stack.build import build_stack
    from lsm.stack.features import FeatureSchema, design_matrix
    from lsm.stack.stats import table_statistics
    from lsm.workflows.fit import make_model
    from lsm.workflows.predict import make_predict_fn

    warnings.simplefilter("ignore")
    spec = load_region(make_region(size, folder))
    table, y = _training()
    schema = FeatureSchema.from_table(table, KINDS, FACTORS)
    stats = table_statistics(table, KINDS)
    X = design_matrix(table, schema, norm="target", region_stats=stats)
    model = make_model(family, seed=0).fit(X, y)
    run = SimpleNamespace(models={family: model}, schema=schema, meta={}, norm="target",
                          stats=stats)
    fn = make_predict_fn(run, family, spec, stats)
    rss_ready = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    stack = build_stack(spec, progress=False)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        t0 = time.perf_counter()
        write_probability_cog(predict_raster(stack, fn, factors=FACTORS), Path(tmp) / "p.tif")
        e2e_s = time.perf_counter() - t0
        import rasterio

        with rasterio.open(Path(tmp) / "p.tif") as src:
            n_overviews = len(src.overviews(1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # the same pixels in memory: one band of rows through the model alone
    r0 = size // 2 - band_rows // 2
    band = stack.isel(y=slice(r0, r0 + band_rows)).compute()
    cols = {f: band[f].values.ravel() for f in FACTORS}
    ok = np.logical_and.reduce([np.isfinite(v) for v in cols.values()])
    band_table = pd.DataFrame({f: v[ok] for f, v in cols.items()})
    from lsm.stack.clean import name_categories

    Xb = design_matrix(name_categories(band_table, spec), schema, norm="target",
                       region_stats=stats, warn_unknown=False)
    Xb = Xb.to_numpy(dtype=np.float32) if family != "lr" else Xb
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.predict_proba(Xb)
        times.append(time.perf_counter() - t0)
    mem_s = float(np.median(times))
    n_valid = _valid_pixels(size)
    return {
        "family": family, "size": size, "valid_mpx": n_valid / 1e6,
        "end_to_end_s": e2e_s, "end_to_end_mpx_s": n_valid / e2e_s / 1e6,
        "model_in_memory_mpx_s": len(band_table) / mem_s / 1e6,
        "ratio": (n_valid / e2e_s) / (len(band_table) / mem_s),
        "peak_rss_mib": peak, "rss_before_predict_mib": rss_ready,
        "overviews": n_overviews, "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }


def _valid_pixels(size: int) -> int:
    rows = np.arange(size)
    cy, cx, r = size * 0.5, size * 0.25, size * 0.08
    cols = np.arange(size)
    return int(sum(size - int(((row - cy) ** 2 + (cols - cx) ** 2 < r * r).sum())
                   for row in rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096])
    ap.add_argument("--models", nargs="+", default=["lr", "xgb", "rf", "mlp"],
                    choices=["lr", "xgb", "rf", "mlp"])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lsm-bench")
    ap.add_argument("--band-rows", type=int, default=256,
                    help="rows of the band predicted in memory for the model's own speed")
    ap.add_argument("--json", type=Path, default=OUT / "predict_raster.json")
    ap.add_argument("--case", nargs=2, metavar=("FAMILY", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.case:
        fam, size = args.case[0], int(args.case[1])
        res = run_case(fam, size, args.workdir / str(size), args.band_rows)
        print("RESULT " + json.dumps(res), flush=True)
        return

    rows = []
    for size in args.sizes:
        t0 = time.perf_counter()
        make_region(size, args.workdir / str(size))
        print(f"region {size}^2 ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        for fam in args.models:
            cmd = [sys.executable, __file__, "--case", fam, str(size), "--workdir",
                   str(args.workdir), "--band-rows", str(args.band_rows)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{fam} {size}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            res = json.loads(line[0][7:])
            rows.append(res)
            print(_row(res), flush=True)
    print()
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    print(f"\nJSON: {args.json}")


def _row(r: dict) -> str:
    return (f"| {r['family']} | {r['size']}^2 | {r['model_in_memory_mpx_s']:.2f} | "
            f"{r['end_to_end_mpx_s']:.2f} | {r['ratio']:.2f} | {r['peak_rss_mib']:.0f} MiB | "
            f"{r['end_to_end_s']:.0f} s |")


def table(rows: list[dict]) -> str:
    head = ("| family | raster | model in memory, Mpx/s | lsm end to end, Mpx/s | ratio | "
            "peak RSS | end to end time |\n|---|---|---|---|---|---|---|")
    return "\n".join([head, *map(_row, rows)])


if __name__ == "__main__":
    main()
