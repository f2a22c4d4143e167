"""Run folders: what ``fit`` and ``finetune`` write, and how a later step reads them.

Layout of a run folder::

    model.json            feature schema, normalisation + statistics, seed, versions,
                          data checksums, the chain of regions
    model/<family>/       one artifact folder per model family (with manifest.json)
    metrics.json          cross-validation (fit) or four-arm comparison (finetune)
    training_table.parquet
    report.md, figures/, maps/   (written by the mapping and report steps)
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from lsm.config.spec import check_name
from lsm.errors import ArtifactError
from lsm.io.artifacts import read_json, write_json
from lsm.stack.features import FeatureSchema

MODEL_JSON = "model.json"
FORMAT_VERSION = 1


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("lsm", "numpy", "pandas", "scikit-learn", "xgboost-cpu", "xgboost", "torch",
                "xarray", "dask", "rasterio", "shap"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Run:
    """A loaded run folder."""

    path: Path
    meta: dict[str, Any]
    models: dict[str, Any]

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema.from_dict(self.meta["schema"])

    @property
    def norm(self) -> str:
        return str(self.meta["norm"])

    @property
    def stats(self) -> dict[str, Any]:
        """Statistics of the region the models were last trained in."""
        return self.meta["stats"]

    @property
    def region(self) -> str:
        return str(self.meta["region"])

    def training_table(self) -> pd.DataFrame:
        p = self.path / "training_table.parquet"
        if not p.exists():
            raise ArtifactError(f"{p}: missing; cannot re-train the source models")
        return pd.read_parquet(p)


def load_run(path: Path, *, families: list[str] | None = None) -> Run:
    """Read ``model.json`` and the model artifacts of a run folder."""
    from lsm.models.base import get_family

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such run folder (run 'lsm fit' first)")
    meta = read_json(path / MODEL_JSON)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path / MODEL_JSON}: not an lsm run file of format {FORMAT_VERSION}")
    if "region" in meta:  # names the next run's folder and map files
        try:
            check_name(str(meta["region"]))
        except ValueError as err:
            raise ArtifactError(f"{path / MODEL_JSON}: region: {err}") from None
    have = list(meta.get("families", []))
    wanted = families or have
    missing = [f for f in wanted if f not in have]
    if missing:
        raise ArtifactError(f"{path}: run has no model(s) {missing} (it has {', '.join(have)})")
    models = {f: get_family(f).load(path / "model" / f) for f in wanted}
    return Run(path, meta, models)


def save_models(path: Path, models: dict[str, Any]) -> None:
    for fam, model in models.items():
        d = Path(path) / "model" / fam
        d.mkdir(parents=True, exist_ok=True)
        model.save(d)


def write_run_meta(path: Path, meta: dict[str, Any]) -> Path:
    meta = {"format": FORMAT_VERSION, "created": now_iso(), "versions": package_versions(),
            **meta}
    return write_json(Path(path) / MODEL_JSON, meta)


def latest_run(base: Path) -> Path | None:
    """``base`` itself if it is a run, else its newest sub-run (by model.json mtime)."""
    base = Path(base)
    if (base / MODEL_JSON).exists():
        return base
    cands = sorted(base.glob(f"*/{MODEL_JSON}"), key=lambda p: p.stat().st_mtime)
    return cands[-1].parent if cands else None
