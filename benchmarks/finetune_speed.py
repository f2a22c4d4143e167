"""Time one fine-tuning repeat (every arm, and the delivered model) at K shots.

Uses a source run (``lsm fit``) and a target region; prints the median over a
few repeats of each step, in seconds, on this machine.

    LSM_DATA_DIR=../shared/data python benchmarks/finetune_speed.py \
        --from runs/hongkong --target jiangxi-yushan --shots 50
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from lsm.config.spec import load_region
from lsm.sampling.shots import draw_shots
from lsm.stack.features import design_matrix
from lsm.transfer import adapt, finetune, finetune_auto
from lsm.transfer.select import fit_delivered
from lsm.workflows.finetune import DELIVERED_TARGETS, _make_target, _repretrain, shared_factors
from lsm.workflows.fit import make_model
from lsm.workflows.region import load_region_data
from lsm.workflows.runs import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="run", default="runs/hongkong", type=Path)
    ap.add_argument("--target", default="jiangxi-yushan")
    ap.add_argument("--shots", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    run = load_run(args.run)
    target = load_region_data(load_region(args.target), progress=False)
    factors, _ = shared_factors(run, target)
    models = run.models
    if factors != run.schema.factors:
        models = _repretrain(run, factors, list(models), norm=run.norm, seed=0, device="cpu",
                             progress=False)
    X = design_matrix(target.table, run.schema.restrict(factors), norm=run.norm,
                      region_stats=target.stats, source_stats=run.stats)
    y = target.table["label"].to_numpy()
    print(f"{args.run} -> {args.target}, K = {args.shots}, {len(factors)} factors; "
          f"median of {args.repeats} repeats (s)")
    print(f"{'family':7} {'target_only':>11} {'stage1':>7} {'stage2':>7} {'stage2 auto':>11} "
          f"{'repeat (auto)':>13}")
    totals = []
    for fam, src in models.items():
        t = {k: [] for k in ("target_only", "stage1", "stage2", "auto")}
        for r in range(args.repeats):
            idx = draw_shots(y, args.shots, seed=r)
            Xs, ys = X.iloc[idx], y[idx]
            t0 = time.perf_counter()
            make_model(fam, seed=r, device="cpu").fit(Xs, ys)
            t1 = time.perf_counter()
            s1 = adapt(src, Xs, ys, random_state=r)
            t2 = time.perf_counter()
            finetune(s1, Xs, ys, source=src, random_state=r)
            t3 = time.perf_counter()
            finetune_auto(s1, Xs, ys, source=src, random_state=r)
            t4 = time.perf_counter()
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[k].append(v)
        med = {k: float(np.median(v)) for k, v in t.items()}
        total = med["target_only"] + med["stage1"] + med["auto"]
        totals.append(total)
        print(f"{fam:7} {med['target_only']:11.3f} {med['stage1']:7.3f} {med['stage2']:7.3f} "
              f"{med['auto']:11.3f} {total:13.3f}")
    times = []
    for r in range(args.repeats):
        idx = draw_shots(y, args.shots, seed=r)
        t0 = time.perf_counter()
        fit_delivered(models, X.iloc[idx], y[idx], make_target=_make_target("cpu"),
                      target_families=[f for f in DELIVERED_TARGETS if f in models], seed=r,
                      n_repeats=2 if idx.size < 60 else 1)
        times.append(time.perf_counter() - t0)
    deliver = float(np.median(times))
    print(f"{'delivered (choice by CV on the shots + refit)':>47} {deliver:13.3f}")
    print(f"{'one repeat, every arm of every family':>47} {sum(totals) + deliver:13.3f}")


if __name__ == "__main__":
    main()
