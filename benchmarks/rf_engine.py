"""Random forest: prediction speed against spatial-CV skill, per forest setting.

On Hong Kong (the real sample table), for each forest setting: spatial-CV AUC
and log-loss (the folds ``lsm fit`` uses) and the prediction throughput of
``RandomForestModel.predict_proba`` on a large table (the HK design matrix
repeated), against scikit-learn's ``RandomForestClassifier.predict_proba`` on
the former default forest (300 trees, ``min_samples_leaf=2``); the default is
now 100 trees.  Prints a table
and writes ``benchmarks/out/rf_engine.json``.

    LSM_DATA_DIR=../shared/data nice python benchmarks/rf_engine.py
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
SETTINGS = {
    "300 trees, leaf 2 (former default)": {"n_estimators": 300},
    "default (100 trees, leaf 2)": {},
    "100 trees, leaf 5": {"n_estimators": 100, "min_samples_leaf": 5},
    "100 trees, leaf 10": {"n_estimators": 100, "min_samples_leaf": 10},
    "60 trees, leaf 10": {"n_estimators": 60, "min_samples_leaf": 10},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the timing table")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="names of SETTINGS to run")
    ap.add_argument("--json", type=Path, default=OUT / "rf_engine.json")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from lsm.config.spec import load_region
    from lsm.evaluate.cv import cross_validate
    from lsm.models.rf import RandomForestModel
    from lsm.stack.features import FeatureSchema
    from lsm.workflows.fit import train_matrix
    from lsm.workflows.region import load_region_data

    data = load_region_data(load_region("hongkong"), progress=False)
    schema = FeatureSchema.from_table(data.table, data.kinds)
    X = train_matrix(data, schema, "target")
    y = data.table["label"].to_numpy()
    folds = data.table["fold"].to_numpy()
    reps = -(-args.rows // len(X))
    big = np.tile(X.to_numpy(np.float32), (reps, 1))[:args.rows]
    import pandas as pd

    big = pd.DataFrame(big, columns=X.columns)

    rows = []
    sk_default = None
    for name, params in SETTINGS.items():
        if args.only and name not in args.only:
            continue

        def make(params=params):
            return RandomForestModel(n_jobs=args.n_jobs, random_state=0, **params)

        t0 = time.perf_counter()
        cv = cross_validate(make, X, y, folds)
        cv_s = time.perf_counter() - t0
        model = make().fit(X, y)
        t0 = time.perf_counter()
        model.predict_proba(big)
        lsm_s = time.perf_counter() - t0
        nodes = float(np.mean([t.tree_.node_count for t in model.forest_.estimators_]))
        row = {"setting": name, "params": params,
               "cv_auc": cv["summary"]["auc"]["mean"],
               "cv_log_loss": cv["summary"]["log_loss"]["mean"],
               "mpx_s": args.rows / lsm_s / 1e6, "nodes_per_tree": nodes, "cv_s": cv_s}
        if params == {"n_estimators": 300}:  # scikit-learn on the former default forest
            t0 = time.perf_counter()
            model.forest_.predict_proba(big.to_numpy())
            sk_default = args.rows / (time.perf_counter() - t0) / 1e6
            row["sklearn_mpx_s"] = sk_default
        rows.append(row)
        print(row, flush=True)
    for r in rows:
        if sk_default:
            r["speedup_vs_sklearn_300"] = r["mpx_s"] / sk_default
        r["auc_change"] = r["cv_auc"] - rows[0]["cv_auc"]
    print("\n| forest | spatial-CV AUC | change | log-loss | Mrows/s | x sklearn 300 trees "
          "| nodes/tree |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['cv_auc']:.4f} | {r['auc_change']:+.4f} | "
              f"{r['cv_log_loss']:.4f} | {r['mpx_s']:.3f} | "
              f"{r.get('speedup_vs_sklearn_300', float('nan')):.1f} | "
              f"{r['nodes_per_tree']:.0f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
