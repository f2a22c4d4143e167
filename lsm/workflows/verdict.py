"""One verdict line per family of a fine-tune, and the near-chance check.

A fine-tune compares, on one held-out target set, each family's transfer arm with the
two things a user could have had without ``lsm``: the source model alone
(``source_only``) and a model trained on the shots alone (``target_only``). This module
turns the paired differences of :func:`lsm.workflows.finetune.paired_table` into one
plain line per family, and says when no arm ranks the hold-out much better than chance:
then the maps of the run are not to be trusted, and zones are not written unless the
user forces them.

Everything here reads the metrics dict only (no files), so the console, the report and
the pipeline summaries say the same thing.
"""

from __future__ import annotations

import math
from typing import Any

#: Below this hold-out AUC (the best arm's mean) a run is "near chance": a ranking that
#: puts a landslide above a non-landslide 60 % of the time is of little use for zoning.
NEAR_CHANCE_AUC = 0.60

#: A paired difference smaller than this (AUC or log-loss) is no claim, even when its
#: interval excludes 0: it prints as +0.000 at the precision every table uses.
MIN_DIFF = 0.0005


def _transfer_arm(row: str) -> str:
    """The transfer arm of a row of ``metrics["models"]``: the delivered model for row
    ``lsm``, the fine-tuned (stage 2) model of every family."""
    return "delivered" if row == "lsm" else "stage2"


def _key(row: str, arm: str, baseline: str) -> str:
    return f"{row}: {arm} - {baseline}"


def _has_interval(d: dict[str, float] | None) -> bool:
    return bool(d) and all(_finite(d.get(k)) for k in ("ci95_low", "ci95_high"))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def metric_word(d: dict[str, float] | None, *, higher_is_better: bool) -> str | None:
    """better / worse / no clear difference for one metric, or ``"no interval"`` (one
    repeat or fold) and None (no such metric).

    "better" only when the paired 95 % interval excludes 0 in the better direction and
    the mean difference is at least :data:`MIN_DIFF` (a difference that prints as
    ``+0.000`` is not one a reader can quote).
    """
    if not d:
        return None
    if not _has_interval(d):
        return "no interval"
    lo, hi, mean = d["ci95_low"], d["ci95_high"], d.get("mean_diff", 0.0)
    if not (lo > 0 or hi < 0) or abs(mean) < MIN_DIFF:
        return "no clear difference"
    up = lo > 0
    return "better" if up == higher_is_better else "worse"


def _word(auc: dict[str, float] | None, ll: dict[str, float] | None,
          ll_name: str = "log-loss") -> str:
    """The verdict against one baseline, naming the metric behind any claim.

    ``better`` / ``worse`` when every metric with an interval says so; ``mixed`` when
    one is better and the other worse; ``better on AUC only, log-loss no clear
    difference`` (and the like) when only one metric moves; ``no clear difference``;
    ``no interval`` with one repeat.
    """
    words = {name: w for name, w in (
        ("AUC", metric_word(auc, higher_is_better=True)),
        (ll_name, metric_word(ll, higher_is_better=False))) if w is not None}
    vals = set(words.values())
    if not vals or vals == {"no interval"}:
        return "no interval"
    if {"better", "worse"} <= vals:
        return "mixed"
    for claim in ("better", "worse"):
        if claim in vals:
            if vals == {claim}:
                return claim
            rest = ", ".join(f"{n} {w}" for n, w in words.items() if w != claim)
            on = " and ".join(n for n, w in words.items() if w == claim)
            return f"{claim} on {on} only ({rest})"
    return "no clear difference"


