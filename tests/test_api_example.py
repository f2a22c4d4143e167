"""``examples/api_quickstart.py`` runs: fit, fine-tune, score a DataFrame, map, metrics."""

from __future__ import annotations

import runpy
from pathlib import Path

import rasterio

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "api_quickstart.py"


def test_api_quickstart_runs(tmp_path: Path) -> None:
    main = runpy.run_path(str(EXAMPLE), run_name="example")["main"]
    res = main(tmp_path)
    assert res["cv_auc"] > 0.7 and res["delivered_auc"] > 0.6
    assert res["n_scored"] == 20 and 0 <= res["p_min"] < res["p_max"] <= 1
    assert res["n_models"] == 3  # lr, xgb and the delivered model
    maps = tmp_path / "maps"
    with rasterio.open(maps / "demo-target_delivered_uncertainty.tif") as src:
        assert src.descriptions[0].startswith("std of P(landslide) across 3 bootstrap")
        assert src.units[0] == "probability"
        a = src.read(1)
    with rasterio.open(maps / "demo-target_delivered_probability.tif") as prob:
        p = prob.read(1)
    import numpy as np

    assert np.array_equal(np.isnan(a), np.isnan(p))  # same valid pixels as the map
    assert np.nanmax(a) > 0 and np.nanmin(a) >= 0
    assert (maps / "demo-target_delivered_uncertainty.png").read_bytes()[:4] == b"\x89PNG"
