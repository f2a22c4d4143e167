"""The lsm Python API in one page, on the two generated demo regions (offline).

Fit source models on the demo source, fine-tune them on the demo target, score a
pandas DataFrame, write a map (with its uncertainty layer) and read the metrics.

Run it with ``python examples/api_quickstart.py [work folder]`` (default: a new
temporary folder); it takes about a minute on a laptop.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

import lsm
from lsm.datasets.demo import generate_demo


def main(work: Path) -> dict[str, float]:
    regions = generate_demo(work / "regions")          # demo-source.yaml, demo-target.yaml
    source, target = regions["demo-source"], regions["demo-target"]

    # 1. pretrain in the data-rich region (spatial cross-validation, then the final fit)
    src = lsm.fit(source, models="lr,xgb", out=work / "runs" / "source", maps=False,
                  explain=False)
    cv_auc = src.metrics["cv"]["xgb"]["summary"]["auc"]["mean"]
    print(f"source: {src.region}, factors {src.factors}, CV AUC (xgb) {cv_auc:.3f}")

    # 2. fine-tune on 10 landslides of the data-scarce region; one model is delivered
    ft = lsm.finetune(target, src, shots=10, repeats=2, out=work / "runs" / "finetune",
                      maps=False, explain=False)
    delivered = ft.metrics["models"]["lsm"]["delivered"]
    print(f"delivered model ({ft.default_model}): hold-out AUC {delivered['auc']['mean']:.3f}, "
          f"log-loss {delivered['log_loss']['mean']:.3f}")

    # 3. score a DataFrame of raw factor values (the run applies schema + normalisation)
    points = lsm.load_region(target).table.head(20)
    frame = pd.DataFrame(points[ft.factors])
    p = ft.predict(frame, region=target)
    every = ft.predict(frame, model="all", region=target)
    print(f"scored {len(p)} rows: P(landslide) {p.min():.2f} to {p.max():.2f}; "
          f"columns of model='all': {list(every.columns)}")

    # 4. map the target region: probability COG, zones, quick-looks, uncertainty COG
    m = ft.predict_map(out=work / "maps", uncertainty=3)
    print("map files:", ", ".join(f"{k}={v.name}" for k, v in m.files.items()))
    print(m.zone_statistics[["name", "area_share", "density_ratio"]].to_string())

    # 5. read a run back from its folder
    again = lsm.Run.load(ft.path)
    return {"cv_auc": cv_auc, "delivered_auc": delivered["auc"]["mean"],
            "n_scored": float(len(p)), "p_min": float(p.min()), "p_max": float(p.max()),
            "n_models": float(len(again.models))}


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="lsm-"))
    print(main(folder))
