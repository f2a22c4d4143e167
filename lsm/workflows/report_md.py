"""``report.md`` (and ``report.html``): a run explained top to bottom for a planner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lsm.io.artifacts import atomic_write_bytes, read_json
from lsm.workflows.runs import Run


def _rel(path: str | Path, base: Path) -> str:
    return os.path.relpath(Path(path), base)


def _m(s: dict[str, float], one: bool = False) -> str:
    """``mean ± std``; with ``one`` (a single repeat) the value alone: no spread."""
    return f"{s['mean']:.3f}" if one else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _pd(d: dict[str, float]) -> str:
    if not all(isinstance(d.get(k), float) and d[k] == d[k] for k in ("ci95_low",
                                                                         "ci95_high")):
        return f"{d['mean_diff']:+.3f} (one repeat: no interval)"
    return (f"{d['mean_diff']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}], "
            f"wins {d['win_rate']:.0%}, Wilcoxon p = {d['wilcoxon_p']:.2g}")


def _verdict_section(metrics: dict[str, Any]) -> list[str]:
    """One verdict line per family (transfer vs each baseline), the best arm when it is
    not the delivered model, and the skill warning."""
    from lsm.workflows.verdict import beaten_by, skill_check, verdict_line, verdicts

    if metrics.get("mode") == "production":
        L = ["**Verdict** (no test set: every labelled point trains the delivered model; "
             "skill by nested cross-validation, with the target-only figure on the same "
             "folds where the run has one):", ""]
    elif metrics.get("repeats") == 1:
        L = ["**Verdict** (paired differences on the same test set; one repeat, so no "
             "intervals and no verdict words):", ""]
    else:
        L = ["**Verdict** (paired differences on the same test set, 95 % intervals; "
             "for log-loss lower is better; 'better' only where the interval of the metric "
             "named excludes 0):", ""]
    L += [f"- {verdict_line(v)[len('verdict '):]}" for v in verdicts(metrics)]
    beaten = beaten_by(metrics)
    if beaten:
        L += ["", f"**Best arm:** {beaten}."]
    skill = metrics.get("skill") or skill_check(metrics)
    if skill.get("near_chance"):
        L += ["", f"> **Warning:** {skill['message']}."]
    return [*L, ""]


def map_provenance(meta: dict[str, Any], metrics: dict[str, Any], family: str) -> str:
    """Which arm, repeat and shots made the model behind a map."""
    if meta.get("kind") == "fit":
        n_fam = len(metrics.get("cv", {}))
        chosen = (f" Unless `--model` named it, the family was chosen by the highest "
                  f"spatial-CV AUC of {n_fam}: the same cross-validation that reports its "
                  "skill, so that AUC is the best of several and slightly optimistic."
                  if n_fam > 1 else "")
        return (f"`{family}` fitted on all {metrics.get('n', '?')} sample points of the "
                f"source region (the final fit after cross-validation).{chosen}")
    mm = (metrics.get("delivered") or {}).get("map_model") or {}
    if family == "delivered" and mm:
        return (f"arm `delivered`, strategy `{mm['chosen']}`, re-fitted on {mm['trained_on']}"
                f" ({mm['n']} points, {mm['n_landslides']} landslides), not on the shots of "
                "any one repeat; chosen by cross-validation on those points, never with the "
                "hold-out.")
    if metrics.get("mode") == "production":
        return f"`{family}` fine-tuned (stage 2) on every labelled target point."
    k = metrics.get("shots")
    return (f"`{family}`, arm `stage2` (fine-tuned, anchored at the source) of repeat 1 of "
            f"{metrics.get('repeats')}: its {k} landslide + {k} non-landslide shots "
            "(`training_table.parquet`).")


def _delivered_section(metrics: dict[str, Any]) -> list[str]:
    """Which model the run delivers, how it was chosen, and the paired comparisons."""
    d = metrics.get("delivered")
    if not d:
        return []
    L = ["", "### The delivered model", ""]
    mm = d.get("map_model", {})
    if mm:
        L.append(f"- Map model: strategy `{mm['chosen']}`, trained on {mm['trained_on']} "
                 f"({mm['n']} points, {mm['n_landslides']} landslides). Chosen by "
                 f"{mm['folds']} cross-validation on those points: {mm['rule']}.")
        if mm.get("holdout"):
            h = mm["holdout"]
            L.append(f"- Map model on the hold-out (never used to train or choose it): AUC "
                     f"{h['auc']:.3f}, log-loss {h['log_loss']:.3f}.")
    L.append(f"- How: {d['how']}")
    counts = d.get("chosen_counts", {})
    if counts:
        per = "fold" if metrics.get("mode") == "production" else "repeat"
        L.append(f"- Strategy chosen per {per}: "
                 + ", ".join(f"`{k}` x{v}" for k, v in counts.items()) + ".")
    rel = metrics.get("factor_relations") or {}
    if rel:
        L += ["", "Each factor's relation to landslides (logistic slope on the standardised "
              "factor) in the source's training table and in the target's labelled points; "
              "opposite signs, each clearly non-zero, are flagged: the factor may mean "
              "something else in the target (units, sign convention).", "",
              "| factor | source slope | target slope (± SE) | flag |", "|---|---:|---:|---|"]
        for c, r in rel.items():
            se = f" ± {r['target_se']:.2f}" if r.get("target_se") is not None else ""
            L.append(f"| {c} | {r['source_slope']:+.2f} | {r['target_slope']:+.2f}{se} | "
                     f"{'**disagrees**' if r['disagree'] else ''} |")
    paired = metrics.get("paired", {})
    if paired:
        L += ["", "Paired comparisons (same shots, same test set; mean difference over "
              "repeats [95 % interval], share of repeats won, Wilcoxon signed-rank p):", "",
              "| comparison | AUC | log-loss | log-loss (prior-corrected) |", "|---|---|---|---|"]
        for key, v in paired.items():
            cells = [_pd(v[m]) if m in v else "" for m in
                     ("auc", "log_loss", "log_loss_prior_corrected")]
            L.append(f"| {key} | " + " | ".join(cells) + " |")
        L.append("")
        L.append("For log-loss a negative difference is better; 'wins' counts the repeats "
                 "where the first arm is better (higher AUC, lower log-loss).")
    return L


def write_report(run: Run, outputs: dict[str, Any], *, to: Path | None = None) -> Path:
    """Write ``report.md`` and ``report.html`` into the run folder (or the staging folder
    ``to`` of a set committed with them); return the md path in the run folder."""
    meta = run.meta
    metrics = read_json(run.path / "metrics.json")
    base = run.path
    L: list[str] = []
    kind = meta["kind"]
    chain = " -> ".join(meta.get("chain", [run.region]))
    L.append(f"# Landslide susceptibility: {run.region}")
    L.append("")
    L.append(f"*{'Source models pretrained' if kind == 'fit' else 'Models transferred'} "
             f"({chain}), created {meta['created']} with lsm {meta['versions'].get('lsm', '?')}.*")
    L.append("")
    L.append("## Data")
    L.append("")
    if kind == "fit":
        L.append(f"- Region `{run.region}` (spec `{meta.get('spec_file')}`): {metrics['n']} "
                 f"sample points, {metrics['n_landslides']} landslides.")
        L.append(f"- Validation: {metrics['n_folds']}-fold {metrics['split']} cross-validation.")
    elif metrics.get("mode") == "production":
        L.append(f"- Source run `{meta.get('source_run')}` (region `{metrics['source_region']}`);"
                 f" target `{metrics['target']}` (spec `{meta.get('spec_file')}`).")
        L.append(f"- Production run (`--shots all`): the delivered model is trained on every "
                 f"labelled target point ({metrics['n']}, {metrics['n_landslides']} "
                 "landslides); there is no separate test set.")
        L.append(f"- Skill: {metrics['delivered']['skill']}.")
    else:
        L.append(f"- Source run `{meta.get('source_run')}` (region `{metrics['source_region']}`);"
                 f" target `{metrics['target']}` (spec `{meta.get('spec_file')}`).")
        L.append(f"- K = {metrics['shots']} landslide + {metrics['shots']} non-landslide shots "
                 f"per repeat, {metrics['repeats']} repeats, from a pool of "
                 f"{metrics['pool_size']} points.")
        L.append(f"- Test set: {metrics['test_size']} points ({metrics['test_landslides']} "
                 f"landslides), {metrics['split']} hold-out, the same for every arm and repeat.")
    L.append(f"- Factors ({len(run.schema.factors)}): {', '.join(run.schema.factors)}.")
    norm_text = {"target": "each region standardised with its own statistics",
                 "source": "every region standardised with the source region's statistics",
                 "none": "raw factor values"}.get(run.norm, "")
    L.append(f"- Normalisation: `{run.norm}` ({norm_text}).")
    for n in meta.get("notes", []):
        L.append(f"- Note: {n}")
    if meta.get("checksums"):
        L.append("- Data files (sha256):")
        for k, v in meta["checksums"].items():
            L.append(f"  - `{k}`: `{v[:16]}...`" if v else f"  - `{k}`")
    L.append("")
    L.append("## Model performance")
    L.append("")
    if metrics.get("skill_caveat"):
        L.append(f"**Caveat:** {metrics['skill_caveat']['text']}.")
        L.append("")
    if kind == "fit":
        L.append("| model | AUC | log-loss | Brier | accuracy |")
        L.append("|---|---|---|---|---|")
        for fam, r in metrics.get("cv", {}).items():
            s = r["summary"]
            L.append(f"| {fam} | {_m(s['auc'])} | {_m(s['log_loss'])} | {_m(s['brier'])} | "
                     f"{_m(s['accuracy'])} |")
        L.append("")
        L.append("Mean ± std over the spatial folds; out-of-fold predictions.")
    else:
        L += _verdict_section(metrics)
        L.append("| model | arm | AUC | log-loss | Brier | accuracy |")
        L.append("|---|---|---|---|---|---|")
        one = metrics.get("mode") != "production" and metrics.get("repeats") == 1
        for fam, arms in metrics["models"].items():
            for arm, s in arms.items():
                L.append(f"| {fam} | {arm} | {_m(s['auc'], one)} | {_m(s['log_loss'], one)} | "
                         f"{_m(s['brier'], one)} | {_m(s['accuracy'], one)} |")
        L.append("")
        if metrics.get("mode") == "production":
            L.append("Mean ± std over the cross-validation folds. Row `lsm`, `delivered`: the "
                     "whole delivery procedure (choice of strategy included) run on each "
                     "fold's training part and scored on the fold; `source_only`: each source "
                     "model zero-shot, prior-shifted to the target's landslide share.")
        else:
            L.append("`source_only`: the source model zero-shot; `target_only`: trained on the "
                     "shots alone; `stage1`: source head re-estimated on the shots; `stage2`: "
                     "stage 1 fine-tuned as a whole, anchored at the source. "
                     + ("One repeat: single values, no spread. " if one else
                        "Mean ± std over repeats. ")
                     + "Row `lsm`: `delivered` is what this run delivers; its `source_only`"
                     " and `target_only` are the baselines a user would pick "
                     "without the test set (family chosen on the shots).")
        L += _delivered_section(metrics)
        from lsm.workflows.finetune import transfer_vs_fit_lines

        L += transfer_vs_fit_lines(metrics)
    L.append("")
    figs = outputs.get("figures", {})
    for key, title in (("roc", "ROC curves"), ("reliability", "Calibration"),
                       ("arms", "Transfer arms"), ("rates", "Success / prediction rate")):
        if key in figs:
            L.append(f"![{title}]({_rel(figs[key], base)})")
            L.append("")
    for maps in outputs.get("maps", []):
        units = maps.get("kind") == "units"
        thresholds = (f"thresholds {', '.join(f'{t:.3f}' for t in maps['thresholds'])} "
                      f"({maps['zone_method']})")
        if units:
            L.append(f"## Susceptibility per unit ({maps['family']})")
            L.append("")
            zone = (f"; **zones withheld:** {maps['zones_withheld']}"
                    if maps.get("zones_withheld") else f"; zone {thresholds}")
            L.append(f"- {maps['n_units']} units: probability and zone per unit in "
                     + ", ".join(f"`{_rel(maps[k], base)}`" for k in ("table", "csv", "gpkg")
                                 if k in maps) + f"{zone}.")
        else:
            L.append(f"## Susceptibility map ({maps['family']})")
            L.append("")
            L.append(f"- Probability (Cloud-Optimized GeoTIFF): "
                     f"`{_rel(maps['probability'], base)}`")
            if maps.get("zones_withheld"):
                L.append(f"- **Zones withheld:** {maps['zones_withheld']}.")
            else:
                L.append(f"- Zones (paletted GeoTIFF, opens styled in QGIS): "
                         f"`{_rel(maps['zones'], base)}`; {thresholds}.")
        L.append(f"- Model: {map_provenance(meta, metrics, maps['family'])}")
        if maps.get("base_rate"):
            L.append(f"- Base rate: {maps['base_rate']['text']}.")
        elif maps.get("prevalence"):
            L.append(f"- Probabilities corrected to a landslide prevalence of "
                     f"{maps['prevalence']:.3%}.")
        if maps.get("uncertainty_replicates"):
            where = ("column `uncertainty`" if units else
                     f"`{_rel(maps['uncertainty'], base)}` (COG)")
            L.append(f"- Uncertainty: {maps['uncertainty_what']}, in {where}; median "
                     f"{maps['uncertainty_median']:.3f}, 95th percentile "
                     f"{maps['uncertainty_p95']:.3f}. It is the sampling spread of the fit "
                     "given its training rows, not the error of the map.")
        L.append("")
        if not units:
            L.append(f"![probability]({_rel(maps['probability_png'], base)})")
            if maps.get("zones_png"):
                L.append(f"![zones]({_rel(maps['zones_png'], base)})")
            if maps.get("uncertainty_png"):
                L.append(f"![uncertainty]({_rel(maps['uncertainty_png'], base)})")
            L.append("")
        if maps["zone_statistics"]:
            from lsm.workflows.report import zone_table

            rates = maps.get("zone_rates") or {}
            head, rows = zone_table(maps["zone_statistics"], rates, units=units)
            if rates.get("text"):
                L += [f"Zone table: {rates['text']}.", ""]
            L.append("| " + " | ".join(head) + " |")
            L.append("|" + "---|" * len(head))
            L += ["| " + " | ".join(r) + " |" for r in rows]
            L.append("")
        if "rates" in maps:
            L.append(f"![rate curves]({_rel(maps['rates'], base)})")
            L.append("")
    exp = outputs.get("explain", {})
    if exp:
        L.append("## What drives the models (SHAP)")
        L.append("")
        for fam, e in exp.items():
            top = sorted(e["importance"].items(), key=lambda kv: -kv[1])[:5]
            L.append(f"- **{fam}**: " + ", ".join(f"{k} ({v:.3f})" for k, v in top))
        L.append("")
        for fam, e in exp.items():
            L.append(f"![{fam} importance]({_rel(e['bar'], base)}) "
                     f"![{fam} beeswarm]({_rel(e['beeswarm'], base)})")
            if "shift" in e:
                L.append(f"![{fam} shift]({_rel(e['shift'], base)})")
            L.append("")
    L.append("## Reproduce")
    L.append("")
    L.append("```bash")
    L.append(meta.get("command") or "# command not recorded")
    L.append("```")
    L.append("")
    text = "\n".join(L)
    folder = Path(to) if to is not None else run.path
    atomic_write_bytes(folder / "report.md", text.encode("utf-8"))
    atomic_write_bytes(folder / "report.html", _html(text, run.region).encode("utf-8"))
    return run.path / "report.md"


def _html(md_text: str, title: str) -> str:
    """A small self-contained HTML rendering (markdown-it, which rich ships with)."""
    try:
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark").enable("table").render(md_text)
    except ImportError:  # pragma: no cover
        import html

        body = f"<pre>{html.escape(md_text)}</pre>"
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
             "img{max-width:48%;vertical-align:top}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")
