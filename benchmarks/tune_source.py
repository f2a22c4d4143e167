"""Default vs tuned hyper-parameters of one family on a source region (spatial CV).

Runs (or resumes) ``lsm tune`` on the region, then prints the cross-validated
AUC and log-loss of the study's first trial (the family's defaults) and of its
best trial, on the same spatial folds, with the tuning time.  JSON goes to
``benchmarks/out/tune_<region>_<model>.json``.

    LSM_DATA_DIR=../shared/data python benchmarks/tune_source.py --source hongkong \
        --model xgb --trials 20 --out /tmp/tune-hk-xgb
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="hongkong")
    ap.add_argument("--model", default="xgb")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--out", type=Path, required=True, help="Tune run folder (resumable).")
    args = ap.parse_args()

    from lsm.workflows.tune import TuneConfig, run_tune

    t0 = time.perf_counter()
    s = run_tune(TuneConfig(source=args.source, model=args.model, trials=args.trials,
                            timeout=args.timeout, out=args.out, progress=False))
    seconds = time.perf_counter() - t0
    print(f"{s['region']} {args.model}: {s['n_trials']} trials in the study "
          f"({s['n_new']} new in {seconds:.0f} s; {s['n_complete']} complete, "
          f"{s['n_pruned']} pruned, {s['n_failed']} failed)")
    print(f"{'':10s} {'trial':>5s} {'AUC':>7s} {'log-loss':>9s}")
    for name in ("default", "best"):
        r = s[name]
        if r is not None:
            print(f"{name:10s} {r['number']:5d} {r['auc']:7.4f} {r['log_loss']:9.4f}")
    if s["best"] is not None:
        print("best params:", json.dumps(s["best"]["params"]))
    res = {"region": s["region"], "model": args.model, "seconds_this_call": seconds,
           **{k: s[k] for k in ("n_trials", "n_complete", "n_pruned", "n_failed",
                                "default", "best")}}
    out = REPO / "benchmarks" / "out" / f"tune_{s['region']}_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