def verdicts(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per row of ``metrics["models"]`` (``lsm`` first, then each family).

    Each verdict has the row, its transfer arm, and per baseline (``target_only``,
    ``source_only``) the paired difference of AUC and of log-loss (mean and 95 %
    interval) with a word (see :func:`_word`: a claim names its metric, and rests on an
    interval that excludes 0). A production run (``--shots all``) has no paired
    baselines: its one verdict holds the delivered model's nested cross-validation skill
    with, on the same folds, the target-only figure where the run has one and the best
    source-only family.
    """
    if metrics.get("mode") == "production":
        return _production_verdicts(metrics)
    paired = metrics.get("paired") or {}
    out: list[dict[str, Any]] = []
    rows = sorted(metrics.get("models", {}), key=lambda r: r != "lsm")
    for row in rows:
        arm = _transfer_arm(row)
        if arm not in metrics["models"][row]:
            continue
        v: dict[str, Any] = {"row": row, "arm": arm, "vs": {},
                             "repeats": metrics.get("repeats")}
        for base in ("target_only", "source_only"):
            d = paired.get(_key(row, arm, base))
            if d is None:
                continue
            # the prior-corrected log-loss where the run has it (a test set whose landslide
            # share differs from the training rows'), as the paired lines show
            ll_key = "log_loss_prior_corrected" if "log_loss_prior_corrected" in d \
                else "log_loss"
            auc, ll = d.get("auc"), d.get(ll_key)
            v["vs"][base] = {"auc": auc, "log_loss": ll, "log_loss_metric": ll_key,
                             "word": _word(auc, ll, _ll_name(ll_key))}
        s = metrics["models"][row][arm]
        v["auc"] = s["auc"]["mean"]
        v["log_loss"] = s["log_loss"]["mean"]
        out.append(v)
    return out


def _ll_name(key: str | None) -> str:
    return "log-loss (prior-corr.)" if key == "log_loss_prior_corrected" else "log-loss"


def target_only_cv(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The target-only (plain fit on the target's points) cross-validation figure of a
    production run, on the delivered model's folds, when the run has one:
    ``{"family", "auc", "log_loss"}`` (means over the folds), else None.

    Read from ``metrics["production"]["target_only_cv"]`` or ``["fit_cv"]``: per family
    ``{"auc": {"mean", ...}, "log_loss": {...}}`` (or a ``summary`` holding them), with
    an optional ``"best"`` naming a family; without it the family of highest AUC.
    """
    prod = metrics.get("production") or {}
    block = next((prod[k] for k in ("target_only_cv", "fit_cv") if prod.get(k)), None)
    if not isinstance(block, dict):
        return None

    def figure(entry: Any) -> dict[str, float] | None:
        if not isinstance(entry, dict):
            return None
        entry = entry.get("summary", entry)
        auc, ll = entry.get("auc"), entry.get("log_loss")
        mean = lambda x: x.get("mean") if isinstance(x, dict) else x  # noqa: E731
        if not _finite(mean(auc)):
            return None
        return {"auc": float(mean(auc)),
                "log_loss": float(mean(ll)) if _finite(mean(ll)) else float("nan")}

    fams = {f: fig for f, e in block.items() if f != "best" and (fig := figure(e))}
    best = block.get("best")
    if isinstance(best, str) and best in fams:
        return {"family": best, **fams[best]}
    if isinstance(best, dict) and (fig := figure(best)):
        return {"family": str(best.get("family", "best")), **fig}
    if not fams:
        return None
    fam = max(fams, key=lambda f: fams[f]["auc"])
    return {"family": fam, **fams[fam]}


def _production_verdicts(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    models = metrics.get("models", {})
    s = (models.get("lsm") or {}).get("delivered")
    if not s:
        return []
    src = {f: a["source_only"] for f, a in models.items()
           if f != "lsm" and "source_only" in a}
    best_src = max(src, key=lambda f: src[f]["auc"]["mean"]) if src else None
    return [{"row": "lsm", "arm": "delivered", "vs": {}, "mode": "production",
             "split": metrics.get("split"), "auc": s["auc"]["mean"],
             "auc_std": s["auc"].get("std"), "log_loss": s["log_loss"]["mean"],
             "target_only_cv": target_only_cv(metrics),
             "source_only": None if best_src is None else {
                 "family": best_src, "auc": src[best_src]["auc"]["mean"],
                 "log_loss": src[best_src]["log_loss"]["mean"]}}]


def _diff(d: dict[str, float] | None, name: str) -> str:
    if not d:
        return ""
    if not _has_interval(d):  # one repeat: a difference, no interval
        return f"Δ{name} {d['mean_diff']:+.3f}"
    return (f"Δ{name} {d['mean_diff']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]")


def verdict_line(v: dict[str, Any]) -> str:
    """``lr (stage2): vs target_only better (ΔAUC ..., Δlog-loss ...); vs source_only ...``

    A production verdict (``--shots all``) puts the delivered model's nested-CV figure
    beside the target-only one on the same folds (or says the run has none).
    """
    what = "delivered" if v["row"] == "lsm" else f"{v['row']} stage2"
    if v.get("mode") == "production":
        return _production_line(v)
    if not v["vs"]:
        return (f"verdict {what}: AUC {v['auc']:.3f}, log-loss {v['log_loss']:.3f} "
                "(no paired baselines)")
    parts = []
    for base, d in v["vs"].items():
        ll_name = _ll_name(d.get("log_loss_metric"))
        diffs = ", ".join(x for x in (_diff(d["auc"], "AUC"), _diff(d["log_loss"], ll_name))
                          if x)
        # recomputed from the intervals: runs written before the words named their metric
        word = _word(d["auc"], d["log_loss"], ll_name)
        if word == "no interval":
            parts.append(f"vs {base} {diffs} (one repeat: no interval, no verdict)")
        else:
            parts.append(f"vs {base} {word} ({diffs})")
    return f"verdict {what}: " + "; ".join(parts)


def _production_line(v: dict[str, Any]) -> str:
    std = f" ± {v['auc_std']:.3f}" if _finite(v.get("auc_std")) else ""
    head = (f"delivered {v['auc']:.3f}{std} AUC, log-loss {v['log_loss']:.3f} by nested "
            f"{v.get('split') or 'cross-validation'}")
    t = v.get("target_only_cv")
    if t:
        gap = v["auc"] - t["auc"]
        who = (f"target-only fit ({t['family']}) {t['auc']:.3f} AUC, log-loss "
               f"{t['log_loss']:.3f} on the same folds")
        if abs(gap) < MIN_DIFF:
            tail = f"{who}: no difference"
        else:
            tail = (f"{who}: the delivered model is {'ahead' if gap > 0 else 'behind'} by "
                    f"{abs(gap):.3f} AUC (no interval: one set of folds)")
    else:
        tail = ("no target-only nested-CV figure on the same folds in this run, so whether "
                "the source helped is not measured")
    s = v.get("source_only")
    src = (f"; source only ({s['family']}, zero-shot, prior-shifted) {s['auc']:.3f} AUC"
           if s else "")
    return f"verdict (every labelled point, no test set): {head}; {tail}{src}"


def skill_check(metrics: dict[str, Any]) -> dict[str, Any]:
    """The best arm on the hold-out (or in cross-validation) and whether it is near chance.

    Returns ``{"best_row", "best_arm", "best_auc", "near_chance", "threshold",
    "message", "beaten"}``; ``message`` is None unless near chance; ``beaten`` names
    the best arm when it is not the delivered model (else None).
    """
    best = ("", "", float("-inf"))
    for row, arms in metrics.get("models", {}).items():
        for arm, s in arms.items():
            auc = s.get("auc", {}).get("mean")
            if auc is not None and auc == auc and auc > best[2]:
                best = (row, arm, float(auc))
    near = best[2] < NEAR_CHANCE_AUC
    msg = None
    if near:
        msg = (f"no arm ranks the target's test points much better than chance (best: "
               f"{best[0]} {best[1]}, AUC {best[2]:.3f} < {NEAR_CHANCE_AUC:.2f}): the transfer "
               "has no demonstrated skill here; the probability map is written for "
               "inspection, the zones are not (lsm predict --force-zones writes them)")
    return {"best_row": best[0], "best_arm": best[1], "best_auc": best[2],
            "near_chance": near, "threshold": NEAR_CHANCE_AUC, "message": msg,
            "beaten": beaten_by(metrics)}


def beaten_by(metrics: dict[str, Any]) -> str | None:
    """``"lr target_only 0.771 beat delivered 0.749 on this test set (AUC ...)"`` when an
    arm's mean AUC is ahead of the delivered model's at the printed precision, else None.

    Every arm is scored on the same test set (production: the same folds); the best of
    them is picked with that test set, so its lead is optimistic, but a reader must not
    take the delivered model for the best arm.
    """
    models = metrics.get("models", {})
    d = (models.get("lsm") or {}).get("delivered", {}).get("auc", {}).get("mean")
    if not _finite(d):
        return None
    cands = [(s["auc"]["mean"], row, arm) for row, arms in models.items()
             for arm, s in arms.items() if (row, arm) != ("lsm", "delivered")
             and _finite(s.get("auc", {}).get("mean"))]
    prod = metrics.get("mode") == "production"
    t = target_only_cv(metrics) if prod else None
    if t:
        cands.append((t["auc"], t["family"], "target-only fit"))
    if not cands:
        return None
    # on a tie a family's own arm, not the lsm row's copy of it
    auc, row, arm = max(cands, key=lambda c: (c[0], c[1] != "lsm"))
    if round(auc, 3) <= round(d, 3):
        return None
    name = f"{'lsm (family chosen on the shots)' if row == 'lsm' else row} {arm}"
    where = ("in the nested cross-validation (same folds)" if prod else
             f"on this test set (AUC, mean over {metrics.get('repeats', '?')} repeats)")
    return (f"{name} {auc:.3f} beat delivered {d:.3f} {where}; the best arm is picked "
            "with the data that scores it, so its lead is optimistic")
