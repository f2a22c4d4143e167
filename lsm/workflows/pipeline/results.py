"""The results of a pipeline: the tidy per-repeat table and its summary over repeats."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from lsm.io.artifacts import read_json
from lsm.workflows.pipeline.plan import Plan

METRIC_ORDER = ("auc", "log_loss", "brier", "accuracy")
ID_COLUMNS = ("study", "kind", "source", "target", "chain", "route", "norm", "fraction",
              "n_source", "family", "arm", "shots")


def collect_results(plan: Plan, state: Mapping[str, Any]) -> pd.DataFrame:
    """The tidy table: one row per study entry, family, arm and repeat (or CV fold).

    ``state`` holds each step's state (``status``, ``dir``) after the run.
    """
    rows: list[dict[str, Any]] = []
    n_source: dict[str, int | None] = {}
    for e in plan.entries:
        st = state[e.step]
        if st.status == "skipped":
            continue
        if e.root_fit not in n_source:
            fm = read_json(state[e.root_fit].dir / "metrics.json")
            n_source[e.root_fit] = int(fm.get("n", 0)) or None
        metrics = read_json(st.dir / "metrics.json")
        base = {"study": e.study, "kind": e.kind, "source": None, "target": None, "chain": None,
                "route": None, "norm": None, "fraction": np.nan,
                "n_source": n_source[e.root_fit], "shots": None, **e.context,
                "step": f"steps/{e.step}"}
        if e.context.get("route") == "source_cv":
            for fam, cv in metrics.get("cv", {}).items():
                for fold in cv.get("folds", []):
                    m = {k: v for k, v in fold.items() if k not in ("fold", "n")}
                    rows.append({**base, "family": fam, "arm": "source_cv",
                                 "repeat": int(fold["fold"]), **m})
            continue
        choices = metrics.get("delivered", {}).get("choices", [])
        for fam, arms in metrics["repeats_detail"].items():
            for arm, reps in arms.items():
                for r, m in enumerate(reps):
                    row = {**base, "family": fam, "arm": arm, "repeat": r, **m}
                    if arm == "delivered" and r < len(choices):
                        row["chosen"] = choices[r]["chosen"]
                    rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=[*ID_COLUMNS, "repeat", *METRIC_ORDER, "step"])
    metrics_cols = [m for m in METRIC_ORDER if m in df.columns]
    extra = sorted(set(df.columns) - set(ID_COLUMNS) - {"repeat", "step"} - set(metrics_cols))
    df = df[[*ID_COLUMNS, "repeat", *metrics_cols, *extra, "step"]]
    df["shots"] = df["shots"].astype("Int64")
    df["n_source"] = df["n_source"].astype("Int64")
    df["repeat"] = df["repeat"].astype("int64")
    df["fraction"] = df["fraction"].astype("float64")
    return df


def _metric_columns(df: pd.DataFrame) -> list[str]:
    skip = set(ID_COLUMNS) | {"repeat", "step"}
    return [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]


def summarize_results(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (population, as in metrics.json) and count of every metric per group."""
    if results.empty:
        return pd.DataFrame(columns=[*ID_COLUMNS, "n"])
    metrics = _metric_columns(results)
    g = results.groupby(list(ID_COLUMNS), dropna=False, sort=False)
    parts = {"n": g.size()}
    for m in metrics:
        parts[f"{m}_mean"] = g[m].mean()
        parts[f"{m}_std"] = g[m].std(ddof=0)
    out = pd.DataFrame(parts).reset_index()
    return out[[*ID_COLUMNS, *[c for m in metrics for c in (f"{m}_mean", f"{m}_std")], "n"]]
