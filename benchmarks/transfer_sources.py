"""Does transfer pay off more with several sources, or with importance re-weighting?

For each target, the source is Hong Kong alone or Hong Kong + Jiangxi-Yongxin
pooled (``lsm fit --source hongkong,jiangxi-yongxin``: each region normalised
with its own statistics, region-balanced weights), and the source models are
re-pretrained with or without importance weights towards the target
(``--reweight``).  Every combination is fine-tuned at K shots x repeats with
the same seed, so all configurations of a target share their shots and test
set: differences are paired.  Prints AUC / log-loss of every family's arms and
of the delivered model (row ``lsm``), and writes everything to JSON.

Needs the real data (``LSM_DATA_DIR``); runs go under ``benchmarks/out/`` (ignored by
git) unless ``--out`` says otherwise.

    LSM_DATA_DIR=../shared/data nice -n 10 python benchmarks/transfer_sources.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lsm.workflows.finetune import FinetuneConfig, run_finetune
from lsm.workflows.fit import FitConfig, run_fit

SOURCES = {"single": "hongkong", "multi": "hongkong,jiangxi-yongxin",
           "yx": "jiangxi-yongxin"}  # yx: a same-province reference, not a study arm
ARMS = ("source_only", "target_only", "stage1", "stage2")


def _ess_note(notes: list[str]) -> str:
    return next((n for n in notes if "effective sample size" in n), "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="jiangxi-yushan,ecuador")
    ap.add_argument("--sources", default="single,multi",
                    help="Comma list of: single (hongkong), multi (hongkong,jiangxi-yongxin), "
                    "yx (jiangxi-yongxin alone, for reference).")
    ap.add_argument("--models", default="rf,lr,xgb,mlp")
    ap.add_argument("--shots", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "transfer_sources")
    ap.add_argument("--json", type=Path, default=None,
                    help="Result file [default: <out>/results.json].")
    args = ap.parse_args()
    models = args.models.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"shots": args.shots, "repeats": args.repeats, "seed": args.seed,
                               "models": models, "runs": []}
    fits: dict[str, Path] = {}
    for kind in args.sources.split(","):
        t0 = time.perf_counter()
        fits[kind] = args.out / f"fit-{kind}"
        m = run_fit(FitConfig(source=SOURCES[kind], models=models, out=fits[kind], cv=False,
                              seed=args.seed, device=args.device, progress=False))
        print(f"fit {kind} ({SOURCES[kind]}): {len(m['factors'])} factors, {m['n']} rows, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    for target in args.targets.split(","):
        for kind in fits:
            for reweight in (False, True):
                t0 = time.perf_counter()
                m = run_finetune(FinetuneConfig(
                    target=target, source_run=fits[kind], shots=args.shots,
                    repeats=args.repeats, seed=args.seed, device=args.device, deliver=False,
                    reweight=reweight, progress=False,
                    out=args.out / f"ft-{kind}-{'rw' if reweight else 'plain'}-{target}"))
                secs = time.perf_counter() - t0
                run = {"target": target, "sources": SOURCES[kind], "kind": kind,
                       "reweight": reweight, "factors": m["factors"], "seconds": secs,
                       "source_retrained": m["source_retrained"], "ess_note": _ess_note(
                           m["notes"]),
                       "models": m["models"], "repeats_detail": m["repeats_detail"]}
                results["runs"].append(run)
                d = m["models"]["lsm"]["delivered"]
                print(f"{target} <- {SOURCES[kind]}, reweight {reweight}: delivered AUC "
                      f"{d['auc']['mean']:.3f}, log-loss {d['log_loss']['mean']:.3f} "
                      f"({secs:.0f} s)", flush=True)
    out_json = args.json or args.out / "results.json"
    results["paired"] = paired(results["runs"])
    out_json.write_text(json.dumps(results, indent=1, default=float))
    print_tables(results)
    print(f"\nJSON -> {out_json}")


def paired(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target, every configuration against HK alone without re-weighting.

    Same seed, so the same shots and test set in every repeat: mean difference
    over repeats and the number of repeats where the configuration is better.
    """
    out = []
    for target in dict.fromkeys(r["target"] for r in runs):
        of = [r for r in runs if r["target"] == target]
        base = next((r for r in of if r["kind"] == "single" and not r["reweight"]), None)
        if base is None:
            continue
        for r in of:
            if r is base:
                continue
            for fam, arms in r["repeats_detail"].items():
                for arm, reps in arms.items():
                    if arm == "target_only" or fam not in base["repeats_detail"]:
                        continue  # the same model whatever the source
                    b = base["repeats_detail"][fam][arm]
                    for metric, better in (("auc", 1), ("log_loss", -1)):
                        diff = np.array([x[metric] for x in reps]) - np.array(
                            [x[metric] for x in b])
                        out.append({"target": target, "config": _label(r), "model": fam,
                                    "arm": arm, "metric": metric,
                                    "mean_diff": float(diff.mean()),
                                    "wins": int((better * diff > 0).sum()),
                                    "n": int(diff.size)})
    return out


