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

from typing import Any

#: Below this hold-out AUC (the best arm's mean) a run is "near chance": a ranking that
#: puts a landslide above a non-landslide 60 % of the time is of little use for zoning.
NEAR_CHANCE_AUC = 0.60

def _transfer_arm(row: str) -> str:
    """The transfer arm of a row of ``metrics["models"]``: the delivered model for row
    ``lsm``, the fine-tuned (stage 2) model of every family."""
    return "delivered" if row == "lsm" else "stage2"


def _key(row: str, arm: str, baseline: str) -> str:
    return f"{row}: {arm} - {baseline}"


def _word(auc: dict[str, float] | None, ll: dict[str, float] | None) -> str:
    """better / worse / mixed / no clear difference, from the 95 % intervals."""
    better = worse = False
    if auc:
        better |= auc["ci95_low"] > 0
        worse |= auc["ci95_high"] < 0
    if ll:
        better |= ll["ci95_high"] < 0
        worse |= ll["ci95_low"] > 0
    if better and worse:
        return "mixed"
    return "better" if better else "worse" if worse else "no clear difference"


def verdicts(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per row of ``metrics["models"]`` (``lsm`` first, then each family).

    Each verdict has the row, its transfer arm, and per baseline (``target_only``,
    ``source_only``) the paired difference of AUC and of log-loss (mean and 95 %
    interval) with a word: better, worse, mixed or no clear difference. Rows without
    paired differences (a production run) get the arm's own cross-validated skill.
    """
    paired = metrics.get("paired") or {}
    out: list[dict[str, Any]] = []
    rows = sorted(metrics.get("models", {}), key=lambda r: r != "lsm")
    for row in rows:
        arm = _transfer_arm(row)
        if arm not in metrics["models"][row]:
            continue
        v: dict[str, Any] = {"row": row, "arm": arm, "vs": {}}
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
                             "word": _word(auc, ll)}
        s = metrics["models"][row][arm]
        v["auc"] = s["auc"]["mean"]
        v["log_loss"] = s["log_loss"]["mean"]
        out.append(v)
    return out


def _diff(d: dict[str, float] | None, name: str) -> str:
    if not d:
        return ""
    return (f"Δ{name} {d['mean_diff']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]")


def verdict_line(v: dict[str, Any]) -> str:
    """``lr (stage2): vs target_only better (ΔAUC ..., Δlog-loss ...); vs source_only ...``"""
    what = "delivered" if v["row"] == "lsm" else f"{v['row']} stage2"
    if not v["vs"]:
        return (f"verdict {what}: AUC {v['auc']:.3f}, log-loss {v['log_loss']:.3f} "
                "(no paired baselines in this mode)")
    parts = []
    for base, d in v["vs"].items():
        ll_name = "log-loss (prior-corr.)" if d.get("log_loss_metric") == \
            "log_loss_prior_corrected" else "log-loss"
        diffs = ", ".join(x for x in (_diff(d["auc"], "AUC"), _diff(d["log_loss"], ll_name))
                          if x)
        parts.append(f"vs {base} {d['word']} ({diffs})")
    return f"verdict {what}: " + "; ".join(parts)


def skill_check(metrics: dict[str, Any]) -> dict[str, Any]:
    """The best arm on the hold-out (or in cross-validation) and whether it is near chance.

    Returns ``{"best_row", "best_arm", "best_auc", "near_chance", "threshold",
    "message"}``; ``message`` is None unless near chance.
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
            "near_chance": near, "threshold": NEAR_CHANCE_AUC, "message": msg}
