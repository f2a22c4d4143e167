"""Compare the cross-region normalisations (target / source / none) on real data.

Fits the source once per normalisation and fine-tunes each target at K shots;
prints AUC and log-loss of every arm.  Needs the real data (``LSM_DATA_DIR``).

    LSM_DATA_DIR=../shared/data python benchmarks/compare_norms.py --shots 50 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lsm.workflows.finetune import FinetuneConfig, run_finetune
from lsm.workflows.fit import FitConfig, run_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="hongkong")
    ap.add_argument("--targets", default="jiangxi-yushan,ecuador")
    ap.add_argument("--models", default="rf,lr,xgb,mlp")
    ap.add_argument("--norms", default="target,source,none")
    ap.add_argument("--shots", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    models = args.models.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for norm in args.norms.split(","):
            t0 = time.perf_counter()
            run = Path(tmp) / f"src-{norm}"
            run_fit(FitConfig(source=args.source, models=models, out=run, norm=norm, cv=False,
                              progress=False))
            for target in args.targets.split(","):
                m = run_finetune(FinetuneConfig(
                    target=target, source_run=run, shots=args.shots, repeats=args.repeats,
                    out=Path(tmp) / f"ft-{norm}-{target}", progress=False))
                for fam, arms in m["models"].items():
                    for arm, s in arms.items():
                        rows.append((norm, target, fam, arm, s["auc"]["mean"],
                                     s["log_loss"]["mean"]))
            print(f"norm {norm}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\nK = {args.shots}, {args.repeats} repeats, source {args.source}")
    print(f"{'norm':8} {'target':16} {'model':5} {'arm':12} {'AUC':>6} {'logloss':>8}")
    for r in rows:
        print(f"{r[0]:8} {r[1]:16} {r[2]:5} {r[3]:12} {r[4]:6.3f} {r[5]:8.3f}")
    print("\nmean over targets and models (AUC, log-loss):")
    for norm in args.norms.split(","):
        for arm in ("source_only", "stage1", "stage2"):
            sel = [r for r in rows if r[0] == norm and r[3] == arm]
            auc = sum(r[4] for r in sel) / len(sel)
            ll = sum(r[5] for r in sel) / len(sel)
            print(f"  {norm:8} {arm:12} AUC {auc:.3f}  log-loss {ll:.3f}")


if __name__ == "__main__":
    main()
