"""Printed summaries (rich tables) of regions, fits and fine-tunes."""

from __future__ import annotations

from typing import Any

from lsm.workflows.region import RegionData


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e4 or (abs(v) < 1e-3 and v != 0):
            return f"{v:.3g}"
        return f"{v:.{nd}f}"
    return str(v)


def print_region_summary(data: RegionData, console: Any) -> None:
    """Grid, factors with statistics, and sample counts of a region."""
    from rich.table import Table

    spec = data.spec
    console.print(f"[bold]{spec.name}[/]  ({'table' if spec.is_table else 'raster'} region"
                  f"{', ' + str(spec.source_file) if spec.source_file else ''})")
    if data.stack is not None:
        from lsm.stack.build import stack_grid

        ds = data.stack
        chunks = ds[next(iter(ds.data_vars))].data.chunksize
        console.print(f"grid: {stack_grid(ds).describe()}; dask chunks {chunks}")
    elif {"x", "y"} <= set(data.table.columns):
        t = data.table
        console.print(f"points in {t.attrs.get('crs') or 'an unstated CRS'}, extent "
                      f"({t.x.min():.1f}, {t.y.min():.1f}, {t.x.max():.1f}, {t.y.max():.1f})")
    else:
        console.print("no coordinates (slope units or similar): folds and hold-outs are random")
    t = Table("factor", "kind", "count", "mean", "std", "min", "median", "max", "categories",
              title="factors (statistics over the whole " +
              ("table" if spec.is_table else "stack") + ")")
    for f, kind in data.kinds.items():
        s = data.stats["factors"].get(f, {})
        if kind == "categorical":
            freq = s.get("frequencies", {})
            cats = ", ".join(f"{k} {v:.0%}" for k, v in list(freq.items())[:6])
            t.add_row(f, kind, str(s.get("count", 0)), "", "", "", "", "", cats)
        elif kind == "circular":
            t.add_row(f, kind, str(s.get("count", 0)), "", "", "", "", "",
                      f"flat/missing {s.get('flat_share', 0):.1%}")
        else:
            q = s.get("quantiles", {})
            t.add_row(f, kind, str(s.get("count", 0)), _fmt(s.get("mean")), _fmt(s.get("std")),
                      _fmt(s.get("min")), _fmt(q.get("q50")), _fmt(s.get("max")), "")
    console.print(t)
    tab = data.table
    n1 = int((tab["label"] == 1).sum())
    console.print(f"samples: {len(tab)} points: {n1} landslides, {len(tab) - n1} "
                  f"non-landslides; {tab['fold'].nunique()} {data.split} folds "
                  f"(sizes {', '.join(str(v) for v in tab['fold'].value_counts().sort_index())})")
    for n in data.notes:
        console.print(f"note: {n}")


