"""Checks of the values in a run's ``model.json`` (and of its models against it).

:func:`lsm.workflows.runs.load_run` calls :func:`check_run_meta` on every run it reads
and :func:`check_run_models` on the models it loaded: every value a later step uses
(kind, schema, normalisation and its statistics, prevalences, seed, shots, the
delivered model's name) must be of the right type, finite and in range, and every
model's inputs must be the schema's columns.  The manifest's checksums catch plain
tampering; these checks catch a file rewritten with its checksums recomputed, or
written by a faulty program, with one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsm.errors import ArtifactError
from lsm.io import values as v
from lsm.stack.features import NORMS, FeatureSchema

KINDS = ("continuous", "categorical", "circular")
RUN_KINDS = ("fit", "finetune")
#: Entries of a percentile table (levels 0, 1, ..., 100 %).
N_PERCENTILES = 101


def check_run_meta(meta: dict[str, Any], path: Path) -> FeatureSchema:
    """Raise :class:`ArtifactError` unless ``meta`` (``path``'s content) is a valid run
    description; return its feature schema."""
    w = str(path)
    kind = meta.get("kind")
    if kind not in RUN_KINDS:
        raise v.fail(f"{w}: kind", f"{kind!r} is not one of {', '.join(RUN_KINDS)}")
    fams = v.sequence(meta.get("families"), f"{w}: families", of=str, nonempty=True)
    v.unique_names(fams, f"{w}: families")
    model_dir = Path(path).parent / "model"
    for f in fams:
        if not (model_dir / f).is_dir():
            raise v.fail(f"{w}: families", f"{f!r} has no model folder model/{f} in the run")
    if model_dir.is_dir():
        # a folder emptied by a commit that moved the previous run's files aside is no model
        extra = sorted(d.name for d in model_dir.iterdir() if d.is_dir() and d.name not in fams
                       and any(p.is_file() for p in d.rglob("*")))
        if extra:
            raise v.fail(f"{w}: families", f"{fams} do not name the run's model folder "
                                           f"model/{extra[0]}")
    schema = check_schema(meta.get("schema"), f"{w}: schema")
    norm = meta.get("norm")
    if norm not in NORMS:
        raise v.fail(f"{w}: norm", f"{norm!r} is not one of {', '.join(NORMS)}")
    check_stats(meta.get("stats"), f"{w}: stats", schema, quantile=norm == "quantile")
    if "source_stats" in meta:  # the source's factors: a plain fit on the target may add some
        check_stats(meta["source_stats"], f"{w}: source_stats", schema,
                    quantile=norm == "quantile", partial=True)
    if meta.get("region_stats") is not None:
        for name, st in v.mapping(meta["region_stats"], f"{w}: region_stats").items():
            check_stats(st, f"{w}: region_stats.{name}", schema, quantile=norm == "quantile")
    if "training_prevalence" in meta:
        v.probability(meta["training_prevalence"], f"{w}: training_prevalence")
    if meta.get("prevalence") is not None:
        v.probability(meta["prevalence"], f"{w}: prevalence")
    if "seed" in meta:
        v.number(meta["seed"], f"{w}: seed", lo=0, hi=2**32 - 1, integer=True)
    if "shots" in meta and meta["shots"] != "all":
        v.number(meta["shots"], f"{w}: shots", lo=1, integer=True)
    if "region" in meta:
        v.text(meta["region"], f"{w}: region")
    if "chain" in meta:
        v.sequence(meta["chain"], f"{w}: chain", of=str, nonempty=True)
    v.text(meta.get("spec"), f"{w}: spec")  # the region spec the run was trained on
    for key in ("spec_file", "source_run", "split"):
        if meta.get(key) is not None:
            v.text(meta[key], f"{w}: {key}")
    if meta.get("specs") is not None:
        for name, text in v.mapping(meta["specs"], f"{w}: specs").items():
            v.text(text, f"{w}: specs.{name}")
    if meta.get("delivered") is not None:
        d = v.text(meta["delivered"], f"{w}: delivered")
        if d not in fams:
            raise v.fail(f"{w}: delivered", f"{d!r} is not one of the run's families {fams}")
    for key in ("test_predictions", "delivered_fit", "source_models"):
        if meta.get(key) is not None:
            info = v.mapping(meta[key], f"{w}: {key}")
            for sub in ("file", "rows", "sha256", "folder"):
                if sub in info:
                    v.text(info[sub], f"{w}: {key}.{sub}")
    fit = meta.get("delivered_fit")
    if isinstance(fit, dict) and fit.get("prevalence") is not None:
        v.probability(fit["prevalence"], f"{w}: delivered_fit.prevalence")
    return schema


def check_schema(raw: Any, where: str) -> FeatureSchema:
    """A :class:`FeatureSchema` from its dict, every part checked."""
    d = v.mapping(raw, where)
    factors = v.sequence(d.get("factors"), f"{where}.factors", of=str, nonempty=True)
    v.unique_names(factors, f"{where}.factors")
    kinds = v.mapping(d.get("kinds"), f"{where}.kinds")
    cats = v.mapping(d.get("categories", {}), f"{where}.categories")
    for f in factors:
        k = kinds.get(f)
        if k not in KINDS:
            raise v.fail(f"{where}.kinds.{f}", f"{k!r} is not one of {', '.join(KINDS)}")
        if k == "categorical":
            c = v.sequence(cats.get(f), f"{where}.categories.{f}", of=str, nonempty=True)
            v.unique_names(c, f"{where}.categories.{f}")
    return FeatureSchema.from_dict(d)


def check_stats(raw: Any, where: str, schema: FeatureSchema, *, quantile: bool = False,
                partial: bool = False) -> None:
    """Statistics of a region (:mod:`lsm.stack.stats`) for every factor of ``schema``
    (``partial``: for those of its factors that the statistics list)."""
    st = v.mapping(raw, where)
    if "n" in st:
        v.number(st["n"], f"{where}.n", lo=0, integer=True)
    per = v.mapping(st.get("factors"), f"{where}.factors")
    for f in schema.factors:
        if partial and f not in per:
            continue
        kind = schema.kinds[f]
        fw = f"{where}.factors.{f}"
        fs = v.mapping(per.get(f), fw)
        count = v.number(fs.get("count"), f"{fw}.count", lo=0, integer=True)
        if kind == "continuous":
            if count == 0 and "mean" not in fs:
                continue
            mean = v.number(fs.get("mean"), f"{fw}.mean")
            std = v.number(fs.get("std"), f"{fw}.std", lo=0.0)
            lo = v.number(fs.get("min"), f"{fw}.min")
            hi = v.number(fs.get("max"), f"{fw}.max")
            if lo > hi:
                raise v.fail(f"{fw}.min", f"{lo!r} is above max {hi!r}")
            tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
            if not lo - tol <= mean <= hi + tol:
                raise v.fail(f"{fw}.mean", f"{mean!r} is outside [min, max] = [{lo}, {hi}]")
            # no values within [min, max] spread more than half the range
            if std > (hi - lo) / 2 + tol:
                raise v.fail(f"{fw}.std", f"{std!r} is more than half of max - min "
                                          f"({hi - lo!r})")
            if "quantiles" in fs:
                for q, x in v.mapping(fs["quantiles"], f"{fw}.quantiles").items():
                    v.number(x, f"{fw}.quantiles.{q}", lo=lo - tol, hi=hi + tol)
            if "percentiles" in fs or quantile:
                pct = v.sequence(fs.get("percentiles"), f"{fw}.percentiles",
                                 length=N_PERCENTILES)
                arr = v.finite_array(pct, f"{fw}.percentiles", kind="fiu")
                if (arr[1:] < arr[:-1]).any():
                    raise v.fail(f"{fw}.percentiles", "not in increasing order")
                if arr[0] < lo - tol or arr[-1] > hi + tol:
                    raise v.fail(f"{fw}.percentiles", f"[{arr[0]}, ..., {arr[-1]}] leave "
                                                      f"[min, max] = [{lo}, {hi}]")
        elif kind == "categorical":
            for c, x in v.mapping(fs.get("frequencies", {}), f"{fw}.frequencies").items():
                v.number(x, f"{fw}.frequencies.{c}", lo=0.0, hi=1.0)
        else:
            if "flat_share" in fs:
                v.number(fs["flat_share"], f"{fw}.flat_share", lo=0.0, hi=1.0)
            for key in ("mean_sin", "mean_cos"):
                if key in fs:
                    v.number(fs[key], f"{fw}.{key}", lo=-1.0, hi=1.0)


def check_run_models(path: Path, schema: FeatureSchema, models: dict[str, Any]) -> None:
    """Every model of a run takes the schema's columns, in order: a model folder swapped
    in from a run on other factors is named together with ``model.json``."""
    columns = schema.columns
    for fam, model in models.items():
        names = getattr(model, "feature_names_in_", None)
        meta = Path(path) / "model" / fam / "meta.json"
        if names is not None and [str(n) for n in names] != columns:
            got = [str(n) for n in names]
            diff = sorted(set(got) ^ set(columns))[:3] or ["(same names, other order)"]
            raise ArtifactError(f"{meta}: input features {_short(got)} differ from the "
                                f"schema in {Path(path) / 'model.json'} {_short(columns)} "
                                f"(e.g. {', '.join(diff)}); the model is from another run")
        n = getattr(model, "n_features_in_", len(columns))
        if n != len(columns):
            raise ArtifactError(f"{meta}: {n} input features, {Path(path) / 'model.json'}'s "
                                f"schema has {len(columns)}; the model is from another run")


def _short(names: list[str]) -> str:
    return str(names) if len(names) <= 4 else f"[{', '.join(names[:3])}, ... ({len(names)})]"