def _label(r: dict[str, Any]) -> str:
    name = {"single": "HK", "multi": "HK+YX", "yx": "YX"}[r["kind"]]
    return f"{name}{' rw' if r['reweight'] else ''}"


def print_tables(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print(f"\nK = {results['shots']}, {results['repeats']} repeats, seed {results['seed']}; "
          "mean AUC / log-loss over repeats (same shots and test set in every row of a "
          "target)")
    fams = [f for f in results["models"]]
    head = f"{'target':15} {'source':9} {'arm':12}" + "".join(f" {f:>13}" for f in fams) + \
        f" {'lsm':>13}"
    print(head)
    print("-" * len(head))
    for r in runs:
        for arm in ARMS:
            cells = []
            for f in fams:
                s = r["models"].get(f, {}).get(arm)
                cells.append(f" {s['auc']['mean']:.3f}/{s['log_loss']['mean']:.3f}" if s
                             else f" {'-':>13}")
            lsm_arm = {"source_only": "source_only", "target_only": "target_only",
                       "stage2": "delivered"}.get(arm)
            s = r["models"]["lsm"].get(lsm_arm) if lsm_arm else None
            cells.append(f" {s['auc']['mean']:.3f}/{s['log_loss']['mean']:.3f}" if s
                         else f" {'':>13}")
            print(f"{r['target']:15} {_label(r):9} {arm:12}" + "".join(cells))
    print("\n(column lsm: its source_only / target_only baselines, and on the stage2 line "
          "the delivered model)")
    print("\nre-weighting (effective sample size of the source rows):")
    for r in runs:
        if r["reweight"]:
            print(f"  {r['target']:15} {_label(r):9} {r['ess_note']}")
    print("\npaired vs HK without re-weighting: mean difference [wins/repeats]; "
          "AUC higher and log-loss lower is better")
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for p in results["paired"]:
        if p["arm"] not in ("stage2", "delivered", "source_only"):
            continue
        key = (p["target"], p["config"], p["arm"])
        rows.setdefault(key, {})[f"{p['model']}:{p['metric']}"] = \
            f"{p['mean_diff']:+.3f} [{p['wins']}/{p['n']}]"
    print(f"{'target':15} {'config':9} {'arm':12}" + "".join(f" {f + ' AUC':>16}"
                                                             for f in [*fams, 'lsm'])
          + f" {'lsm log-loss':>16}")
    for (target, config, arm), cells in rows.items():
        line = f"{target:15} {config:9} {arm:12}"
        for f in [*fams, "lsm"]:
            line += f" {cells.get(f'{f}:auc', ''):>16}"
        line += f" {cells.get('lsm:log_loss', ''):>16}"
        print(line)


if __name__ == "__main__":
    main()