def print_fit_metrics(metrics: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    cv = metrics.get("cv", {})
    if not cv:
        console.print("cross-validation skipped")
        return
    t = Table("model", "AUC", "log-loss", "Brier", "accuracy",
              title=f"{metrics['region']}: {metrics['n_folds']}-fold {metrics['split']} "
              f"cross-validation, {metrics['n']} points (mean ± std)")
    for fam, r in cv.items():
        s = r["summary"]
        t.add_row(fam, *(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"
                         for k in ("auc", "log_loss", "brier", "accuracy")))
    console.print(t)
    for w in metrics.get("warnings", []):
        console.print(f"[bold red]warning:[/] {w}", soft_wrap=True)


def print_finetune_metrics(metrics: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    models = metrics["models"]
    extra = "log_loss_prior_corrected" if any(
        "log_loss_prior_corrected" in s for a in models.values() for s in a.values()) else None
    cols = ["model", "arm", "AUC", "log-loss"] + (["log-loss (prior-corr.)"] if extra else []) \
        + ["Brier", "accuracy"]
    # one repeat: a value, no spread (a ± 0.000 would read as certainty)
    one = metrics.get("mode") != "production" and metrics.get("repeats") == 1
    if metrics.get("mode") == "production":
        title = (f"{metrics['source_region']} -> {metrics['target']}: every labelled point "
                 f"({metrics['n']}, {metrics['n_landslides']} landslides); skill by "
                 f"{metrics['split']} (mean ± std over folds)")
    else:
        title = (f"{metrics['source_region']} -> {metrics['target']}: K = {metrics['shots']} "
                 f"shots, {metrics['repeats']} repeat{'' if one else 's'}, test "
                 f"{metrics['test_size']} points "
                 f"({metrics['split']} hold-out), norm {metrics['norm']} (mean ± std)")
    t = Table(*cols, title=title.replace(" (mean ± std)", "") if one else title)
    for fam, arms in models.items():
        best_auc = max(arms, key=lambda a: arms[a]["auc"]["mean"])
        best_ll = min(arms, key=lambda a: arms[a]["log_loss"]["mean"])
        names = list(arms)
        for arm, s in arms.items():
            def cell(k: str, best: str | None = None, s: dict = s, arm: str = arm) -> str:
                if k not in s:
                    return ""
                txt = f"{s[k]['mean']:.3f}" if one else f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}"
                return f"[bold green]{txt}[/]" if best == arm else txt
            row = [fam if arm == names[0] else "", arm, cell("auc", best_auc),
                   cell("log_loss", best_ll)]
            if extra:
                row.append(cell(extra))
            row += [cell("brier"), cell("accuracy")]
            t.add_row(*row, end_section=arm == names[-1])
    console.print(t)
    from lsm.workflows.finetune import print_transfer_vs_fit

    print_transfer_vs_fit(metrics, console)
    delivered = metrics.get("delivered", {})
    for key, d in metrics.get("paired", {}).items():
        if not key.startswith("lsm:"):
            continue
        a, ll = d.get("auc"), d.get(extra or "log_loss")
        if a and ll:
            if one:
                console.print(f"paired {key} (one repeat, no interval): AUC "
                              f"{a['mean_diff']:+.3f}; {'prior-corr. ' if extra else ''}"
                              f"log-loss {ll['mean_diff']:+.3f}")
                continue
            console.print(f"paired {key}: AUC {a['mean_diff']:+.3f} [{a['ci95_low']:+.3f}, "
                          f"{a['ci95_high']:+.3f}], wins {a['win_rate']:.0%}; "
                          f"{'prior-corr. ' if extra else ''}log-loss {ll['mean_diff']:+.3f} "
                          f"[{ll['ci95_low']:+.3f}, {ll['ci95_high']:+.3f}]")
    from lsm.workflows.verdict import beaten_by, skill_check, verdict_line, verdicts

    # recomputed from the metrics: the lines of runs written before them say the same
    for v in verdicts(metrics):
        console.print(verdict_line(v), soft_wrap=True, markup=False)
    beaten = beaten_by(metrics)
    if beaten:
        console.print(f"best arm: {beaten}", soft_wrap=True, markup=False)
    skill = metrics.get("skill") or skill_check(metrics)
    if skill.get("near_chance"):
        console.print(f"[bold red]warning:[/] {skill['message']}", soft_wrap=True)
    counts = delivered.get("chosen_counts")
    if counts:
        console.print("delivered strategy per " + ("fold" if metrics.get("mode") ==
                      "production" else "repeat") + ": "
                      + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    mm = delivered.get("map_model")
    if mm:
        hold = mm.get("holdout")
        console.print(f"map model: {mm['chosen']} trained on {mm['trained_on']} "
                      f"({mm['n']} points)" + (f"; hold-out AUC {hold['auc']:.3f}, log-loss "
                                                f"{hold['log_loss']:.3f}" if hold else ""))
    for n in metrics.get("notes", []):
        console.print(f"note: {n}")
    secs = ", ".join(f"{f} {v:.2f}s" for f, v in metrics.get("seconds_per_repeat", {}).items())
    if secs:
        console.print(f"time per repeat: {secs}")


def zone_table(records: list[dict[str, Any]], rates: dict[str, Any] | None, *,
               units: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a zone table, the same on the console and in the report.

    The landslide columns say what they measure (``rates``: :func:`lsm.workflows.predict.
    zone_rates`): held-out landslides (a prediction rate, the skill) first, and every
    landslide, training ones included, labelled as a success rate.
    """
    area = "units" if units else "area"
    basis = (rates or {}).get("basis")

    def cnt(z: dict[str, Any], n: str, share: str) -> str:
        v = z.get(share)
        return f"{z[n]} ({v:.1%})" if isinstance(v, float) and v == v else f"{z[n]}"

    def ratio(z: dict[str, Any], key: str) -> str:
        v = z.get(key)
        return f"{v:.2f}" if isinstance(v, float) and v == v else "-"

    if basis == "prediction" and (rates or {}).get("n_seen"):
        head = ["zone", area, "held-out landslides (prediction rate)", "density ratio",
                "all landslides (success rate)", "density ratio (all)"]
        rows = [[z["name"], f"{z['area_share']:.1%}", cnt(z, "n_heldout", "heldout_share"),
                 ratio(z, "heldout_density_ratio"), cnt(z, "n_landslides", "landslide_share"),
                 ratio(z, "density_ratio")] for z in records]
        return head, rows
    what = {"prediction": "held-out landslides (prediction rate)",
            "success": "landslides trained on (success rate)"}.get(
        str(basis), "landslides (seen and held-out not told apart)")
    head = ["zone", area, what, "density ratio"]
    rows = [[z["name"], f"{z['area_share']:.1%}", cnt(z, "n_landslides", "landslide_share"),
             ratio(z, "density_ratio")] for z in records]
    return head, rows
