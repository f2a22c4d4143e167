"""Out-of-core prediction: time and peak memory of a probability COG for a large grid.

Builds a lazy synthetic factor stack of SIZE x SIZE pixels (dask, nothing in
memory), trains a model on a sample, predicts block by block and writes the
COG, then prints pixels/s and the peak resident memory against the size of the
raster had it been held in memory.

    python benchmarks/predict_raster.py --size 4000 --model xgb
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--chunks", type=int, default=1024)
    ap.add_argument("--model", default="xgb", choices=["rf", "lr", "xgb", "mlp"])
    args = ap.parse_args()

    from lsm.io.raster_write import write_probability_cog
    from lsm.mapping.predict import predict_raster
    from lsm.models import get_family

    n, c = args.size, args.chunks
    names = ["slope", "elevation", "ndvi", "rainfall", "twi"]
    rs = da.random.RandomState(0)
    data = {f: rs.normal(size=(n, n), chunks=(c, c)).astype("float32") for f in names}
    x = np.arange(n) * 10.0 + 5
    y = 1e6 - np.arange(n) * 10.0 - 5
    ds = xr.Dataset({f: (("y", "x"), a) for f, a in data.items()}, coords={"x": x, "y": y})
    ds = ds.rio.write_crs("EPSG:32633")

    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(20000, len(names))), columns=names)
    label = (train["slope"] - 0.5 * train["ndvi"] + rng.normal(size=20000) > 0).astype(int)
    model = get_family(args.model)().fit(train, label)

    def fn(t: pd.DataFrame) -> np.ndarray:
        return model.predict_proba(t[names])[:, 1]

    prob = predict_raster(ds, fn, factors=names)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_probability_cog(prob, Path(tmp) / "p.tif")
        dt = time.perf_counter() - t0
        size = (Path(tmp) / "p.tif").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    in_memory = n * n * 4 * (len(names) + 1) / 2**20
    print(f"{n} x {n} px ({n * n / 1e6:.1f} M), chunks {c}, model {args.model}")
    print(f"predict + write COG: {dt:.1f} s, {n * n / dt / 1e6:.2f} M px/s, "
          f"file {size / 2**20:.0f} MiB")
    print(f"peak RSS {peak:.0f} MiB; the stack + map held in memory would take "
          f"{in_memory:.0f} MiB")


if __name__ == "__main__":
    main()
